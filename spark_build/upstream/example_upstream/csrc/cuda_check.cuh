// Shared by the .cu files: turn a CUDA error into the string the Python layer raises.
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace spark_example {

inline bool cuda_ok(cudaError_t status, std::string& error) {
  if (status == cudaSuccess) return true;
  error = cudaGetErrorString(status);
  return false;
}

// Owns one device allocation so every early return frees it.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  cudaError_t allocate(size_t count) { return cudaMalloc(&ptr, count * sizeof(T)); }
};

// Copies `host` to a fresh device buffer.
template <typename T>
bool to_device(const T* host, size_t count, DeviceBuffer<T>& dev, std::string& error) {
  return cuda_ok(dev.allocate(count), error) &&
         cuda_ok(cudaMemcpy(dev.ptr, host, count * sizeof(T), cudaMemcpyHostToDevice), error);
}

// Waits for the kernel just launched and reports launch or execution errors.
inline bool finish_launch(std::string& error) {
  return cuda_ok(cudaGetLastError(), error) && cuda_ok(cudaDeviceSynchronize(), error);
}

}  // namespace spark_example
