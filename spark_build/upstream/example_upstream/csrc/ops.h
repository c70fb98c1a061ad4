// Host-side entry points of the CUDA kernels, callable from plain C++.
//
// The Python glue (module.cpp, bindings.cpp) is compiled by the host compiler
// without CUDA headers, so every function here reports failure as a CUDA
// error string instead of throwing or returning cudaError_t.
#pragma once

#include <string>
#include <vector>

namespace spark_example {

// Number of visible CUDA devices; 0 when there is no GPU or no driver.
// Other CUDA errors land in `error` and return -1.
int device_count(std::string& error);

// Version of the CUDA runtime linked into this module (e.g. 13000).
int runtime_version();

// y <- a * x + y on device 0.  Returns false and fills `error` on failure.
bool saxpy(float a, const std::vector<float>& x, std::vector<float>& y, std::string& error);

// Kernels that exist to give the build realistic work (and the binary
// realistic SASS); each returns false and fills `error` on failure.
bool reduce_sum(const std::vector<float>& x, float& out, std::string& error);
bool inclusive_scan(const std::vector<int>& x, std::vector<int>& out, std::string& error);
bool softmax_rows(std::vector<float>& x, int rows, int cols, std::string& error);
bool layernorm_rows(std::vector<float>& x, int rows, int cols, float eps, std::string& error);
bool scale_add_float(std::vector<float>& x, float alpha, float beta, std::string& error);
bool scale_add_double(std::vector<double>& x, double alpha, double beta, std::string& error);
bool relu_half(std::vector<float>& x, std::string& error);
bool topk_rows(const std::vector<float>& x, int rows, int cols, int k, std::vector<float>& values,
               std::vector<int>& indices, std::string& error);

}  // namespace spark_example
