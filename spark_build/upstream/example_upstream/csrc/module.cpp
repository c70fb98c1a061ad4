// The `spark_example._C` module object.  Kept apart from bindings.cpp so the
// method table reads as the module's public API.
#include <Python.h>

#include "bindings.h"

namespace {

PyMethodDef methods[] = {
    {"compiled_archs", spark_example::py_compiled_archs, METH_NOARGS,
     "compiled_archs() -> str: the TORCH_CUDA_ARCH_LIST this module was built for."},
    {"device_count", spark_example::py_device_count, METH_NOARGS,
     "device_count() -> int: visible CUDA devices; 0 without a GPU or driver."},
    {"cuda_runtime_version", spark_example::py_cuda_runtime_version, METH_NOARGS,
     "cuda_runtime_version() -> int: the statically linked CUDA runtime, e.g. 13000."},
    {"saxpy", spark_example::py_saxpy, METH_VARARGS,
     "saxpy(a, xs, ys) -> list[float]: a*x+y on the GPU; RuntimeError without one."},
    {"reduce_sum", spark_example::py_reduce_sum, METH_VARARGS,
     "reduce_sum(xs) -> float: sum of xs on the GPU; RuntimeError without one."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "CUDA kernels of spark_example, a stand-in for vllm._C.", -1, methods,
    nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
