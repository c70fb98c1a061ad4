// Inclusive prefix sum within one block (CUB BlockScan, several items per thread).
#include <cub/block/block_load.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/block/block_store.cuh>

#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

template <typename T, int BLOCK, int ITEMS>
__global__ void block_scan_kernel(int n, const T* __restrict__ x, T* __restrict__ out) {
  using Load = cub::BlockLoad<T, BLOCK, ITEMS, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
  using Scan = cub::BlockScan<T, BLOCK>;
  using Store = cub::BlockStore<T, BLOCK, ITEMS, cub::BLOCK_STORE_WARP_TRANSPOSE>;
  __shared__ union {
    typename Load::TempStorage load;
    typename Scan::TempStorage scan;
    typename Store::TempStorage store;
  } storage;
  T items[ITEMS];
  Load(storage.load).Load(x, items, n, T(0));
  __syncthreads();
  Scan(storage.scan).InclusiveSum(items, items);
  __syncthreads();
  Store(storage.store).Store(out, items, n);
}

bool inclusive_scan(const std::vector<int>& x, std::vector<int>& out, std::string& error) {
  constexpr int kBlock = 128, kItems = 8;
  if (x.size() > static_cast<size_t>(kBlock * kItems)) {
    error = "inclusive_scan handles at most 1024 items";
    return false;
  }
  out.assign(x.size(), 0);
  if (x.empty()) return true;
  DeviceBuffer<int> dx, dout;
  if (!to_device(x.data(), x.size(), dx, error) || !cuda_ok(dout.allocate(x.size()), error)) return false;
  block_scan_kernel<int, kBlock, kItems><<<1, kBlock>>>(static_cast<int>(x.size()), dx.ptr, dout.ptr);
  return finish_launch(error) &&
         cuda_ok(cudaMemcpy(out.data(), dout.ptr, out.size() * sizeof(int), cudaMemcpyDeviceToHost), error);
}

template __global__ void block_scan_kernel<float, 256, 4>(int, const float*, float*);
template __global__ void block_scan_kernel<long long, 256, 4>(int, const long long*, long long*);

}  // namespace spark_example
