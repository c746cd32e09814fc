// Winograd convolution on the CPU (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016), for the 3x3 stride-1 layers planting grows.
//
// F(2x2, 3x3): each 2x2 block of outputs takes 16 multiplications per (input, output) channel
// pair instead of 36, 2.25x fewer than a direct convolution; its float32 error stays within
// twice PyTorch's own (against a float64 reference). The forward (conv, conv_relu_pool) can
// also take F(4x4, 3x3) (tile 4, winograd_f4.h): 36 multiplications per 4x4 block, 4x fewer,
// with a float32 error 3-26x PyTorch's own (measured on the tests' shapes, at most 80 eps of the
// largest output; the tests allow 48x). The caller picks the tile (planted_conv_cpu.cpp,
// winograd_tile). The weight gradients are F(2x2, 3x3) (see weight_grad_stored).
#pragma once

#include <cstdint>

#include "epilogue.h"
#include "planes.h"

namespace plantops::cpu::winograd {

// Whether these kernels compute a convolution of this shape: 3x3 kernel, stride 1, zero
// padding 0 to 2 on each side (so that the input gradient is one too).
bool applies(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw);

// Samples computed together (one per SIMD lane): batches smaller than this waste lanes.
template <typename T>
int64_t group_size();

// out[N, Cout, OH, OW] = conv(x[N, Cin, H, W], weight[Cout, Cin, 3, 3]) + bias, with zero
// padding (ph, pw) and stride 1: OH = H + 2 ph - 2, OW = W + 2 pw - 2. bias may be null.
// tile: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3). epilogue: applied to the outputs (epilogue.h).
template <typename T>
void conv(int tile, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t Cout,
          const Planes<T>& x, const T* weight, const T* bias, T* out, int nthreads,
          Epilogue<T> epilogue = {});

// out[N, Cout, OH / 2, OW / 2] = max_pool2d(relu(conv(...) + bias), 2) of that convolution in one
// pass (for frozen layers that need no gradient): each output tile holds whole pool windows.
// Returns false, computing nothing, when OH or OW is odd. NaN outputs are not propagated as
// max_pool2d propagates them.
template <typename T>
bool conv_relu_pool(int tile, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw,
                    int64_t Cout, const Planes<T>& x, const T* weight, const T* bias, T* out,
                    int nthreads);

// grad_w[o_end-o_begin, c_end-c_begin, 3, 3]: the weight gradient of that convolution for
// output channels [o_begin, o_end) of grad_out[N, O, OH, OW] and input channels
// [c_begin, c_end) of x[N, C, H, W]. Samples are summed in fixed groups in a fixed order, so
// the result does not depend on nthreads.
template <typename T>
void weight_grad(int64_t N, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t O,
                 const Planes<T>& x, const T* grad_out, int64_t o_begin, int64_t o_end,
                 int64_t c_begin, int64_t c_end, T* grad_w, int nthreads);

// The backward of a layer for its planted input channels [c_begin, c_end), in one pass over
// grad_out[N, O, OH, OW]: grad_x[N, c_end - g0, H, W], the input gradient of channels
// [g0, c_end) (g0 <= c_begin: the planted ones, or more) through weight[O, c_end - g0, 3, 3]
// (those channels' columns of every filter), and grad_w[no, c_end - c_begin, 3, 3], the weight
// gradient of filters [0, no) on the planted channels. Returns false, computing nothing, where
// it does not apply (more than 8 planted channels, or a group's input gradient over 2 MB); the
// result does not depend on nthreads.
template <typename T>
bool planted_input_grads(int64_t N, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t O,
                         int64_t no, const Planes<T>& x, int64_t g0, int64_t c_begin,
                         int64_t c_end, const T* grad_out, const T* weight, T* grad_x,
                         T* grad_w, int nthreads);

}  // namespace plantops::cpu::winograd
