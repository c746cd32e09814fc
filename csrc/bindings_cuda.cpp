// Python bindings of the CUDA kernels: plantops._cuda.
//
// Same functions and arguments as plantops._C (bindings_cpu.cpp), with a CUDA stream handle
// (torch.cuda.current_stream().cuda_stream) in place of the thread count. No torch, no CUDA
// headers here: the .cu file holds every CUDA call.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding_common.h"
#include "planted_conv_cuda.h"

namespace py = pybind11;
using plantops::Geometry;
using plantops::cuda::Pointers;
using namespace plantops::binding;

namespace {

// The CUDA kernels read the input channels from one tensor: plantops/kernels/cuda.py joins
// x_planted to x before calling them.
void check_joined(std::uintptr_t x_planted) {
  PLANTOPS_CHECK(x_planted == 0, "the CUDA kernels take every input channel in x; join "
                                 "x_planted to it (torch.cat along dim 1) first");
}

void forward(const Geometry& g, const std::string& dtype, std::uintptr_t x,
             std::uintptr_t w_frozen, std::uintptr_t b_frozen, std::uintptr_t w_in,
             std::uintptr_t w_out, std::uintptr_t b_out, std::uintptr_t x_planted,
             std::uintptr_t out,
             std::uintptr_t stream) {
  check(g);
  check_joined(x_planted);
  Pointers p;
  p.x = x, p.w_frozen = w_frozen, p.b_frozen = b_frozen, p.w_in = w_in, p.w_out = w_out;
  p.b_out = b_out, p.result = out;
  plantops::cuda::forward(g, dtype, p, stream);
}

void input_grad(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                std::uintptr_t w_frozen, std::uintptr_t w_in, std::uintptr_t w_out,
                int64_t c_begin, int64_t c_end, std::uintptr_t grad_x, std::uintptr_t stream) {
  check(g);
  check_channels(g, c_begin, c_end);
  Pointers p;
  p.grad_out = grad_out, p.w_frozen = w_frozen, p.w_in = w_in, p.w_out = w_out;
  p.result = grad_x;
  plantops::cuda::input_grad(g, dtype, p, c_begin, c_end, stream);
}

void weight_grad(const Geometry& g, const std::string& dtype, std::uintptr_t grad_out,
                 std::uintptr_t x, int64_t o_begin, int64_t o_end, int64_t c_begin,
                 int64_t c_end, std::uintptr_t x_planted, std::uintptr_t grad_w,
                 std::uintptr_t grad_b,
                 std::uintptr_t stream) {
  check(g);
  check_joined(x_planted);
  check_outputs(g, o_begin, o_end);
  check_channels(g, c_begin, c_end);
  Pointers p;
  p.grad_out = grad_out, p.x = x, p.result = grad_w, p.result_bias = grad_b;
  plantops::cuda::weight_grad(g, dtype, p, o_begin, o_end, c_begin, c_end, stream);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "plantops CUDA kernels over raw device pointers (see plantops/kernels/_native.py)";
  bind_geometry(m);
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("forward", &forward, release);
  m.def("input_grad", &input_grad, release);
  m.def("weight_grad", &weight_grad, release);
}
