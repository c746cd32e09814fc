// Python bindings of the CPU kernels: plantops._C.
//
// The module never links against torch: it takes raw data pointers (as integers), the
// Geometry and a dtype name, so one build works under any torch 2.x. plantops/_cpu.py checks
// shapes, dtypes and contiguity and passes the pointers.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "planted_conv_cpu.h"

namespace py = pybind11;
using plantops::Geometry;

namespace {

#define PLANTOPS_CHECK(cond, msg) \
  if (!(cond)) throw std::invalid_argument(std::string("plantops._C: ") + (msg))

void check(const Geometry& g) {
  const std::string err = plantops::check_geometry(g);
  PLANTOPS_CHECK(err.empty(), err);
}

template <typename T>
const T* in_ptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* out_ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

// Calls fn<float> or fn<double> by dtype name.
template <typename Fn>
void by_dtype(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32")
    fn(float{});
  else if (dtype == "float64")
    fn(double{});
  else
    throw std::invalid_argument("plantops._C: dtype must be float32 or float64, got " + dtype);
}

void forward(const Geometry& g, const std::string& dtype, std::uintptr_t x,
             std::uintptr_t w_frozen, std::uintptr_t b_frozen, std::uintptr_t w_in,
             std::uintptr_t w_out, std::uintptr_t b_out, std::uintptr_t out, int nthreads) {
  check(g);
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::forward<T>(g, in_ptr<T>(x), in_ptr<T>(w_frozen), in_ptr<T>(b_frozen),
                              in_ptr<T>(w_in), in_ptr<T>(w_out), in_ptr<T>(b_out),
                              out_ptr<T>(out), nthreads);
  });
}

void input_grad(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                std::uintptr_t w_frozen, std::uintptr_t w_in, std::uintptr_t w_out,
                int64_t c_begin, int64_t c_end, std::uintptr_t grad_x, int nthreads) {
  check(g);
  PLANTOPS_CHECK(0 <= c_begin && c_begin <= c_end && c_end <= g.C(), "bad input channel range");
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::input_grad<T>(g, in_ptr<T>(grad_out), in_ptr<T>(w_frozen), in_ptr<T>(w_in),
                                 in_ptr<T>(w_out), c_begin, c_end, out_ptr<T>(grad_x), nthreads);
  });
}

void weight_grad(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                 std::uintptr_t x, int64_t o_begin, int64_t o_end, int64_t c_begin,
                 int64_t c_end, std::uintptr_t grad_w, std::uintptr_t grad_b, int nthreads) {
  check(g);
  PLANTOPS_CHECK(0 <= o_begin && o_begin <= o_end && o_end <= g.O(), "bad output channel range");
  PLANTOPS_CHECK(0 <= c_begin && c_begin <= c_end && c_end <= g.C(), "bad input channel range");
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::weight_grad<T>(g, in_ptr<T>(grad_out), in_ptr<T>(x), o_begin, o_end, c_begin,
                                  c_end, out_ptr<T>(grad_w), out_ptr<T>(grad_b), nthreads);
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "plantops CPU kernels over raw pointers (see plantops/_cpu.py)";
  py::class_<Geometry>(m, "Geometry")
      .def(py::init<>())
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
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("forward", &forward, release);
  m.def("input_grad", &input_grad, release);
  m.def("weight_grad", &weight_grad, release);
}
