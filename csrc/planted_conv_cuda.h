// CUDA entry points of the planted convolution, by dtype name ("float32", "float64",
// "float16", "bfloat16"), over raw device pointers. Launched on the given stream (the
// caller's current stream); every launch is checked and a failure throws.
#pragma once

#include <cstdint>
#include <string>

#include "planted_conv.h"

namespace plantops::cuda {

// Raw device pointers of one call; 0 where a tensor is absent.
struct Pointers {
  std::uintptr_t x = 0, grad_out = 0;
  std::uintptr_t w_frozen = 0, b_frozen = 0, w_in = 0, w_out = 0, b_out = 0;
  std::uintptr_t result = 0, result_bias = 0;  // output / grad_x / grad_w, and grad_b

  template <typename T>
  const T* in(std::uintptr_t p) const { return reinterpret_cast<const T*>(p); }
  template <typename T>
  T* out(std::uintptr_t p) const { return reinterpret_cast<T*>(p); }
};

// result[N, O, OH, OW] = the planted convolution of x.
void forward(const Geometry& g, const std::string& dtype, const Pointers& p, std::uintptr_t stream);
// result[N, c_end-c_begin, H, W] = the input gradient for input channels [c_begin, c_end).
void input_grad(const Geometry& g, const std::string& dtype, const Pointers& p, int64_t c_begin,
                int64_t c_end, std::uintptr_t stream);
// result[o_end-o_begin, c_end-c_begin, KH, KW] (and result_bias[o_end-o_begin] when not 0):
// the weight gradient restricted to those output and input channels.
void weight_grad(const Geometry& g, const std::string& dtype, const Pointers& p, int64_t o_begin,
                 int64_t o_end, int64_t c_begin, int64_t c_end, std::uintptr_t stream);

}  // namespace plantops::cuda
