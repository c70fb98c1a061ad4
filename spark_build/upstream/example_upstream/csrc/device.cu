// Device discovery that must not fail on a machine without a GPU: the wheel is
// imported and audited on build hosts that have no driver at all.
#include "cuda_check.cuh"
#include "ops.h"

namespace spark_example {

int device_count(std::string& error) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the sticky error so later calls report their own
    return 0;
  }
  if (!cuda_ok(status, error)) return -1;
  return count;
}

int runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}

}  // namespace spark_example
