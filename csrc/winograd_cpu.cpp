// Winograd F(2x2, 3x3) convolution and weight gradient (see winograd_cpu.h; the layout and the
// building blocks are in winograd_parts.h).
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
#include <vector>

#include "winograd_parts.h"

namespace plantops::cpu::winograd {
namespace {

// Pool: each output tile is a 2x2 max-pool window (OH, OW even; tiles start at output (0, 0)),
// so the tile's 4 outputs are reduced to max(0, their maximum) before they are stored: out is
// [N, Cout, OH/2, OW/2], a quarter of the stores, and no pass of its own for the pool.
template <typename T, int OB, bool Pool>
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
  const int64_t groups = (N + L - 1) / L;
  // Per tile row: 2 rows of output (of 2 TW pixels each), or 1 of TW pooled pixels.
  const int64_t OWp = Pool ? tl.TW : 2 * tl.TW, rows_per_tile = Pool ? 1 : 2;
  const int64_t OHo = Pool ? tl.OH / 2 : tl.OH, OWo = Pool ? tl.OW / 2 : tl.OW;
  const int64_t row_bytes = (2 * Cin * tl.Wp + rows_per_tile * Cout * OWp) * L * sizeof(T);
  const int64_t band = std::min(tl.TH, std::max<int64_t>((1 << 20) / row_bytes, 4));
  const int64_t band_in = 2 * band + 2, band_out = rows_per_tile * band;  // rows of xs and ys
  const bool stream = N * Cout * OHo * OWo * int64_t(sizeof(T)) > (4 << 20);
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
              if constexpr (Pool) {
                // max(y + b) = max(y) + b exactly (adding b rounds monotonically).
                vec top = y[0][0] > y[0][1] ? y[0][0] : y[0][1];
                vec bottom = y[1][0] > y[1][1] ? y[1][0] : y[1][1];
                vec v = (top > bottom ? top : bottom) + b[o];
                v = v > vec{} ? v : vec{};
                S::store(ys.get() + ((o * band_out + (ty - ty0)) * OWp + tx) * L, v);
              } else {
                T* dst = ys.get() + ((o * band_out + 2 * (ty - ty0)) * OWp + 2 * tx) * L;
                for (int a = 0; a < 2; ++a)
                  for (int bb = 0; bb < 2; ++bb)
                    S::store(dst + (a * OWp + bb) * L, y[a][bb] + b[o]);
              }
            }
          }
        const int64_t y0 = rows_per_tile * ty0;
        const int64_t ny = std::min(OHo, rows_per_tile * ty1) - y0;
        if (stream)
          deinterleave<T, true>(ys.get(), band_out, OWp, N, Cout, OHo, OWo, grp * L, y0, ny,
                                out);
        else
          deinterleave<T, false>(ys.get(), band_out, OWp, N, Cout, OHo, OWo, grp * L, y0, ny,
                                 out);
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

template <typename T, bool Pool>
void conv_by_tile(int64_t N, int64_t Cin, const Tiles& tl, int64_t Cout, const Planes<T>& x,
                  const T* weight, const T* bias, T* out, int nthreads) {
  switch (pick_filters_per_tile(Cout)) {
    case 4:
      return conv_groups<T, 4, Pool>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 8:
      return conv_groups<T, 8, Pool>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 12:
      return conv_groups<T, 12, Pool>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 16:
      return conv_groups<T, 16, Pool>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    case 20:
      return conv_groups<T, 20, Pool>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
    default:
      return conv_groups<T, 24, Pool>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
  }
}

template <typename T>
void conv(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t Cout,
          const Planes<T>& x, const T* weight, const T* bias, T* out, int nthreads) {
  const Tiles tl(H, W, ph, pw);
  if (N == 0 || Cout == 0 || tl.OH <= 0 || tl.OW <= 0) return;
  conv_by_tile<T, false>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
}

template <typename T>
bool conv_relu_pool(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw,
                    int64_t Cout, const Planes<T>& x, const T* weight, const T* bias, T* out,
                    int nthreads) {
  const Tiles tl(H, W, ph, pw);
  if (tl.OH < 2 || tl.OW < 2 || tl.OH % 2 || tl.OW % 2) return false;
  if (N > 0 && Cout > 0)
    conv_by_tile<T, true>(N, Cin, tl, Cout, x, weight, bias, out, nthreads);
  return true;
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

#define PLANTOPS_INSTANTIATE(T)                                                                 \
  template int64_t group_size<T>();                                                            \
  template void conv<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,         \
                        const Planes<T>&, const T*, const T*, T*, int);                        \
  template bool conv_relu_pool<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                  int64_t, const Planes<T>&, const T*, const T*, T*, int);     \
  template void weight_grad<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,           \
                               const Planes<T>&, const T*, int64_t, int64_t, int64_t, int64_t, \
                               T*, int);
PLANTOPS_INSTANTIATE(float)
PLANTOPS_INSTANTIATE(double)
#undef PLANTOPS_INSTANTIATE


}  // namespace plantops::cpu::winograd
