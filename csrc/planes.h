// An NCHW tensor as the CPU kernels read it: channel planes that may lie in two tensors.
//
// The search passes a layer's planted input channels apart from its frozen ones (x_planted in
// plantops.planted_conv2d): they come from different layers, and only the planted ones need a
// gradient. Joining them with torch.cat copied the whole input twice per forward+backward
// (0.24 of 1.36 ms at 32 channels of 8x8 maps); the kernels read each plane where it lies.
#pragma once

#include <cstdint>

namespace plantops::cpu {

template <typename T>
struct Planes {
  const T* a;     // channels [0, split): [N][split][H][W]
  const T* b;     // channels [split, C): [N][C - split][H][W]; unused when split == C
  int64_t C, split, hw;

  // One tensor [N][C][H][W].
  Planes(const T* x, int64_t channels, int64_t plane)
      : a(x), b(nullptr), C(channels), split(channels), hw(plane) {}
  // Channels [0, split) in x and the rest in x2; all of them in x when x2 is null.
  Planes(const T* x, const T* x2, int64_t channels, int64_t split_at, int64_t plane)
      : a(x), b(x2), C(channels), split(x2 ? split_at : channels), hw(plane) {}

  // The plane of sample n, channel c.
  const T* plane(int64_t n, int64_t c) const {
    return c < split ? a + (n * split + c) * hw : b + (n * (C - split) + c - split) * hw;
  }
  // From channel c of sample n to channel c of sample n + 1.
  int64_t sample_stride(int64_t c) const { return (c < split ? split : C - split) * hw; }
};

}  // namespace plantops::cpu
