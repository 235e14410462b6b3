// arkern._C: the compiled kernels.
//
// Operator schemas are defined once, in Python (arkern/ops/<family>.py, torch.library), so the
// namespace exists even when this extension is not built. Each csrc/cpu/<family>.cpp only provides
// TORCH_LIBRARY_IMPL(arkern, CPU, m) registrations for the schemas of its family. This file makes the
// shared object importable as a Python module; arkern loads it with torch.ops.load_library.
#include <Python.h>

static struct PyModuleDef arkern_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&arkern_c_module); }
