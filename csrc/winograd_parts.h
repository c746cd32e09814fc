// The building blocks of the Winograd F(2x2, 3x3) kernels (winograd_cpu.cpp and
// winograd_planted_inputs.cpp): the tiling, the transforms, the transposes into and out of the
// interleaved layout, and the products. Internal to those two files.
//
// Layout: the L samples of a group (L = SIMD lanes, 16 floats with AVX-512) are interleaved,
// so that every value a transform touches is one vector holding the same position of L
// samples. The transforms are then plain vector adds with no shuffles, and no lane is wasted
// whatever the channel count or map size (a direct kernel vectorized over channels wastes
// lanes at 12 or 20 channels, one vectorized over pixels at 8x8 maps).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "planes.h"
#include "simd.h"

namespace plantops::cpu::winograd {

// A stride-1 3x3 convolution of an H x W map padded by (ph, pw), cut into m x m output tiles
// (m = 2 for F(2x2, 3x3), 4 for F(4x4, 3x3)).
struct Tiles {
  int64_t H, W, ph, pw, OH, OW, TH, TW, Hp, Wp;
  Tiles(int64_t h, int64_t w, int64_t ph_, int64_t pw_, int64_t m = 2)
      : H(h), W(w), ph(ph_), pw(pw_), OH(h + 2 * ph_ - 2), OW(w + 2 * pw_ - 2),
        TH((OH + m - 1) / m), TW((OW + m - 1) / m), Hp(m * TH + 2), Wp(m * TW + 2) {}
};

// The transform matrices whose entries are 0 or +-1 (Lavin & Gray's B^T and A for F(2, 3)),
// and a sum with constant coefficients in which, once the loops are unrolled over constant
// indices, the zero terms vanish and the +-1 terms are plain adds at compile time (F(4x4,
// 3x3)'s other coefficients multiply).
inline constexpr int kBt[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
inline constexpr int kA[4][2] = {{1, 0}, {1, 1}, {1, -1}, {0, -1}};

// sum over r < R of coef(r) * value(r), for constant coefficients.
template <int R, typename V, typename Coef, typename Value>
inline __attribute__((always_inline)) V signed_sum(Coef coef, Value value) {
  using E = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;
  V v{};
  bool first = true;
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    const double k = coef(r);
    if (k == 0) continue;
    const V d = value(r);
    if (k == 1)
      v = first ? d : v + d;
    else if (k == -1)
      v = first ? -d : v - d;
    else
      v = first ? d * static_cast<E>(k) : v + d * static_cast<E>(k);
    first = false;
  }
  return v;
}

// A transpose of up to L x L elements: row i < ni is read from in(i) (nj elements), column
// j < nj written to out(j) (ni elements). The addresses come from functions so that a block
// may gather rows from anywhere and scatter columns anywhere: interleave and deinterleave
// cut a map into runs of L pixels whatever its width, which keeps every block full on 8x8
// maps (rows of 8 filled half of each block).
#if defined(__AVX512F__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized inside the masked-load intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// One 16x16 block of floats through registers (unpack, shuffle, two 128-bit lane shuffles),
// instead of 256 scalar moves with one of the two sides strided. Stream: full columns that
// start a cache line are written with non-temporal stores (see deinterleave).
template <bool Stream = false, typename In, typename Out>
inline __attribute__((always_inline)) void transpose16(In in, int ni, int nj, Out out) {
  const __mmask16 cols = static_cast<__mmask16>((1u << nj) - 1);
  const __mmask16 rows = static_cast<__mmask16>((1u << ni) - 1);
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = i < ni ? _mm512_maskz_loadu_ps(cols, in(i)) : _mm512_setzero_ps();
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  if constexpr (Stream) {
    if (ni == 16) {
      for (int j = 0; j < nj; ++j) {
        float* o = out(j);
        if ((reinterpret_cast<uintptr_t>(o) & 63) == 0)
          _mm512_stream_ps(o, r[j]);
        else
          _mm512_storeu_ps(o, r[j]);
      }
      return;
    }
  }
  for (int j = 0; j < nj; ++j) _mm512_mask_storeu_ps(out(j), rows, r[j]);
}
#pragma GCC diagnostic pop
#elif defined(__AVX2__)
// One 8x8 block of floats through registers (unpack, shuffle, 128-bit lane permutes), as
// transpose16 does with AVX-512: the scalar loop below made the interleaving as costly as the
// products on an AVX2 CPU (10% of a Student[16] round's profile, the products 11%).
template <typename In, typename Out>
inline __attribute__((always_inline)) void transpose8(In in, int ni, int nj, Out out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i cols = _mm256_cmpgt_epi32(_mm256_set1_epi32(nj), lane);
  const __m256i rows = _mm256_cmpgt_epi32(_mm256_set1_epi32(ni), lane);
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i)
    r[i] = i >= ni   ? _mm256_setzero_ps()
           : nj == 8 ? _mm256_loadu_ps(in(i))
                     : _mm256_maskload_ps(in(i), cols);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4 h + k]: rows 4 h to 4 h + 3 of columns k (low half) and k + 4 (high half).
  for (int h = 0; h < 8; h += 4) {
    r[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    t[k] = _mm256_permute2f128_ps(r[k], r[k + 4], 0x20);
    t[k + 4] = _mm256_permute2f128_ps(r[k], r[k + 4], 0x31);
  }
  for (int j = 0; j < nj; ++j) {
    if (ni == 8)
      _mm256_storeu_ps(out(j), t[j]);
    else
      _mm256_maskstore_ps(out(j), rows, t[j]);
  }
}
#endif

template <typename T, bool Stream = false, typename In, typename Out>
inline __attribute__((always_inline)) void transpose(In in, int ni, int nj, Out out) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    transpose16<Stream>(in, ni, nj, out);
    return;
  }
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    transpose8(in, ni, nj, out);  // streaming stores: measured on AVX-512 only
    return;
  }
#endif
  for (int j = 0; j < nj; ++j) {
    T* o = out(j);
    for (int i = 0; i < ni; ++i) o[i] = in(i)[j];
  }
}

// out[j * os + i] = in[i * is + j] for i < ni, j < nj (both at most the lane count L).
template <typename T>
void transpose_block(const T* in, int64_t is, int ni, int nj, T* out, int64_t os) {
  transpose<T>([&](int i) { return in + i * is; }, ni, nj, [&](int j) { return out + j * os; });
}

// out[k] = the sum of the L lanes of vector k of v (n vectors, L elements each), first lane to
// last like Simd::sum, so the result is the same bit for bit; L vectors at a time through a
// transpose and L - 1 vector adds instead of a serial chain of scalar adds per vector (which
// took a quarter of the weight gradient's time on 8x8 maps).
template <typename T>
void lane_sums(const T* v, int64_t n, T* out) {
  using S = Simd<T>;
  constexpr int64_t L = S::L;
  alignas(64) T t[L * L], s[L];
  for (int64_t k0 = 0; k0 < n; k0 += L) {
    const int ni = static_cast<int>(std::min(L, n - k0));
    transpose_block(v + k0 * L, L, ni, static_cast<int>(L), t, L);
    typename S::vec sum{};
    for (int64_t l = 0; l < L; ++l) sum += S::load(t + l * L);
    S::store(s, sum);
    std::copy(s, s + ni, out + k0);
  }
}

// dst[c / B][y][x][c % B][s] = src[n0 + s][c0 + c][y - top][x - left] where that lies inside
// src[N][C][H][W], else 0; for c < nc, y < rows, x < cols, s < L. B = 1 is [c][y][x][s].
// With B > 1 the B channels of a block lie side by side at each pixel, so that a kernel
// reading all of them addresses them at constant offsets from one pointer.
template <typename T>
void interleave(const Planes<T>& src, int64_t N, int64_t c0, int64_t nc, int64_t H,
                int64_t W, int64_t n0, int64_t top, int64_t left, int64_t rows, int64_t cols,
                T* dst, int64_t B = 1) {
  constexpr int64_t L = Simd<T>::L;
  const int ns = static_cast<int>(std::min(L, N - n0));
  const int64_t step = B * L;  // from one pixel of a channel to the next
  // Rows [y0, y1) of dst hold source rows [y0 - top, y1 - top), which follow one another in
  // each sample's plane: they are transposed as one run of pixels, L at a time.
  const int64_t y0 = std::clamp<int64_t>(top, 0, rows), y1 = std::clamp<int64_t>(top + H, y0, rows);
  const int64_t run = (y1 - y0) * W;
  for (int64_t c = 0; c < nc; ++c) {
    T* dc = dst + ((c / B) * rows * cols * B + c % B) * L;  // pixel (y, x) at + (y cols + x) step
    for (int64_t y = 0; y < rows; ++y) {
      T* d = dc + y * cols * step;
      const auto zero = [&](int64_t x0, int64_t x1) {
        for (int64_t x = x0; x < x1; ++x) std::fill(d + x * step, d + x * step + L, T(0));
      };
      if (y < y0 || y >= y1 || ns < L) {  // partial groups: the missing samples' lanes are 0
        zero(0, cols);
      } else {
        zero(0, left);
        zero(left + W, cols);
      }
    }
    const T* r = src.plane(n0, c0 + c) + (y0 - top) * W;
    const int64_t plane = src.sample_stride(c0 + c);
    T* at[L];  // where the pixels of one run go
    for (int64_t q = 0, y = y0, x = 0; q < run; q += L) {
      const int nj = static_cast<int>(std::min(L, run - q));
      for (int j = 0; j < nj; ++j) {
        at[j] = dc + (y * cols + x + left) * step;
        if (++x == W) x = 0, ++y;
      }
      transpose<T>([&](int i) { return r + i * plane + q; }, ns, nj,
                   [&](int j) { return at[j]; });
    }
  }
}

// dst[n0 + s][c][y0 + y][x] = src[c][y][x][s] for y < ny, x < OW, s < min(L, N - n0), into
// dst[N][C][OH][OW]; src is [C][rows][cols][L] and holds output rows y0 to y0 + ny. The rows
// follow one another in each sample's plane of dst: they are transposed as one run of pixels,
// L at a time. Stream: for an output larger than the caches, whose lines would otherwise be
// read from memory before being overwritten whole (3-4% of a forward at 32 channels of 32x32
// maps on both the Xeon and the EPYC we measured; no gain where the output fits in L2).
template <typename T, bool Stream>
void deinterleave(const T* src, int64_t rows, int64_t cols, int64_t N, int64_t C, int64_t OH,
                  int64_t OW, int64_t n0, int64_t y0, int64_t ny, T* dst) {
  constexpr int64_t L = Simd<T>::L;
  const int ns = static_cast<int>(std::min(L, N - n0));
  const int64_t run = ny * OW, plane = C * OH * OW;
  for (int64_t c = 0; c < C; ++c) {
    const T* sc = src + c * rows * cols * L;
    T* d = dst + ((n0 * C + c) * OH + y0) * OW;
    const T* at[L];  // where the pixels of one run come from
    for (int64_t q = 0, y = 0, x = 0; q < run; q += L) {
      const int ni = static_cast<int>(std::min(L, run - q));
      for (int i = 0; i < ni; ++i) {
        at[i] = sc + (y * cols + x) * L;
        if (++x == OW) x = 0, ++y;
      }
      transpose<T, Stream>([&](int i) { return at[i]; }, ni, ns,
                   [&](int j) { return d + j * plane + q; });
    }
  }
#if defined(__AVX512F__)
  if constexpr (Stream) _mm_sfence();  // order the streamed stores before the caller reads
#endif
}

// U = G g G^T (4x4) of one 3x3 filter g; u[xi * stride] for xi = 4 i + j.
template <typename T>
void filter_transform(const T* g, T* u, int64_t stride) {
  T t[4][3];
  for (int k = 0; k < 3; ++k) {
    t[0][k] = g[k];
    t[1][k] = (g[k] + g[3 + k] + g[6 + k]) / 2;
    t[2][k] = (g[k] - g[3 + k] + g[6 + k]) / 2;
    t[3][k] = g[6 + k];
  }
  for (int i = 0; i < 4; ++i) {
    u[(4 * i + 0) * stride] = t[i][0];
    u[(4 * i + 1) * stride] = (t[i][0] + t[i][1] + t[i][2]) / 2;
    u[(4 * i + 2) * stride] = (t[i][0] - t[i][1] + t[i][2]) / 2;
    u[(4 * i + 3) * stride] = t[i][2];
  }
}

// dL/dg = G^T (dL/dU) G (3x3) from du[16].
template <typename T>
void filter_grad(const T* du, T* g) {
  T t[3][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = du[j] + (du[4 + j] + du[8 + j]) / 2;
    t[1][j] = (du[4 + j] - du[8 + j]) / 2;
    t[2][j] = (du[4 + j] + du[8 + j]) / 2 + du[12 + j];
  }
  for (int k = 0; k < 3; ++k) {
    g[3 * k + 0] = t[k][0] + (t[k][1] + t[k][2]) / 2;
    g[3 * k + 1] = (t[k][1] - t[k][2]) / 2;
    g[3 * k + 2] = (t[k][1] + t[k][2]) / 2 + t[k][3];
  }
}

// out(i, j) = sum over r, s < R of P(i, r) g(r, s) P(j, s) for i, j < I: the two-sided
// transforms of the algorithms (B^T d B, A^T M A, their adjoints), in two stages of R-term
// sums with constant coefficients.
template <int I, int R, typename V, typename Coef, typename In, typename Out>
inline __attribute__((always_inline)) void two_sided(Coef P, In g, Out out) {
  V t[I][R];
#pragma GCC unroll 6
  for (int i = 0; i < I; ++i)
#pragma GCC unroll 6
    for (int s = 0; s < R; ++s)
      t[i][s] = signed_sum<R, V>([&](int r) { return P(i, r); }, [&](int r) { return g(r, s); });
#pragma GCC unroll 6
  for (int i = 0; i < I; ++i)
#pragma GCC unroll 6
    for (int j = 0; j < I; ++j)
      out(i, j, signed_sum<R, V>([&](int s) { return P(j, s); }, [&](int s) { return t[i][s]; }));
}

// out[4 i + j] = (K d K^T)[i][j] of the R x R tile d at `at` (rows `row` elements apart,
// vectors of L): with K = B^T (R = 4) V = B^T d B of an input tile, with K = A (R = 2)
// D = A dY A^T of an output-gradient tile (the gradient of the tile's M, since Y = A^T M A).
template <typename T, int R, const int (&K)[4][R]>
inline __attribute__((always_inline)) void tile_transform(const T* at, int64_t row,
                                                          typename Simd<T>::vec out[16]) {
  using S = Simd<T>;
  using vec = typename S::vec;
  vec d[R][R];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < R; ++c) d[r][c] = S::load(at + r * row + c * S::L);
  two_sided<4, R, vec>([](int i, int r) { return K[i][r]; },
                       [&](int r, int c) { return d[r][c]; },
                       [&](int i, int j, vec x) { out[4 * i + j] = x; });
}

// V = B^T d B of the 4x4 input tile at `at`, D = A dY A^T of the 2x2 output-gradient tile at
// `at` (see tile_transform).
template <typename T>
inline __attribute__((always_inline)) void input_tile(const T* at, int64_t row,
                                                      typename Simd<T>::vec v[16]) {
  tile_transform<T, 4, kBt>(at, row, v);
}
template <typename T>
inline __attribute__((always_inline)) void grad_tile(const T* at, int64_t row,
                                                     typename Simd<T>::vec d[16]) {
  tile_transform<T, 2, kA>(at, row, d);
}

// Y = A^T M A (2x2) from m[16].
template <typename V>
inline __attribute__((always_inline)) void output_tile(const V m[16], V y[2][2]) {
  two_sided<2, 4, V>([](int a, int i) { return kA[i][a]; },
                     [&](int i, int j) { return m[4 * i + j]; },
                     [&](int a, int b, V x) { y[a][b] = x; });
}

// M[o] = sum_c U[c][o] V[c] for o < Opad (each V[c], M[o] a vector of L samples; V[c] at
// V + c * vstride, M[o] at M + o * mstride). OB filters at a time: each loaded V vector feeds
// OB FMAs with broadcast U values, OB accumulators in registers.
template <typename T, int OB>
void multiply(const T* V, int64_t vstride, const T* U, int64_t Cin, int64_t Opad, T* M,
              int64_t mstride) {
  using S = Simd<T>;
  using vec = typename S::vec;
  for (int64_t ob = 0; ob < Opad; ob += OB) {
    vec acc[OB];
#pragma GCC unroll 24
    for (int j = 0; j < OB; ++j) acc[j] = vec{};
    for (int64_t c = 0; c < Cin; ++c) {
      const vec v = S::load(V + c * vstride);
      const T* u = U + c * Opad + ob;
#pragma GCC unroll 24
      for (int j = 0; j < OB; ++j) acc[j] += v * u[j];
    }
#pragma GCC unroll 24
    for (int j = 0; j < OB; ++j) S::store(M + (ob + j) * mstride, acc[j]);
  }
}

// Filters per forward register tile (8 to 24 accumulators), chosen to waste the fewest padded
// filters, then the largest. Up to 4 filters (the input gradient of 4 planted channels) take
// a tile of 4: 8 would double the products.
// With 16 vector registers (AVX2) tiles of more than 12 filters spill their sums to the stack,
// and each spilled sum's load-add-store chain then sets the loop's pace: on an AVX2 EPYC two
// tiles of 8 made a 16-filter forward on 8x8 maps 1.7x faster. 32 registers (AVX-512) hold 24.
inline int pick_filters_per_tile(int64_t Cout) {
  if (Cout <= 4) return 4;
#if defined(__AVX512F__)
  constexpr int kWidest = 24;
#else
  constexpr int kWidest = 12;
#endif
  int best = kWidest;
  for (int ob : {24, 20, 16, 12, 8})
    if (ob <= kWidest && round_up(Cout, ob) < round_up(Cout, best)) best = ob;
  return best;
}

// dd = B m B^T (4x4), the adjoint of the input transform V = B^T d B.
template <typename V>
inline __attribute__((always_inline)) void input_tile_adjoint(const V m[16], V dd[16]) {
  two_sided<4, 4, V>([](int r, int i) { return kBt[i][r]; },
                     [&](int i, int j) { return m[4 * i + j]; },
                     [&](int r, int s, V x) { dd[4 * r + s] = x; });
}

// p[(o * nc + c) * 16 + xi] = the sum of the lanes of dU[xi][o/OT][c/CT][OT][CT] (one group's
// dL/dU; sums is scratch for 16 nop ncp values), for o < no, c < nc.
template <typename T, int OT, int CT>
void group_sums(const T* dU, int64_t no, int64_t nc, T* sums, T* p) {
  const int64_t nop = round_up(no, OT), ncp = round_up(nc, CT);
  lane_sums(dU, 16 * nop * ncp, sums);
  for (int xi = 0; xi < 16; ++xi)
    for (int64_t o = 0; o < no; ++o)
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t ob = o / OT * OT, cb = c / CT * CT;
        p[(o * nc + c) * 16 + xi] =
            sums[xi * nop * ncp + ob * ncp + cb * OT + (o - ob) * CT + (c - cb)];
      }
}

// grad_w[no][nc][3][3] = G^T (sum of the groups' dL/dU, in group order) G.
template <typename T>
void sum_groups(const T* partial, int64_t groups, int64_t no, int64_t nc, T* grad_w) {
  std::vector<T> du(no * nc * 16, T(0));
  for (int64_t grp = 0; grp < groups; ++grp)
    for (int64_t i = 0; i < no * nc * 16; ++i) du[i] += partial[grp * 16 * no * nc + i];
  for (int64_t i = 0; i < no * nc; ++i) filter_grad(du.data() + i * 16, grad_w + i * 9);
}

// F(2x2, 3x3) as the forward's tile policy (see F4 in winograd_f4.h): output tiles of m x m,
// input tiles of a x a, X transformed values per tile.
struct F2 {
  static constexpr int m = 2, a = m + 2, X = a * a;
  template <typename T>
  static void filter(const T* g, T* u, int64_t stride) { filter_transform(g, u, stride); }
  template <typename T>
  static inline __attribute__((always_inline)) void input(const T* at, int64_t row,
                                                          typename Simd<T>::vec v[X]) {
    input_tile<T>(at, row, v);
  }
  template <typename V>
  static inline __attribute__((always_inline)) void output(const V mm[X], V y[m][m]) {
    output_tile(mm, y);
  }
};

}  // namespace plantops::cpu::winograd
