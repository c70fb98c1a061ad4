// Row softmax, one warp per row, with CUB warp reductions for the max and the sum.
#include <cfloat>
#include <cub/warp/warp_reduce.cuh>

#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

// CCCL 3 dropped cub::Max; a local functor works on every CUDA version.
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

template <typename T, int WARPS_PER_BLOCK>
__global__ void softmax_rows_kernel(int rows, int cols, T* __restrict__ x) {
  using WarpReduce = cub::WarpReduce<T>;
  __shared__ typename WarpReduce::TempStorage storage[WARPS_PER_BLOCK];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * WARPS_PER_BLOCK + warp;
  if (row >= rows) return;
  T* r = x + static_cast<size_t>(row) * cols;
  T m = -FLT_MAX;
  for (int c = lane; c < cols; c += 32) m = max(m, r[c]);
  m = __shfl_sync(0xffffffffu, WarpReduce(storage[warp]).Reduce(m, MaxOp{}), 0);
  T s = 0;
  for (int c = lane; c < cols; c += 32) {
    r[c] = exp(r[c] - m);
    s += r[c];
  }
  __syncwarp();
  s = __shfl_sync(0xffffffffu, WarpReduce(storage[warp]).Sum(s), 0);
  for (int c = lane; c < cols; c += 32) r[c] /= s;
}

bool softmax_rows(std::vector<float>& x, int rows, int cols, std::string& error) {
  if (rows <= 0 || cols <= 0) return true;
  DeviceBuffer<float> dx;
  if (!to_device(x.data(), x.size(), dx, error)) return false;
  constexpr int kWarps = 4;
  softmax_rows_kernel<float, kWarps><<<(rows + kWarps - 1) / kWarps, kWarps * 32>>>(rows, cols, dx.ptr);
  return finish_launch(error) &&
         cuda_ok(cudaMemcpy(x.data(), dx.ptr, x.size() * sizeof(float), cudaMemcpyDeviceToHost), error);
}

template __global__ void softmax_rows_kernel<float, 8>(int, int, float*);
template __global__ void softmax_rows_kernel<double, 4>(int, int, double*);

}  // namespace spark_example
