// What the two binding files (bindings_cpu.cpp, bindings_cuda.cpp) share: the Geometry class
// and the argument checks. Both modules expose the same three functions with the same
// arguments, so plantops/kernels/_native.py drives either.
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
  pybind11::class_<Geometry>(m, "Geometry", pybind11::module_local())
      .def(pybind11::init<>())
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
