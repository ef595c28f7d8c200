// Python module focusformer_fast._C. Importing it loads this library, whose static
// initializers register the ops in torch.ops.focusformer; the module itself says whether the
// CUDA kernels were compiled in (WITH_CUDA) and exposes the cuBLASLt alignment decisions of
// gemm_alignment.h, so CPU tests can check them:
//   gemm_operand_alignment(address, ld, elem, cols) -> bytes
//   gemm_bias_in_epilogue(address) -> bool
#include <Python.h>

#include "gemm_alignment.h"

#ifdef FOCUSFORMER_WITH_CUDA
constexpr long kWithCuda = 1;
#else
constexpr long kWithCuda = 0;
#endif

static PyObject* operand_alignment(PyObject*, PyObject* args) {
  unsigned long long address = 0;
  long long ld = 0, elem = 0, cols = 0;
  if (!PyArg_ParseTuple(args, "KLLL", &address, &ld, &elem, &cols)) return nullptr;
  return PyLong_FromLongLong(focusformer::operand_alignment(address, ld, elem, cols));
}

static PyObject* bias_in_epilogue(PyObject*, PyObject* args) {
  unsigned long long address = 0;
  if (!PyArg_ParseTuple(args, "K", &address)) return nullptr;
  return PyBool_FromLong(focusformer::bias_in_epilogue(address));
}

static PyMethodDef methods[] = {
    {"gemm_operand_alignment", operand_alignment, METH_VARARGS,
     "Byte alignment cuBLASLt is told for a column-major operand (address, ld, elem, cols)."},
    {"gemm_bias_in_epilogue", bias_in_epilogue, METH_VARARGS,
     "Whether a bias at this address goes to cuBLASLt's epilogue (else it is copied aligned first)."},
    {nullptr, nullptr, 0, nullptr},
};

static PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "focusformer_fast._C",
    "Compiled focusformer ops, registered in torch.ops.focusformer.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__C() {
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddIntConstant(module, "WITH_CUDA", kWithCuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
