// Python module focusformer_fast._C. Importing it loads this library, whose static
// initializers register the ops in torch.ops.focusformer; the module itself only says
// whether the CUDA kernels were compiled in (WITH_CUDA).
#include <Python.h>

#ifdef FOCUSFORMER_WITH_CUDA
constexpr long kWithCuda = 1;
#else
constexpr long kWithCuda = 0;
#endif

static PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "focusformer_fast._C",
    "Compiled focusformer ops, registered in torch.ops.focusformer.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C() {
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddIntConstant(module, "WITH_CUDA", kWithCuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
