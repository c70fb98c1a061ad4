#include "bindings.h"

#include <string>
#include <vector>

// build_info.h bakes TORCH_CUDA_ARCH_LIST in, so an installed wheel can say
// what it was built for without cuobjdump.
#include "build_info.h"
#include "ops.h"

namespace spark_example {
namespace {

// Reads any sequence of numbers into floats; false (with a Python error set) otherwise.
bool to_floats(PyObject* seq, std::vector<float>& out) {
  const Py_ssize_t n = PySequence_Size(seq);
  if (n < 0) return false;
  out.resize(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PySequence_GetItem(seq, i);
    if (item == nullptr) return false;
    const double v = PyFloat_AsDouble(item);
    Py_DECREF(item);
    if (v == -1.0 && PyErr_Occurred()) return false;
    out[static_cast<size_t>(i)] = static_cast<float>(v);
  }
  return true;
}

PyObject* to_list(const std::vector<float>& values) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(values.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < values.size(); ++i) {
    PyObject* f = PyFloat_FromDouble(values[i]);
    if (f == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SetItem(list, static_cast<Py_ssize_t>(i), f);  // steals f
  }
  return list;
}

PyObject* cuda_error(const std::string& error) {
  PyErr_SetString(PyExc_RuntimeError, ("CUDA error: " + error).c_str());
  return nullptr;
}

}  // namespace

PyObject* py_compiled_archs(PyObject*, PyObject*) { return PyUnicode_FromString(SPARK_EXAMPLE_ARCH_LIST); }

PyObject* py_device_count(PyObject*, PyObject*) {
  std::string error;
  const int count = device_count(error);
  if (count < 0) return cuda_error(error);
  return PyLong_FromLong(count);
}

PyObject* py_cuda_runtime_version(PyObject*, PyObject*) { return PyLong_FromLong(runtime_version()); }

PyObject* py_saxpy(PyObject*, PyObject* args) {
  float a = 0.0f;
  PyObject* xs = nullptr;
  PyObject* ys = nullptr;
  if (!PyArg_ParseTuple(args, "fOO:saxpy", &a, &xs, &ys)) return nullptr;
  std::vector<float> x, y;
  if (!to_floats(xs, x) || !to_floats(ys, y)) return nullptr;
  if (x.size() != y.size()) {
    PyErr_SetString(PyExc_ValueError, "saxpy: xs and ys must have the same length");
    return nullptr;
  }
  std::string error;
  if (!saxpy(a, x, y, error)) return cuda_error(error);
  return to_list(y);
}

PyObject* py_reduce_sum(PyObject*, PyObject* args) {
  PyObject* xs = nullptr;
  if (!PyArg_ParseTuple(args, "O:reduce_sum", &xs)) return nullptr;
  std::vector<float> x;
  if (!to_floats(xs, x)) return nullptr;
  float total = 0.0f;
  std::string error;
  if (!reduce_sum(x, total, error)) return cuda_error(error);
  return PyFloat_FromDouble(total);
}

}  // namespace spark_example
