// Python-facing wrappers around ops.h (CPython limited API, so one abi3 wheel
// serves every Python >= 3.8, as vLLM's _C does).
#pragma once

#include <Python.h>

namespace spark_example {

PyObject* py_compiled_archs(PyObject* self, PyObject* args);
PyObject* py_device_count(PyObject* self, PyObject* args);
PyObject* py_cuda_runtime_version(PyObject* self, PyObject* args);
PyObject* py_saxpy(PyObject* self, PyObject* args);
PyObject* py_reduce_sum(PyObject* self, PyObject* args);

}  // namespace spark_example
