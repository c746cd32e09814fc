// What the two binding files (bindings_cpu.cpp, bindings_cuda.cpp) share: the Geometry class
// and the argument checks. Both modules expose the same three functions with the same
// arguments, so plantops/kernels/_native.py drives either; the CPU module has a fourth,
// planted_input_grads, which _native.py uses where a module has it.
#pragma once

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "planted_conv.h"

namespace plantops::binding {

#define PLANTOPS_CHECK(cond, msg) \
  if (!(cond)) throw std::invalid_argument(std::string("plantops: ") + (msg))

inline void check(const Geometry& g) {
  const std::string err = check_geometry(g);
  PLANTOPS_CHECK(err.empty(), err);
}

inline void check_channels(const Geometry& g, int64_t c_begin, int64_t c_end) {
  PLANTOPS_CHECK(0 <= c_begin && c_begin <= c_end && c_end <= g.C(),
                 "input channel range [" + std::to_string(c_begin) + ", " +
                     std::to_string(c_end) + ") is outside [0, " + std::to_string(g.C()) + ")");
}

inline void check_outputs(const Geometry& g, int64_t o_begin, int64_t o_end) {
  PLANTOPS_CHECK(0 <= o_begin && o_begin <= o_end && o_end <= g.O(),
                 "output channel range [" + std::to_string(o_begin) + ", " +
                     std::to_string(o_end) + ") is outside [0, " + std::to_string(g.O()) + ")");
}

inline void bind_geometry(pybind11::module_& m) {
  // module_local: _C and _cuda each bind the same C++ type; without it the second import fails.
  namespace py = pybind11;
  pybind11::class_<Geometry>(m, "Geometry", pybind11::module_local())
      .def(pybind11::init<>())
      // Every field at once: one call instead of fifteen attribute writes per op call.
      .def(py::init([](int64_t N, int64_t I_f, int64_t I_p, int64_t O_f, int64_t O_p, int64_t H,
                       int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                       int64_t PW, int64_t OH, int64_t OW) {
             return Geometry{N, I_f, I_p, O_f, O_p, H, W, KH, KW, SH, SW, PH, PW, OH, OW};
           }),
           py::arg("N"), py::arg("I_f"), py::arg("I_p"), py::arg("O_f"), py::arg("O_p"),
           py::arg("H"), py::arg("W"), py::arg("KH"), py::arg("KW"), py::arg("SH"),
           py::arg("SW"), py::arg("PH"), py::arg("PW"), py::arg("OH"), py::arg("OW"))
      .def_readwrite("N", &Geometry::N)
      .def_readwrite("I_f", &Geometry::I_f)
      .def_readwrite("I_p", &Geometry::I_p)
      .def_readwrite("O_f", &Geometry::O_f)
      .def_readwrite("O_p", &Geometry::O_p)
      .def_readwrite("H", &Geometry::H)
      .def_readwrite("W", &Geometry::W)
      .def_readwrite("KH", &Geometry::KH)
      .def_readwrite("KW", &Geometry::KW)
      .def_readwrite("SH", &Geometry::SH)
      .def_readwrite("SW", &Geometry::SW)
      .def_readwrite("PH", &Geometry::PH)
      .def_readwrite("PW", &Geometry::PW)
      .def_readwrite("OH", &Geometry::OH)
      .def_readwrite("OW", &Geometry::OW);
}

}  // namespace plantops::binding
