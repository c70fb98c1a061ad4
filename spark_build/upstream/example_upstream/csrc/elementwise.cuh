// One templated elementwise kernel, instantiated per element type in separate
// translation units (elementwise_float.cu, elementwise_half.cu) the way vLLM
// splits its per-dtype kernels so they compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_load.cuh>
#include <cub/block/block_store.cuh>

#include "cuda_check.cuh"

namespace spark_example {

// Arithmetic happens in float for narrow types (half, bfloat16).
template <typename T>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};

template <typename T>
struct ScaleAdd {
  typename Compute<T>::type alpha, beta;
  __device__ T operator()(T v) const {
    return static_cast<T>(alpha * static_cast<typename Compute<T>::type>(v) + beta);
  }
};

template <typename T>
struct Relu {
  __device__ T operator()(T v) const {
    const auto c = static_cast<typename Compute<T>::type>(v);
    return static_cast<T>(c > 0 ? c : 0);
  }
};

template <typename T>
struct Gelu {
  __device__ T operator()(T v) const {
    using C = typename Compute<T>::type;
    const C c = static_cast<C>(v);
    const C k = C(0.7978845608028654);  // sqrt(2 / pi)
    return static_cast<T>(C(0.5) * c * (C(1) + tanh(k * (c + C(0.044715) * c * c * c))));
  }
};

template <typename T>
struct Silu {
  __device__ T operator()(T v) const {
    using C = typename Compute<T>::type;
    const C c = static_cast<C>(v);
    return static_cast<T>(c / (C(1) + exp(-c)));
  }
};

// Each thread owns VEC consecutive items, loaded and stored with CUB's
// blocked-arrangement helpers (guarded at the ragged end).
template <typename T, typename Op, int VEC>
__global__ void elementwise_kernel(int n, T* __restrict__ x, Op op) {
  const int block_base = blockIdx.x * blockDim.x * VEC;
  const int valid = n - block_base;
  T items[VEC];
  cub::LoadDirectBlocked(static_cast<int>(threadIdx.x), x + block_base, items, valid);
#pragma unroll
  for (int k = 0; k < VEC; ++k) items[k] = op(items[k]);
  cub::StoreDirectBlocked(static_cast<int>(threadIdx.x), x + block_base, items, valid);
}

// Runs `op` over `x` in place on the device.
template <typename T, typename Op>
bool apply_elementwise(T* host, int n, Op op, std::string& error) {
  if (n == 0) return true;
  DeviceBuffer<T> dx;
  if (!to_device(host, static_cast<size_t>(n), dx, error)) return false;
  constexpr int kThreads = 256, kVec = 4;
  const int blocks = (n + kThreads * kVec - 1) / (kThreads * kVec);
  elementwise_kernel<T, Op, kVec><<<blocks, kThreads>>>(n, dx.ptr, op);
  return finish_launch(error) &&
         cuda_ok(cudaMemcpy(host, dx.ptr, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToHost), error);
}

}  // namespace spark_example

// Instantiates every op for one element type at each vector width, as a
// dtype-dispatching kernel library does; this is most of each unit's compile time.
#define SPARK_EXAMPLE_INSTANTIATE_OP(T, OP, VEC) \
  template __global__ void spark_example::elementwise_kernel<T, spark_example::OP<T>, VEC>(int, T*, spark_example::OP<T>);
#define SPARK_EXAMPLE_INSTANTIATE_OP_WIDTHS(T, OP) \
  SPARK_EXAMPLE_INSTANTIATE_OP(T, OP, 1)           \
  SPARK_EXAMPLE_INSTANTIATE_OP(T, OP, 2)           \
  SPARK_EXAMPLE_INSTANTIATE_OP(T, OP, 4)           \
  SPARK_EXAMPLE_INSTANTIATE_OP(T, OP, 8)
#define SPARK_EXAMPLE_INSTANTIATE_ELEMENTWISE(T)     \
  SPARK_EXAMPLE_INSTANTIATE_OP_WIDTHS(T, ScaleAdd) \
  SPARK_EXAMPLE_INSTANTIATE_OP_WIDTHS(T, Relu)     \
  SPARK_EXAMPLE_INSTANTIATE_OP_WIDTHS(T, Gelu)     \
  SPARK_EXAMPLE_INSTANTIATE_OP_WIDTHS(T, Silu)
