#include "elementwise.cuh"
#include "ops.h"

SPARK_EXAMPLE_INSTANTIATE_ELEMENTWISE(float)
SPARK_EXAMPLE_INSTANTIATE_ELEMENTWISE(double)

namespace spark_example {

bool scale_add_float(std::vector<float>& x, float alpha, float beta, std::string& error) {
  return apply_elementwise(x.data(), static_cast<int>(x.size()), ScaleAdd<float>{alpha, beta}, error);
}

bool scale_add_double(std::vector<double>& x, double alpha, double beta, std::string& error) {
  return apply_elementwise(x.data(), static_cast<int>(x.size()), ScaleAdd<double>{alpha, beta}, error);
}

}  // namespace spark_example
