// Python bindings of the CPU kernels: plantops._C.
//
// The module never links against torch: it takes raw data pointers (as integers), the
// Geometry and a dtype name, so one build works under any torch 2.x. Arguments come in the
// order of plantops.planted_conv2d: x, the weight blocks (frozen, in, out), then x_planted,
// then the outputs. plantops/kernels/_native.py
// checks shapes, dtypes and contiguity and passes the pointers.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding_common.h"
#include "planted_conv_cpu.h"
#include "relu_pool_cpu.h"

namespace py = pybind11;
using plantops::Geometry;
using namespace plantops::binding;

namespace {

template <typename T>
const T* in_ptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* out_ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

// Calls fn(T{}) for the dtype named.
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
             std::uintptr_t w_out, std::uintptr_t b_out, std::uintptr_t x_planted,
             std::uintptr_t out,
             int nthreads) {
  check(g);
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::forward<T>(g, in_ptr<T>(x), in_ptr<T>(x_planted), in_ptr<T>(w_frozen),
                              in_ptr<T>(b_frozen), in_ptr<T>(w_in), in_ptr<T>(w_out),
                              in_ptr<T>(b_out), out_ptr<T>(out), nthreads);
  });
}

// forward with its outputs' epilogue (epilogue.h): residual (laid out as out, or 0 for none)
// added, then a ReLU where relu.
void forward_add_relu(const Geometry& g, const std::string& dtype, std::uintptr_t x,
                      std::uintptr_t w_frozen, std::uintptr_t b_frozen, std::uintptr_t w_in,
                      std::uintptr_t w_out, std::uintptr_t b_out, std::uintptr_t x_planted,
                      std::uintptr_t residual, bool relu, std::uintptr_t out, int nthreads) {
  check(g);
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::forward<T>(g, in_ptr<T>(x), in_ptr<T>(x_planted), in_ptr<T>(w_frozen),
                              in_ptr<T>(b_frozen), in_ptr<T>(w_in), in_ptr<T>(w_out),
                              in_ptr<T>(b_out), out_ptr<T>(out), nthreads,
                              {in_ptr<T>(residual), relu});
  });
}

bool forward_relu_pool(const Geometry& g, const std::string& dtype, std::uintptr_t x,
                       std::uintptr_t w_frozen, std::uintptr_t b_frozen, std::uintptr_t w_in,
                       std::uintptr_t w_out, std::uintptr_t b_out, std::uintptr_t x_planted,
                       std::uintptr_t out, int nthreads) {
  check(g);
  bool done = false;
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    done = plantops::cpu::forward_relu_pool<T>(
        g, in_ptr<T>(x), in_ptr<T>(x_planted), in_ptr<T>(w_frozen), in_ptr<T>(b_frozen),
        in_ptr<T>(w_in), in_ptr<T>(w_out), in_ptr<T>(b_out), out_ptr<T>(out), nthreads);
  });
  return done;
}

void input_grad(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                std::uintptr_t w_frozen, std::uintptr_t w_in, std::uintptr_t w_out,
                int64_t c_begin, int64_t c_end, std::uintptr_t grad_x, int nthreads) {
  check(g);
  check_channels(g, c_begin, c_end);
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::input_grad<T>(g, in_ptr<T>(grad_out), in_ptr<T>(w_frozen), in_ptr<T>(w_in),
                                 in_ptr<T>(w_out), c_begin, c_end, out_ptr<T>(grad_x), nthreads);
  });
}

void weight_grad(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                 std::uintptr_t x, int64_t o_begin, int64_t o_end, int64_t c_begin,
                 int64_t c_end, std::uintptr_t x_planted, std::uintptr_t grad_w,
                 std::uintptr_t grad_b,
                 int nthreads) {
  check(g);
  check_outputs(g, o_begin, o_end);
  check_channels(g, c_begin, c_end);
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::weight_grad<T>(g, in_ptr<T>(grad_out), in_ptr<T>(x), in_ptr<T>(x_planted),
                                  o_begin, o_end, c_begin, c_end, out_ptr<T>(grad_w),
                                  out_ptr<T>(grad_b), nthreads);
  });
}

bool planted_input_grads(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                         std::uintptr_t x, std::uintptr_t w_frozen, std::uintptr_t w_in,
                         std::uintptr_t w_out, int64_t x_begin, std::uintptr_t x_planted,
                         std::uintptr_t grad_x, std::uintptr_t grad_in, int nthreads) {
  check(g);
  check_channels(g, x_begin, g.C());
  bool done = false;
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    done = plantops::cpu::planted_input_grads<T>(
        g, in_ptr<T>(grad_out), in_ptr<T>(x), in_ptr<T>(x_planted), in_ptr<T>(w_frozen),
        in_ptr<T>(w_in), in_ptr<T>(w_out), x_begin, out_ptr<T>(grad_x), out_ptr<T>(grad_in),
        nthreads);
  });
  return done;
}

// relu_max_pool2d over planes = N * C contiguous [H, W] planes (relu_pool_cpu.h).
void relu_max_pool2x2(const std::string& dtype, std::uintptr_t x, int64_t planes, int64_t H,
                      int64_t W, std::uintptr_t y, std::uintptr_t arg, int nthreads) {
  PLANTOPS_CHECK(planes >= 0 && H >= 2 && W >= 2, "relu_max_pool2x2 needs maps of 2x2 or more");
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::relu_max_pool2x2<T>(in_ptr<T>(x), planes, H, W, out_ptr<T>(y),
                                       out_ptr<uint8_t>(arg), nthreads);
  });
}

void relu_max_pool2x2_backward(const std::string& dtype, std::uintptr_t grad_y,
                               std::uintptr_t arg, int64_t planes, int64_t H, int64_t W,
                               std::uintptr_t grad_x, int nthreads) {
  PLANTOPS_CHECK(planes >= 0 && H >= 2 && W >= 2, "relu_max_pool2x2 needs maps of 2x2 or more");
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    plantops::cpu::relu_max_pool2x2_backward<T>(in_ptr<T>(grad_y), in_ptr<uint8_t>(arg),
                                                planes, H, W, out_ptr<T>(grad_x), nthreads);
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "plantops CPU kernels over raw pointers (see plantops/kernels/_native.py)";
  bind_geometry(m);
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("forward", &forward, release);
  m.def("forward_add_relu", &forward_add_relu, release);
  m.def("forward_relu_pool", &forward_relu_pool, release);
  m.def("input_grad", &input_grad, release);
  m.def("weight_grad", &weight_grad, release);
  m.def("planted_input_grads", &planted_input_grads, release);
  m.def("relu_max_pool2x2", &relu_max_pool2x2, release);
  m.def("relu_max_pool2x2_backward", &relu_max_pool2x2_backward, release);
  m.def("winograd_tile", &plantops::cpu::winograd_tile);
  // The instruction set the kernels were compiled for (their speed, and so the backend choice,
  // depends on it): the widest SIMD the compiler was allowed.
  m.attr("simd") =
#if defined(__AVX512F__)
      "avx512";
#elif defined(__AVX2__)
      "avx2";
#elif defined(__AVX__)
      "avx";
#else
      "sse";
#endif
}
