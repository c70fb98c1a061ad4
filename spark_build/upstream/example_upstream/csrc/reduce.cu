// Block-wide sum with CUB, instantiated for several block sizes the way real
// kernel libraries pick a launch shape per problem size.
#include <cub/block/block_reduce.cuh>

#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

template <typename T, int BLOCK>
__global__ void reduce_sum_kernel(int n, const T* __restrict__ x, T* __restrict__ out) {
  using BlockReduce = cub::BlockReduce<T, BLOCK>;
  __shared__ typename BlockReduce::TempStorage storage;
  T partial = T(0);
  for (int i = blockIdx.x * BLOCK + threadIdx.x; i < n; i += BLOCK * gridDim.x) partial += x[i];
  const T block_sum = BlockReduce(storage).Sum(partial);
  if (threadIdx.x == 0) atomicAdd(out, block_sum);
}

template <typename T, int BLOCK>
static bool launch_reduce(const std::vector<T>& x, T& out, std::string& error) {
  DeviceBuffer<T> dx, dout;
  const T zero = T(0);
  if (!to_device(x.data(), x.size(), dx, error) || !to_device(&zero, 1, dout, error)) return false;
  const int n = static_cast<int>(x.size());
  const int blocks = n / BLOCK + 1 < 1024 ? n / BLOCK + 1 : 1024;
  reduce_sum_kernel<T, BLOCK><<<blocks, BLOCK>>>(n, dx.ptr, dout.ptr);
  return finish_launch(error) && cuda_ok(cudaMemcpy(&out, dout.ptr, sizeof(T), cudaMemcpyDeviceToHost), error);
}

bool reduce_sum(const std::vector<float>& x, float& out, std::string& error) {
  if (x.size() < 4096) return launch_reduce<float, 128>(x, out, error);
  if (x.size() < (1u << 20)) return launch_reduce<float, 256>(x, out, error);
  return launch_reduce<float, 512>(x, out, error);
}

template __global__ void reduce_sum_kernel<double, 256>(int, const double*, double*);
template __global__ void reduce_sum_kernel<int, 256>(int, const int*, int*);

}  // namespace spark_example
