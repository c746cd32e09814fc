// Winograd F(2x2, 3x3) kernels (see winograd_cpu.h).
//
// Layout: the L samples of a group (L = SIMD lanes, 16 floats with AVX-512) are interleaved,
// so that every value a transform touches is one vector holding the same position of L
// samples. The transforms are then plain vector adds with no shuffles, and no lane is wasted
// whatever the channel count or map size (a direct kernel vectorized over channels wastes
// lanes at 12 or 20 channels, one vectorized over pixels at 8x8 maps).
//
// Forward, per group: interleave the zero-padded input; per tile, transform the input tile
// (V[c][xi]), multiply by the transformed filters (16 matrix-vector products
// M[o][xi] = sum_c U[xi][c][o] V[c][xi], each element a vector of L samples), transform back
// to 2x2 outputs; de-interleave into NCHW at the end.
// Weight gradient: the forward is linear in U, so dL/dU[xi][o][c] = sum over tiles of
// (A dY A^T)[xi][o] V[xi][c] and dL/dg = G^T (dL/dU) G: the same tiles, 16 products that
// reduce over tiles instead, each transformed value computed where it is used.
#include "winograd_cpu.h"

#include <algorithm>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "simd.h"

namespace plantops::cpu::winograd {
namespace {

// A stride-1 3x3 convolution of an H x W map padded by (ph, pw), cut into 2x2 output tiles.
struct Tiles {
  int64_t H, W, ph, pw, OH, OW, TH, TW, Hp, Wp;
  Tiles(int64_t h, int64_t w, int64_t ph_, int64_t pw_)
      : H(h), W(w), ph(ph_), pw(pw_), OH(h + 2 * ph_ - 2), OW(w + 2 * pw_ - 2),
        TH((OH + 1) / 2), TW((OW + 1) / 2), Hp(2 * TH + 2), Wp(2 * TW + 2) {}
};

// The transform matrices whose entries are 0 or +-1 (Lavin & Gray's B^T and A for F(2, 3)),
// and a sum with such coefficients in which the zero terms vanish at compile time once the
// loops are unrolled over constant indices.
constexpr int kBt[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
constexpr int kA[4][2] = {{1, 0}, {1, 1}, {1, -1}, {0, -1}};

// sum over r < R of coef(r) * value(r), coef(r) in {-1, 0, 1}.
template <int R, typename V, typename Coef, typename Value>
inline __attribute__((always_inline)) V signed_sum(Coef coef, Value value) {
  V v{};
  bool first = true;
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const int k = coef(r);
    if (k == 0) continue;
    const V d = value(r);
    v = first ? (k > 0 ? d : -d) : (k > 0 ? v + d : v - d);
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
#endif

template <typename T, bool Stream = false, typename In, typename Out>
inline __attribute__((always_inline)) void transpose(In in, int ni, int nj, Out out) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    transpose16<Stream>(in, ni, nj, out);
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
// transforms of the algorithm (B^T d B, A^T M A, their adjoints), in two stages of R-term
// signed sums. The coefficients are 0 or +-1 and, once the loops are unrolled, constants.
template <int I, int R, typename V, typename Coef, typename In, typename Out>
inline __attribute__((always_inline)) void two_sided(Coef P, In g, Out out) {
  V t[I][R];
#pragma GCC unroll 4
  for (int i = 0; i < I; ++i)
#pragma GCC unroll 4
    for (int s = 0; s < R; ++s)
      t[i][s] = signed_sum<R, V>([&](int r) { return P(i, r); }, [&](int r) { return g(r, s); });
#pragma GCC unroll 4
  for (int i = 0; i < I; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < I; ++j)
      out(i, j, signed_sum<R, V>([&](int s) { return P(j, s); }, [&](int s) { return t[i][s]; }));
}

// V = B^T d B of the 4x4 input tile at `at` (row stride `row` elements, vectors of L).
template <typename T>
inline __attribute__((always_inline)) void input_tile(const T* at, int64_t row,
                                                      typename Simd<T>::vec v[16]) {
  using S = Simd<T>;
  using vec = typename S::vec;
  vec d[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) d[i][j] = S::load(at + i * row + j * S::L);
  two_sided<4, 4, vec>([](int i, int r) { return kBt[i][r]; },
                       [&](int r, int c) { return d[r][c]; },
                       [&](int i, int j, vec x) { v[4 * i + j] = x; });
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
int pick_filters_per_tile(int64_t Cout) {
  if (Cout <= 4) return 4;
  int best = 24;
  for (int ob : {24, 20, 16, 12, 8})
    if (round_up(Cout, ob) < round_up(Cout, best)) best = ob;
  return best;
}

template <typename T, int OB>
void conv_groups(int64_t N, int64_t Cin, const Tiles& tl, int64_t Cout, const Planes<T>& x,
                 const T* weight, const T* bias, T* out, int nthreads) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  const int64_t Opad = round_up(Cout, OB);
  // U[xi][c][o], zero for the padded filters.
  std::vector<T> U(16 * Cin * Opad, T(0));
  for (int64_t o = 0; o < Cout; ++o)
    for (int64_t c = 0; c < Cin; ++c)
      filter_transform(weight + (o * Cin + c) * 9, U.data() + c * Opad + o, Cin * Opad);
  std::vector<T> b(Cout, T(0));
  for (int64_t o = 0; o < Cout && bias; ++o) b[o] = bias[o];
  // A group is computed in bands of tile rows whose interleaved input and output stay in L2
  // (1 MB together; at least 4 tile rows, since each band interleaves 2 input rows twice): a
  // whole group of 16 samples of 32 channels on 32x32 maps is 2.4 MB each way, and on
  // STL-10's 96x96 maps tens of MB per thread.
  const int64_t groups = (N + L - 1) / L, OWp = 2 * tl.TW;
  const int64_t row_bytes = 2 * (Cin * tl.Wp + Cout * OWp) * L * sizeof(T);  // per tile row
  const int64_t band = std::min(tl.TH, std::max<int64_t>((1 << 20) / row_bytes, 4));
  const int64_t band_in = 2 * band + 2, band_out = 2 * band;  // rows of xs and ys
  const bool stream = N * Cout * tl.OH * tl.OW * int64_t(sizeof(T)) > (4 << 20);
#pragma omp parallel num_threads(nthreads)
  {
    // One tile's transformed values, V[c][xi] and M[o][xi]: a transform touches 16 adjacent
    // vectors. Every element is written before it is read, so none is zeroed first (zeroing
    // them took 3% of a forward+backward at 16 channels).
    const auto xs = aligned_buffer<T>(Cin * band_in * tl.Wp * L),
               V = aligned_buffer<T>(Cin * 16 * L), M = aligned_buffer<T>(Opad * 16 * L),
               ys = aligned_buffer<T>(Cout * band_out * OWp * L);
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < groups; ++grp)
      for (int64_t ty0 = 0; ty0 < tl.TH; ty0 += band) {
        const int64_t ty1 = std::min(tl.TH, ty0 + band), rows_in = 2 * (ty1 - ty0) + 2;
        // Padded input rows 2 ty0 to 2 ty1 + 2: row y of xs is input row y + 2 ty0 - ph.
        interleave(x, N, 0, Cin, tl.H, tl.W, grp * L, tl.ph - 2 * ty0, tl.pw, rows_in,
                   tl.Wp, xs.get());
        for (int64_t ty = ty0; ty < ty1; ++ty)
          for (int64_t tx = 0; tx < tl.TW; ++tx) {
            for (int64_t c = 0; c < Cin; ++c) {
              vec v[16];
              input_tile<T>(xs.get() + ((c * rows_in + 2 * (ty - ty0)) * tl.Wp + 2 * tx) * L,
                            tl.Wp * L, v);
              for (int xi = 0; xi < 16; ++xi) S::store(V.get() + (c * 16 + xi) * L, v[xi]);
            }
            for (int xi = 0; xi < 16; ++xi)
              multiply<T, OB>(V.get() + xi * L, 16 * L, U.data() + xi * Cin * Opad, Cin, Opad,
                              M.get() + xi * L, 16 * L);
            for (int64_t o = 0; o < Cout; ++o) {
              vec m[16], y[2][2];
              for (int xi = 0; xi < 16; ++xi) m[xi] = S::load(M.get() + (o * 16 + xi) * L);
              output_tile(m, y);
              T* dst = ys.get() + ((o * band_out + 2 * (ty - ty0)) * OWp + 2 * tx) * L;
              for (int a = 0; a < 2; ++a)
                for (int bb = 0; bb < 2; ++bb)
                  S::store(dst + (a * OWp + bb) * L, y[a][bb] + b[o]);
            }
          }
        const int64_t ny = std::min(tl.OH, 2 * ty1) - 2 * ty0;
        if (stream)
          deinterleave<T, true>(ys.get(), band_out, OWp, N, Cout, tl.OH, tl.OW, grp * L,
                                2 * ty0, ny, out);
        else
          deinterleave<T, false>(ys.get(), band_out, OWp, N, Cout, tl.OH, tl.OW, grp * L,
                                 2 * ty0, ny, out);
      }
  }
}

}  // namespace

bool applies(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  return kh == 3 && kw == 3 && sh == 1 && sw == 1 && ph >= 0 && ph <= 2 && pw >= 0 && pw <= 2;
}

template <typename T>
int64_t group_size() {
  return Simd<T>::L;
}

template <typename T>
void conv(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t Cout,
          const Planes<T>& x, const T* weight, const T* bias, T* out, int nthreads) {
  const Tiles tl(H, W, ph, pw);
  if (N == 0 || Cout == 0 || tl.OH <= 0 || tl.OW <= 0) return;
  switch (pick_filters_per_tile(Cout)) {
    case 4:
      return conv_groups<T, 4>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 8:
      return conv_groups<T, 8>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 12:
      return conv_groups<T, 12>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 16:
      return conv_groups<T, 16>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 20:
      return conv_groups<T, 20>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    default:
      return conv_groups<T, 24>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
  }
}

// One element xi = 4 I + J of the transforms, computed alone from the tile at `at` (rows
// `row` elements apart, columns `col`): the input transform (B^T d B)[I][J] over a 4x4 input
// tile, and the output-gradient transform (A dY A^T)[I][J] over a 2x2 gradient tile. Each is a
// sum of 1 to 4 tile values with signs; the coefficients are constants, so the zero terms
// vanish.
template <typename T, int I, int J, int R, const int (&K)[4][R]>
inline __attribute__((always_inline)) typename Simd<T>::vec transformed(const T* at, int64_t row,
                                                                        int64_t col) {
  using S = Simd<T>;
  using vec = typename S::vec;
  return signed_sum<R, vec>([](int r) { return K[I][r]; }, [&](int r) {
    return signed_sum<R, vec>([](int c) { return K[J][c]; },
                              [&](int c) { return S::load(at + r * row + c * col); });
  });
}

// dU[xi][o][c] += sum over the tiles of nty tile rows of D[xi][o] V[xi][c], for one xi and a
// register tile of OT filters by CT input channels (dU[xi][o][c] = that sum when `first`: the
// sums start in registers, and dU is not zeroed first). xs points at the first tile row's first
// input pixel in a channel-blocked buffer ([y][x][CT][L]: the CT channels side by side), gs at
// its first output-gradient pixel ([y][x][OT][L]); rows xrow and grow elements apart. Every load
// is then one of 6 row pointers plus a constant, which keeps the loop free of address
// arithmetic and register spills.
template <typename T, int XI, int OT, int CT>
void grad_row(const T* xs, int64_t xrow, const T* gs, int64_t grow, int64_t TW, int64_t nty,
              bool first, T* acc_out) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  constexpr int I = XI / 4, J = XI % 4;
  vec acc[OT][CT];
  for (int i = 0; i < OT; ++i)
    for (int j = 0; j < CT; ++j) acc[i][j] = first ? vec{} : S::load(acc_out + (i * CT + j) * L);
  for (int64_t r = 0; r < nty; ++r, xs += 2 * xrow, gs += 2 * grow)
    for (int64_t tx = 0; tx < TW; ++tx) {
      vec d[OT];
      for (int i = 0; i < OT; ++i)
        d[i] = transformed<T, I, J, 2, kA>(gs + 2 * tx * OT * L + i * L, grow, OT * L);
#pragma GCC unroll 8
      for (int j = 0; j < CT; ++j) {
        const vec v = transformed<T, I, J, 4, kBt>(xs + 2 * tx * CT * L + j * L, xrow, CT * L);
        for (int i = 0; i < OT; ++i) acc[i][j] += d[i] * v;
      }
    }
  for (int i = 0; i < OT; ++i)
    for (int j = 0; j < CT; ++j) S::store(acc_out + (i * CT + j) * L, acc[i][j]);
}

template <typename T, int OT, int CT, int... XI>
void grad_row_all(std::integer_sequence<int, XI...>, const T* xs, int64_t xrow, const T* gs,
                  int64_t grow, int64_t TW, int64_t nty, bool first, T* acc,
                  int64_t xi_stride) {
  (grad_row<T, XI, OT, CT>(xs, xrow, gs, grow, TW, nty, first, acc + XI * xi_stride), ...);
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

// weight_grad with a register tile of OT filters by CT input channels.
template <typename T, int OT, int CT>
void weight_grad_tiled(int64_t N, const Tiles& tl, int64_t O, const Planes<T>& x,
                       const T* grad_out, int64_t o_begin, int64_t o_end, int64_t c_begin,
                       int64_t c_end, T* grad_w, int nthreads) {
  using S = Simd<T>;
  constexpr int64_t L = S::L;
  const int64_t H = tl.H, W = tl.W, ph = tl.ph, pw = tl.pw;
  const int64_t no = o_end - o_begin, nc = c_end - c_begin;
  const int64_t nop = round_up(no, OT), ncp = round_up(nc, CT);
  const int64_t groups = (N + L - 1) / L, OWp = 2 * tl.TW;
  const Planes<T> dy(grad_out, O, tl.OH * tl.OW);
  // Per group, dL/dU summed over its samples, in a fixed order (every element written).
  const std::unique_ptr<T[]> partial(new T[groups * 16 * no * nc]);
  // Channel-blocked buffers: [c/CT][y][x][CT][L] and [o/OT][y][x][OT][L].
  const int64_t xrow = tl.Wp * CT * L, grow = OWp * OT * L;
  // Tile rows per pass: at least 16 tiles where the row is shorter, so that on 8x8 maps (4
  // tiles a row) the sums are not loaded and stored every 4 tiles (1.10-1.17x faster there).
  const int64_t pass_rows = std::max<int64_t>(1, 16 / tl.TW);
  // A group is interleaved in bands of tile rows (whole passes) whose buffers fit in L2
  // (1 MB), as in the forward: at 32 channels of 32x32 maps a whole group is 3 MB, which
  // the products then read back from L3.
  const int64_t row_bytes = 2 * (ncp * xrow / CT + nop * grow / OT) * sizeof(T);
  const int64_t band = std::min(
      round_up(tl.TH, pass_rows),
      std::max<int64_t>(1, (1 << 20) / row_bytes / pass_rows) * pass_rows);
#pragma omp parallel num_threads(nthreads)
  {
    // The transformed values are never stored: each is computed where it is used, from these
    // two interleaved buffers, and the sums stay in registers along one or more tile rows.
    // The interleaving writes every element of the real channels and filters. Padded ones
    // are zero, or in a shorter last band stale values of others (its rows are laid out
    // closer together): only their own sums see them, and those are dropped. Without padding
    // nothing needs zeroing (which took 6% of an 8x8 weight gradient).
    const bool padded = ncp > nc || nop > no;
    const auto xs = aligned_buffer<T>(ncp * (2 * band + 2) * xrow / CT, padded),
               gs = aligned_buffer<T>(nop * 2 * band * grow / OT, padded);
    const int64_t xi_stride = nop * ncp * L;
    const auto dU = aligned_buffer<T>(16 * xi_stride);  // [xi][o/OT][c/CT][OT][CT] vectors
    const auto sums = aligned_buffer<T>(16 * nop * ncp);  // their lane sums
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < groups; ++grp) {
      for (int64_t ty0 = 0; ty0 < tl.TH; ty0 += band) {
        const int64_t ty1 = std::min(tl.TH, ty0 + band);
        const int64_t rows_x = 2 * (ty1 - ty0) + 2, rows_g = 2 * (ty1 - ty0);
        // Row y of xs is padded input row y + 2 ty0, of gs output row y + 2 ty0.
        interleave(x, N, c_begin, nc, H, W, grp * L, ph - 2 * ty0, pw, rows_x, tl.Wp,
                   xs.get(), CT);
        interleave(dy, N, o_begin, no, tl.OH, tl.OW, grp * L, -2 * ty0, 0, rows_g, OWp, gs.get(),
                   OT);
        for (int64_t ty = ty0; ty < ty1; ty += pass_rows)
          for (int64_t cb = 0; cb < ncp; cb += CT)
            for (int64_t ob = 0; ob < nop; ob += OT)
              grad_row_all<T, OT, CT>(
                  std::make_integer_sequence<int, 16>{},
                  xs.get() + (cb / CT * rows_x + 2 * (ty - ty0)) * xrow, xrow,
                  gs.get() + (ob / OT * rows_g + 2 * (ty - ty0)) * grow, grow, tl.TW,
                  std::min(pass_rows, ty1 - ty), ty == 0, dU.get() + (ob * ncp + cb * OT) * L,
                  xi_stride);
      }
      group_sums<T, OT, CT>(dU.get(), no, nc, sums.get(), partial.get() + grp * 16 * no * nc);
    }
  }
  sum_groups(partial.get(), groups, no, nc, grad_w);
}

template <typename T>
void weight_grad(int64_t N, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t O,
                 const Planes<T>& x, const T* grad_out, int64_t o_begin, int64_t o_end,
                 int64_t c_begin, int64_t c_end, T* grad_w, int nthreads) {
  const Tiles tl(H, W, ph, pw);
  const int64_t no = o_end - o_begin, nc = c_end - c_begin;
  std::fill(grad_w, grad_w + no * nc * 9, T(0));
  if (N == 0 || no == 0 || nc == 0 || tl.OH <= 0 || tl.OW <= 0) return;
  // 4 filters by 6 channels shares each transformed input value among 4 products, but pads
  // 4, 8, 16 or 32 channels (the planted input slices, and many layers) by a third or an
  // eighth: those take 4 by 4, which pads nothing (24 and 16 registers of sums, no spills).
  if (round_up(nc, 4) < round_up(nc, 6))
    return weight_grad_tiled<T, 4, 4>(N, tl, O, x, grad_out, o_begin, o_end, c_begin, c_end,
                                      grad_w, nthreads);
  weight_grad_tiled<T, 4, 6>(N, tl, O, x, grad_out, o_begin, o_end, c_begin, c_end, grad_w,
                             nthreads);
}

// ---------------------------------------------------------------------------------------------
// The backward of a layer whose planted input channels come apart from frozen ones (x_planted):
// the input gradient of the planted channels and the gradient of the frozen filters' weights on
// them, together. Both read every channel of the output gradient dY through the same
// transform, D = A dY A^T per 2x2 tile (the gradient of the tile's M, since Y = A^T M A):
// - the weight gradient is dU[xi][o][c] = sum over tiles of D[xi][o] V[xi][c], V = B^T d B of
//   the planted channels' input tiles;
// - the input gradient is the forward's adjoint: each tile adds B (sum_o U[o][c] D[o]) B^T to
//   the 4x4 input tile it read (tiles overlap by 2), U = G g G^T the forward's filters.
// Computed separately, the input gradient was a convolution of dY that transformed every dY
// channel with the 4x4 input transform, and the weight gradient recomputed each planted
// channel's V for every block of 4 filters; here D and V are computed once per tile.

// D = A dY A^T (4x4) of the 2x2 output-gradient tile at `at` (rows `row` elements apart,
// vectors of L).
template <typename T>
inline __attribute__((always_inline)) void grad_tile(const T* at, int64_t row,
                                                     typename Simd<T>::vec d[16]) {
  using S = Simd<T>;
  using vec = typename S::vec;
  vec g[2][2];
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) g[a][b] = S::load(at + a * row + b * S::L);
  two_sided<4, 2, vec>([](int i, int a) { return kA[i][a]; },
                       [&](int a, int b) { return g[a][b]; },
                       [&](int i, int j, vec x) { d[4 * i + j] = x; });
}

// dd = B m B^T (4x4), the adjoint of the input transform V = B^T d B.
template <typename V>
inline __attribute__((always_inline)) void input_tile_adjoint(const V m[16], V dd[16]) {
  two_sided<4, 4, V>([](int r, int i) { return kBt[i][r]; },
                     [&](int i, int j) { return m[4 * i + j]; },
                     [&](int r, int s, V x) { dd[4 * r + s] = x; });
}

// dU[xi][o/OT][c/CT][OT][CT] = (or += unless `first`) sum over tiles k < nk of
// D[xi][k][o] V[xi][k][c] for o < nop, c < ncp (vectors of L: D at D + xi * dxi + k * dk,
// V likewise). A register tile of OT x CT sums takes OT + CT loads per OT CT FMAs.
template <typename T, int OT, int CT>
void chunk_products(const T* V, int64_t vxi, int64_t vk, const T* D, int64_t dxi, int64_t dk,
                    int64_t nk, int64_t ncp, int64_t nop, bool first, T* dU) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  for (int xi = 0; xi < 16; ++xi)
    for (int64_t ob = 0; ob < nop; ob += OT)
      for (int64_t cb = 0; cb < ncp; cb += CT) {
        T* out = dU + ((xi * nop + ob) * ncp + cb * OT) * L;
        vec acc[OT][CT];
        for (int i = 0; i < OT; ++i)
          for (int j = 0; j < CT; ++j) acc[i][j] = first ? vec{} : S::load(out + (i * CT + j) * L);
        const T* d0 = D + xi * dxi + ob * L;
        const T* v0 = V + xi * vxi + cb * L;
        for (int64_t k = 0; k < nk; ++k) {
          vec d[OT];
          for (int i = 0; i < OT; ++i) d[i] = S::load(d0 + k * dk + i * L);
#pragma GCC unroll 8
          for (int j = 0; j < CT; ++j) {
            const vec v = S::load(v0 + k * vk + j * L);
            for (int i = 0; i < OT; ++i) acc[i][j] += d[i] * v;
          }
        }
        for (int i = 0; i < OT; ++i)
          for (int j = 0; j < CT; ++j) S::store(out + (i * CT + j) * L, acc[i][j]);
      }
}

// The input gradient of channels [g0, c_begin + nc) (ng of them: the planted ones, or all)
// and the weight gradient of filters [0, no) on channels [c_begin, c_begin + nc). OB: input
// gradient channels per register tile of its products; OT x CT: the weight gradient's.
template <typename T, int OB, int OT, int CT>
void planted_grads_tiled(int64_t N, const Tiles& tl, int64_t O, int64_t no, const Planes<T>& x,
                         int64_t g0, int64_t c_begin, int64_t nc, const T* grad_out,
                         const T* weight, T* grad_x, T* grad_w, int nthreads) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  const int64_t ng = c_begin + nc - g0;
  const int64_t nop = round_up(no, OT), ncp = round_up(nc, CT), ngp = round_up(ng, OB);
  const int64_t groups = (N + L - 1) / L, OWp = 2 * tl.TW;
  // U[xi][o][c] of the forward's filters on the input gradient's channels (weight
  // [O][ng][3][3]), zero for padded channels.
  std::vector<T> U(16 * O * ngp, T(0));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < ng; ++c)
      filter_transform(weight + (o * ng + c) * 9, U.data() + o * ngp + c, O * ngp);
  const std::unique_ptr<T[]> partial(new T[groups * 16 * no * nc]);
  // Bands of tile rows as in weight_grad; D and V in chunks of K tiles (their stride per xi
  // one vector more than a multiple of 4 KB apart would be, so that one tile's 16 values do
  // not share an L1 set).
  const int64_t xrow = tl.Wp * L, grow = OWp * L;
  const int64_t row_bytes = 2 * (nc * xrow + O * grow) * sizeof(T);
  const int64_t band = std::min(tl.TH, std::max<int64_t>(1, (1 << 20) / row_bytes));
  const int64_t Od = std::max(round_up(O, OT), nop);  // D's filters per tile, zero padded
  const int64_t K = std::clamp<int64_t>((256 << 10) / (16 * (ncp + Od) * L * int64_t(sizeof(T))),
                                        8, 32);
  const int64_t vxi = (K * ncp + 1) * L, dxi = (K * Od + 1) * L;
  const Planes<T> dy(grad_out, O, tl.OH * tl.OW);
  const bool stream = N * ng * tl.H * tl.W * int64_t(sizeof(T)) > (4 << 20);
#pragma omp parallel num_threads(nthreads)
  {
    const auto xs = aligned_buffer<T>(nc * (2 * band + 2) * xrow),
               gs = aligned_buffer<T>(O * 2 * band * grow),
               gx = aligned_buffer<T>(ng * tl.Hp * tl.Wp * L),  // the group's padded dL/dx
               V = aligned_buffer<T>(16 * vxi, true), D = aligned_buffer<T>(16 * dxi, true),
               M = aligned_buffer<T>(ngp * 16 * L), dU = aligned_buffer<T>(16 * nop * ncp * L),
               sums = aligned_buffer<T>(16 * nop * ncp);
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < groups; ++grp) {
      std::fill(gx.get(), gx.get() + ng * tl.Hp * tl.Wp * L, T(0));
      bool first = true;
      for (int64_t ty0 = 0; ty0 < tl.TH; ty0 += band) {
        const int64_t ty1 = std::min(tl.TH, ty0 + band);
        const int64_t rows_x = 2 * (ty1 - ty0) + 2, rows_g = 2 * (ty1 - ty0);
        interleave(x, N, c_begin, nc, tl.H, tl.W, grp * L, tl.ph - 2 * ty0, tl.pw, rows_x, tl.Wp,
                   xs.get());
        interleave(dy, N, 0, O, tl.OH, tl.OW, grp * L, -2 * ty0, 0, rows_g, OWp, gs.get());
        const int64_t ntiles = (ty1 - ty0) * tl.TW;
        for (int64_t t0 = 0; t0 < ntiles; t0 += K) {
          const int64_t nk = std::min(K, ntiles - t0);
          for (int64_t k = 0; k < nk; ++k) {
            const int64_t ty = (t0 + k) / tl.TW, tx = (t0 + k) % tl.TW;
            for (int64_t o = 0; o < O; ++o) {
              vec d[16];
              grad_tile<T>(gs.get() + ((o * rows_g + 2 * ty) * OWp + 2 * tx) * L, grow, d);
              for (int xi = 0; xi < 16; ++xi)
                S::store(D.get() + xi * dxi + (k * Od + o) * L, d[xi]);
            }
            for (int64_t c = 0; c < nc; ++c) {
              vec v[16];
              input_tile<T>(xs.get() + ((c * rows_x + 2 * ty) * tl.Wp + 2 * tx) * L, xrow, v);
              for (int xi = 0; xi < 16; ++xi)
                S::store(V.get() + xi * vxi + (k * ncp + c) * L, v[xi]);
            }
            // Input gradient: M[c][xi] = sum_o U[xi][o][c] D[xi][o], then B M B^T added to
            // the input tile at padded rows 2 (ty0 + ty), columns 2 tx.
            for (int xi = 0; xi < 16; ++xi)
              multiply<T, OB>(D.get() + xi * dxi + k * Od * L, L, U.data() + xi * O * ngp, O, ngp,
                              M.get() + xi * L, 16 * L);
            for (int64_t c = 0; c < ng; ++c) {
              vec m[16], dd[16];
              for (int xi = 0; xi < 16; ++xi) m[xi] = S::load(M.get() + (c * 16 + xi) * L);
              input_tile_adjoint(m, dd);
              T* at = gx.get() + ((c * tl.Hp + 2 * (ty0 + ty)) * tl.Wp + 2 * tx) * L;
              for (int r = 0; r < 4; ++r)
                for (int s = 0; s < 4; ++s) {
                  T* p = at + (r * tl.Wp + s) * L;
                  S::store(p, S::load(p) + dd[4 * r + s]);
                }
            }
          }
          chunk_products<T, OT, CT>(V.get(), vxi, ncp * L, D.get(), dxi, Od * L, nk, ncp, nop,
                                    first, dU.get());
          first = false;
        }
      }
      // The input gradient is the padded buffer's interior.
      const T* interior = gx.get() + (tl.ph * tl.Wp + tl.pw) * L;
      if (stream)
        deinterleave<T, true>(interior, tl.Hp, tl.Wp, N, ng, tl.H, tl.W, grp * L, 0, tl.H, grad_x);
      else
        deinterleave<T, false>(interior, tl.Hp, tl.Wp, N, ng, tl.H, tl.W, grp * L, 0, tl.H, grad_x);
      group_sums<T, OT, CT>(dU.get(), no, nc, sums.get(), partial.get() + grp * 16 * no * nc);
    }
  }
  sum_groups(partial.get(), groups, no, nc, grad_w);
}

template <typename T, int OB>
void planted_grads_by_tile(int64_t N, const Tiles& tl, int64_t O, int64_t no, const Planes<T>& x,
                           int64_t g0, int64_t c_begin, int64_t nc, const T* grad_out,
                           const T* weight, T* grad_x, T* grad_w, int nthreads) {
  // The weight gradient's tile as in weight_grad: 4 by 6 where it pads fewer channels.
  if (round_up(nc, 4) < round_up(nc, 6))
    return planted_grads_tiled<T, OB, 4, 4>(N, tl, O, no, x, g0, c_begin, nc, grad_out, weight,
                                            grad_x, grad_w, nthreads);
  planted_grads_tiled<T, OB, 4, 6>(N, tl, O, no, x, g0, c_begin, nc, grad_out, weight, grad_x,
                                   grad_w, nthreads);
}

template <typename T>
bool planted_input_grads(int64_t N, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t O,
                         int64_t no, const Planes<T>& x, int64_t g0, int64_t c_begin,
                         int64_t c_end, const T* grad_out, const T* weight, T* grad_x,
                         T* grad_w, int nthreads) {
  const Tiles tl(H, W, ph, pw);
  const int64_t nc = c_end - c_begin, ng = c_end - g0;
  // Up to 8 weight-gradient channels (planting's planted inputs), and the input gradient's
  // whole padded map of a group in 2 MB: it is accumulated there, tiles overlapping.
  const bool fits = ng * tl.Hp * tl.Wp * Simd<T>::L * int64_t(sizeof(T)) <= (2 << 20);
  if (nc < 1 || nc > 8 || g0 > c_begin || !fits || no < 1 || N == 0 || tl.OH <= 0 || tl.OW <= 0)
    return false;
  const auto run = [&](auto ob) {
    planted_grads_by_tile<T, decltype(ob)::value>(N, tl, O, no, x, g0, c_begin, nc, grad_out,
                                                  weight, grad_x, grad_w, nthreads);
  };
  switch (pick_filters_per_tile(ng)) {
    case 4: run(std::integral_constant<int, 4>{}); break;
    case 8: run(std::integral_constant<int, 8>{}); break;
    case 12: run(std::integral_constant<int, 12>{}); break;
    case 16: run(std::integral_constant<int, 16>{}); break;
    case 20: run(std::integral_constant<int, 20>{}); break;
    default: run(std::integral_constant<int, 24>{}); break;
  }
  return true;
}

#define PLANTOPS_INSTANTIATE(T)                                                                 \
  template int64_t group_size<T>();                                                            \
  template void conv<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,         \
                        const Planes<T>&, const T*, const T*, T*, int);                        \
  template void weight_grad<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,           \
                               const Planes<T>&, const T*, int64_t, int64_t, int64_t, int64_t, \
                               T*, int);                                                \
  template bool planted_input_grads<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,  \
                                       int64_t, const Planes<T>&, int64_t, int64_t, int64_t,  \
                                       const T*, const T*, T*, T*, int);
PLANTOPS_INSTANTIATE(float)
PLANTOPS_INSTANTIATE(double)
#undef PLANTOPS_INSTANTIATE

}  // namespace plantops::cpu::winograd
