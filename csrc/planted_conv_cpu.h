// CPU kernels of the planted convolution (see planted_conv.h for the weight blocks).
#pragma once

#include "epilogue.h"
#include "planes.h"
#include "planted_conv.h"

namespace plantops::cpu {

// The output tile (2: F(2x2, 3x3), 4: F(4x4, 3x3)) that a Winograd forward or input gradient of
// cin channels into cout filters takes under the current PLANTOPS_CPU_CONV.
int winograd_tile(int64_t cin, int64_t cout);

// out[N, O_f+O_p, OH, OW] = conv(x, [[frozen, in], [out]]) + [frozen_bias, out_bias].
// Any of the bias pointers may be null (no bias); w_in is unused when I_p == 0, w_out when O_p == 0.
// x is [N, I_f+I_p, H, W], or with x_planted not null [N, I_f, H, W] and x_planted the planted
// channels [N, I_p, H, W] (planes.h); likewise in weight_grad.
// epilogue: a residual added to the outputs and a ReLU, each sample's or band's as it is
// written (epilogue.h).
template <typename T>
void forward(const Geometry& g, const T* x, const T* x_planted, const T* w_frozen,
             const T* b_frozen, const T* w_in, const T* w_out, const T* b_out, T* out,
             int nthreads, Epilogue<T> epilogue = {});

// out[N, O_f+O_p, OH/2, OW/2] = max_pool2d(relu(forward(...)), 2), in one pass, where the
// Winograd kernels compute the layer and OH, OW are even (for frozen layers: no gradient);
// returns false, computing nothing, elsewhere.
template <typename T>
bool forward_relu_pool(const Geometry& g, const T* x, const T* x_planted, const T* w_frozen,
                       const T* b_frozen, const T* w_in, const T* w_out, const T* b_out, T* out,
                       int nthreads);

// grad_x[N, c_end-c_begin, H, W]: the input gradient for input channels [c_begin, c_end) only.
template <typename T>
void input_grad(const Geometry& g, const T* grad_out, const T* w_frozen, const T* w_in,
                const T* w_out, int64_t c_begin, int64_t c_end, T* grad_x, int nthreads);

// grad_w[o_end-o_begin, c_end-c_begin, KH, KW] (and grad_b[o_end-o_begin] when not null): the
// weight gradient of the whole weight restricted to output channels [o_begin, o_end) and input
// channels [c_begin, c_end). Planting asks for two such blocks: the planted filters
// (o in [O_f, O), every c) and the planted input slices (o in [0, O_f), c in [I_f, C)).
// The result does not depend on nthreads: samples are summed in fixed chunks, in a fixed order.
template <typename T>
void weight_grad(const Geometry& g, const T* grad_out, const T* x, const T* x_planted,
                 int64_t o_begin, int64_t o_end, int64_t c_begin, int64_t c_end, T* grad_w,
                 T* grad_b, int nthreads);

// The planted input channels' gradients together: grad_x[N, C - x_begin, H, W] for input
// channels [x_begin, C) (x_begin <= I_f: the planted ones, or more) and grad_in[O_f, I_p, KH,
// KW], in one pass where the Winograd kernels apply (winograd::planted_input_grads). Returns
// false, computing nothing, elsewhere: then input_grad and weight_grad compute them.
template <typename T>
bool planted_input_grads(const Geometry& g, const T* grad_out, const T* x, const T* x_planted,
                         const T* w_frozen, const T* w_in, const T* w_out, int64_t x_begin,
                         T* grad_x, T* grad_in, int nthreads);

}  // namespace plantops::cpu
