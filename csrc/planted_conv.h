// Shared description of one planted convolution, used by the CPU and CUDA kernels.
//
// The convolution's weight is never stored whole. It is three blocks:
//   frozen  [O_f, I_f, KH, KW]   frozen filters on frozen input channels
//   in      [O_f, I_p, KH, KW]   frozen filters on planted input channels (trainable)
//   out     [O_p, I_f+I_p, KH, KW] planted filters on every input channel (trainable)
// and the layer computes conv2d(x, [[frozen, in], [out]]) + [frozen_bias, out_bias].
// Every tensor the kernels see is contiguous NCHW / OIHW; the Python launchers make it so.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define PLANTOPS_HD __host__ __device__
#else
#define PLANTOPS_HD
#endif

namespace plantops {

struct Geometry {
  int64_t N = 0;                  // batch
  int64_t I_f = 0, I_p = 0;       // frozen / planted input channels
  int64_t O_f = 0, O_p = 0;       // frozen / planted output channels
  int64_t H = 0, W = 0;           // input height, width
  int64_t KH = 1, KW = 1;         // kernel
  int64_t SH = 1, SW = 1;         // stride
  int64_t PH = 0, PW = 0;         // zero padding
  int64_t OH = 0, OW = 0;         // output height, width

  PLANTOPS_HD int64_t C() const { return I_f + I_p; }
  PLANTOPS_HD int64_t O() const { return O_f + O_p; }
};

// Returns an empty string when g is consistent, else a message naming what is wrong.
const char* check_geometry(const Geometry& g);

}  // namespace plantops
