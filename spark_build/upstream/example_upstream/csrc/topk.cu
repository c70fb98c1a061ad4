// Top-k of each row by sorting the row in one block (CUB BlockRadixSort), as
// sampling kernels do for small vocabularies.
#include <cub/block/block_radix_sort.cuh>

#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

template <typename K, int BLOCK, int ITEMS>
__global__ void topk_rows_kernel(int cols, int k, const K* __restrict__ x, K* __restrict__ values,
                                 int* __restrict__ indices) {
  using Sort = cub::BlockRadixSort<K, BLOCK, ITEMS, int>;
  __shared__ typename Sort::TempStorage storage;
  const K* row = x + static_cast<size_t>(blockIdx.x) * cols;
  K keys[ITEMS];
  int idx[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int c = threadIdx.x * ITEMS + i;
    keys[i] = c < cols ? row[c] : cub::Traits<K>::Lowest();
    idx[i] = c;
  }
  Sort(storage).SortDescendingBlockedToStriped(keys, idx);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int rank = i * BLOCK + threadIdx.x;
    if (rank < k) {
      values[static_cast<size_t>(blockIdx.x) * k + rank] = keys[i];
      indices[static_cast<size_t>(blockIdx.x) * k + rank] = idx[i];
    }
  }
}

bool topk_rows(const std::vector<float>& x, int rows, int cols, int k, std::vector<float>& values,
               std::vector<int>& indices, std::string& error) {
  constexpr int kBlock = 128, kItems = 8;
  if (cols > kBlock * kItems || k > cols) {
    error = "topk_rows handles rows of at most 1024 columns and k <= columns";
    return false;
  }
  values.assign(static_cast<size_t>(rows) * k, 0.0f);
  indices.assign(static_cast<size_t>(rows) * k, 0);
  if (rows <= 0 || k <= 0) return true;
  DeviceBuffer<float> dx, dvalues;
  DeviceBuffer<int> dindices;
  if (!to_device(x.data(), x.size(), dx, error) || !cuda_ok(dvalues.allocate(values.size()), error) ||
      !cuda_ok(dindices.allocate(indices.size()), error)) {
    return false;
  }
  topk_rows_kernel<float, kBlock, kItems><<<rows, kBlock>>>(cols, k, dx.ptr, dvalues.ptr, dindices.ptr);
  return finish_launch(error) &&
         cuda_ok(cudaMemcpy(values.data(), dvalues.ptr, values.size() * sizeof(float), cudaMemcpyDeviceToHost),
                 error) &&
         cuda_ok(cudaMemcpy(indices.data(), dindices.ptr, indices.size() * sizeof(int), cudaMemcpyDeviceToHost),
                 error);
}

template __global__ void topk_rows_kernel<float, 256, 4>(int, int, const float*, float*, int*);
template __global__ void topk_rows_kernel<double, 128, 8>(int, int, const double*, double*, int*);

}  // namespace spark_example
