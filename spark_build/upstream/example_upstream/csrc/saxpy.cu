#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

__global__ void saxpy_kernel(int n, float a, const float* __restrict__ x, float* __restrict__ y) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    y[i] = a * x[i] + y[i];
  }
}

bool saxpy(float a, const std::vector<float>& x, std::vector<float>& y, std::string& error) {
  const int n = static_cast<int>(x.size());
  if (n == 0) return true;
  DeviceBuffer<float> dx, dy;
  if (!to_device(x.data(), x.size(), dx, error) || !to_device(y.data(), y.size(), dy, error)) return false;
  const int threads = 256;
  const int blocks = (n + threads - 1) / threads;
  saxpy_kernel<<<blocks, threads>>>(n, a, dx.ptr, dy.ptr);
  return finish_launch(error) &&
         cuda_ok(cudaMemcpy(y.data(), dy.ptr, y.size() * sizeof(float), cudaMemcpyDeviceToHost), error);
}

}  // namespace spark_example
