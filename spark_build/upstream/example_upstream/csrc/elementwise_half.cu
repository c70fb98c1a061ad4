#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "elementwise.cuh"
#include "ops.h"

SPARK_EXAMPLE_INSTANTIATE_ELEMENTWISE(__half)
SPARK_EXAMPLE_INSTANTIATE_ELEMENTWISE(__nv_bfloat16)

namespace spark_example {

// The host API takes floats; the round trip through half precision is the point.
bool relu_half(std::vector<float>& x, std::string& error) {
  std::vector<__half> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = __float2half(x[i]);
  if (!apply_elementwise(h.data(), static_cast<int>(h.size()), Relu<__half>{}, error)) return false;
  for (size_t i = 0; i < x.size(); ++i) x[i] = __half2float(h[i]);
  return true;
}

}  // namespace spark_example
