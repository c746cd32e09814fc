// CPU kernels of relu_max_pool2d: ReLU followed by a 2x2 max pool of stride 2, as
// F.max_pool2d(F.relu(x), 2) computes it, gradient included (plantops/relu_pool.py).
#pragma once

#include <cstdint>

namespace plantops::cpu {

// Where a window's gradient goes: 0-3 (row-major position of its first maximum, the element
// PyTorch's max_pool2d picks among ties), or kNoGrad where the maximum is <= 0, so ReLU
// passes no gradient.
constexpr uint8_t kNoGrad = 4;

// y[planes, H/2, W/2] = max(0, max of each 2x2 window of x[planes, H, W]) (sizes rounded
// down: an odd last row or column is dropped, as by max_pool2d), and arg (same shape) says
// which element of the window the gradient reaches.
template <typename T>
void relu_max_pool2x2(const T* x, int64_t planes, int64_t H, int64_t W, T* y, uint8_t* arg,
                      int nthreads);

// grad_x[planes, H, W]: grad_y at each window's arg position, zeros everywhere else.
template <typename T>
void relu_max_pool2x2_backward(const T* grad_y, const uint8_t* arg, int64_t planes, int64_t H,
                               int64_t W, T* grad_x, int nthreads);

}  // namespace plantops::cpu
