#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C, m) { m.def("version", [] { return "0.1.0"; }); }
