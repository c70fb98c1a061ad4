// Row layer norm, one block per row, mean and variance via CUB BlockReduce.
#include <cub/block/block_reduce.cuh>

#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

template <typename T, int BLOCK>
__global__ void layernorm_rows_kernel(int cols, T eps, T* __restrict__ x) {
  using BlockReduce = cub::BlockReduce<T, BLOCK>;
  __shared__ typename BlockReduce::TempStorage storage;
  __shared__ T mean, inv_std;
  T* r = x + static_cast<size_t>(blockIdx.x) * cols;
  T s = 0;
  for (int c = threadIdx.x; c < cols; c += BLOCK) s += r[c];
  s = BlockReduce(storage).Sum(s);
  if (threadIdx.x == 0) mean = s / cols;
  __syncthreads();
  T v = 0;
  for (int c = threadIdx.x; c < cols; c += BLOCK) v += (r[c] - mean) * (r[c] - mean);
  v = BlockReduce(storage).Sum(v);
  if (threadIdx.x == 0) inv_std = rsqrt(v / cols + eps);
  __syncthreads();
  for (int c = threadIdx.x; c < cols; c += BLOCK) r[c] = (r[c] - mean) * inv_std;
}

bool layernorm_rows(std::vector<float>& x, int rows, int cols, float eps, std::string& error) {
  if (rows <= 0 || cols <= 0) return true;
  DeviceBuffer<float> dx;
  if (!to_device(x.data(), x.size(), dx, error)) return false;
  if (cols <= 256) {
    layernorm_rows_kernel<float, 128><<<rows, 128>>>(cols, eps, dx.ptr);
  } else {
    layernorm_rows_kernel<float, 512><<<rows, 512>>>(cols, eps, dx.ptr);
  }
  return finish_launch(error) &&
         cuda_ok(cudaMemcpy(x.data(), dx.ptr, x.size() * sizeof(float), cudaMemcpyDeviceToHost), error);
}

template __global__ void layernorm_rows_kernel<double, 256>(int, double, double*);

}  // namespace spark_example
