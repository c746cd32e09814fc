// ReLU + 2x2 max pool in one pass over NCHW planes (see relu_pool_cpu.h).
//
// Why a kernel of its own: every planted network pools after conv1, conv2 and conv5, and
// ATen's max_pool2d on NCHW CPU tensors walks each window with scalar index bookkeeping:
// 3.8 ms for a [128, 8, 32, 32] batch on a 2-core EPYC, where reading 4 MB and writing 1 MB
// takes a tenth of that. Here each output row reads its two input rows once; ReLU is folded
// in (max(0, max4) = max4 of the ReLU'd values, and a window whose maximum is <= 0 passes no
// gradient), and the argmax is kept as one byte per output for the backward.
//
// Four outputs at a time in short vectors: the even and odd columns of 8 inputs of each row
// are split by shuffles, and the comparisons are vector selects. The choices depend on the
// data, and as scalar code GCC compiles them to branches, which random values mispredict
// (15 ns per window). Four outputs fit every map of planting's networks (8x8 and up); a
// row's last OW % 4 outputs take the scalar path.
#include "relu_pool_cpu.h"

#include <cstring>

namespace plantops::cpu {
namespace {

template <typename T>
struct Quad {
  typedef T vec __attribute__((vector_size(4 * sizeof(T))));
  static vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(vec));
    return v;
  }
  static void store(T* p, vec v) { std::memcpy(p, &v, sizeof(vec)); }
};

// One window (a, b / c, d) the scalar way, for the tail of a row.
template <typename T>
void window(T a, T b, T c, T d, T* out, uint8_t* where) {
  T m = a;
  uint8_t k = 0;
  if (b > m || b != b) m = b, k = 1;  // the first maximum (strict >); NaN wins, as in max_pool2d
  if (c > m || c != c) m = c, k = 2;
  if (d > m || d != d) m = d, k = 3;
  const bool passes = m > T(0) || m != m;
  *out = passes ? m : T(0);
  *where = passes ? k : kNoGrad;
}

}  // namespace

template <typename T>
void relu_max_pool2x2(const T* x, int64_t planes, int64_t H, int64_t W, T* y, uint8_t* arg,
                      int nthreads) {
  using Q = Quad<T>;
  using vec = typename Q::vec;
  const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t oh = 0; oh < OH; ++oh) {
      const T* r0 = x + (p * H + 2 * oh) * W;
      const T* r1 = r0 + W;
      T* out = y + (p * OH + oh) * OW;
      uint8_t* where = arg + (p * OH + oh) * OW;
      int64_t ow = 0;
      for (; ow + 4 <= OW; ow += 4) {
        const vec t0 = Q::load(r0 + 2 * ow), t1 = Q::load(r0 + 2 * ow + 4);
        const vec u0 = Q::load(r1 + 2 * ow), u1 = Q::load(r1 + 2 * ow + 4);
        const vec a = __builtin_shufflevector(t0, t1, 0, 2, 4, 6);
        const vec b = __builtin_shufflevector(t0, t1, 1, 3, 5, 7);
        const vec c = __builtin_shufflevector(u0, u1, 0, 2, 4, 6);
        const vec d = __builtin_shufflevector(u0, u1, 1, 3, 5, 7);
        using mask = decltype(a > b);  // lanes of -1 (true) or 0, as wide as T
        vec m = a;
        mask k = {0, 0, 0, 0};
        mask wins = (b > m) | (b != b);
        m = wins ? b : m;
        k = wins ? mask{1, 1, 1, 1} : k;
        wins = (c > m) | (c != c);
        m = wins ? c : m;
        k = wins ? mask{2, 2, 2, 2} : k;
        wins = (d > m) | (d != d);
        m = wins ? d : m;
        k = wins ? mask{3, 3, 3, 3} : k;
        const mask passes = (m > vec{0, 0, 0, 0}) | (m != m);
        Q::store(out + ow, passes ? m : vec{0, 0, 0, 0});
        k = passes ? k : mask{kNoGrad, kNoGrad, kNoGrad, kNoGrad};
        for (int l = 0; l < 4; ++l) where[ow + l] = static_cast<uint8_t>(k[l]);
      }
      for (; ow < OW; ++ow)
        window(r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1], out + ow, where + ow);
    }
  }
}

template <typename T>
void relu_max_pool2x2_backward(const T* grad_y, const uint8_t* arg, int64_t planes, int64_t H,
                               int64_t W, T* grad_x, int nthreads) {
  using Q = Quad<T>;
  using vec = typename Q::vec;
  using mask = decltype(vec{} > vec{});
  const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    T* plane = grad_x + p * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      T* r0 = plane + 2 * oh * W;
      T* r1 = r0 + W;
      const T* g = grad_y + (p * OH + oh) * OW;
      const uint8_t* where = arg + (p * OH + oh) * OW;
      int64_t ow = 0;
      for (; ow + 4 <= OW; ow += 4) {
        const vec v = Q::load(g + ow);
        const mask k = {where[ow], where[ow + 1], where[ow + 2], where[ow + 3]};
        const vec zero = {0, 0, 0, 0};
        const vec a = k == 0 ? v : zero, b = k == 1 ? v : zero;
        const vec c = k == 2 ? v : zero, d = k == 3 ? v : zero;
        Q::store(r0 + 2 * ow, __builtin_shufflevector(a, b, 0, 4, 1, 5));
        Q::store(r0 + 2 * ow + 4, __builtin_shufflevector(a, b, 2, 6, 3, 7));
        Q::store(r1 + 2 * ow, __builtin_shufflevector(c, d, 0, 4, 1, 5));
        Q::store(r1 + 2 * ow + 4, __builtin_shufflevector(c, d, 2, 6, 3, 7));
      }
      for (; ow < OW; ++ow) {
        const uint8_t k = where[ow];
        const T v = g[ow];
        r0[2 * ow] = k == 0 ? v : T(0);
        r0[2 * ow + 1] = k == 1 ? v : T(0);
        r1[2 * ow] = k == 2 ? v : T(0);
        r1[2 * ow + 1] = k == 3 ? v : T(0);
      }
      if (W % 2) r0[W - 1] = r1[W - 1] = T(0);  // the column max_pool2d drops
    }
    if (H % 2) {
      T* last = plane + (H - 1) * W;
      for (int64_t w = 0; w < W; ++w) last[w] = T(0);
    }
  }
}

template void relu_max_pool2x2<float>(const float*, int64_t, int64_t, int64_t, float*, uint8_t*,
                                      int);
template void relu_max_pool2x2<double>(const double*, int64_t, int64_t, int64_t, double*,
                                       uint8_t*, int);
template void relu_max_pool2x2_backward<float>(const float*, const uint8_t*, int64_t, int64_t,
                                               int64_t, float*, int);
template void relu_max_pool2x2_backward<double>(const double*, const uint8_t*, int64_t, int64_t,
                                                int64_t, double*, int);

}  // namespace plantops::cpu
