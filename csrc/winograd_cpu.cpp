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

#include "winograd_f4.h"
#include "winograd_parts.h"

namespace plantops::cpu::winograd {
namespace {

// F is the tile policy (F2 in winograd_parts.h, F4 in winograd_f4.h): m x m output tiles
// from a x a input tiles, X = a^2 transformed values each.
// Pool: the tile's outputs are 2x2 max-pool windows (OH, OW even; tiles start at output
// (0, 0)), each reduced to max(0, its maximum) before it is stored: out is
// [N, Cout, OH/2, OW/2], a quarter of the stores, and no pass of its own for the pool.
// The epilogue on the outputs of samples [n0, n0 + L) and rows [y0, y0 + ny) of out[N, C, OH,
// OW], just written: a band, still in L2.
template <typename T>
void finish(const Epilogue<T>& epilogue, int64_t N, int64_t C, int64_t OH, int64_t OW,
            int64_t n0, int64_t y0, int64_t ny, T* out) {
  for (int64_t n = n0; n < std::min(N, n0 + Simd<T>::L); ++n)
    for (int64_t c = 0; c < C; ++c) epilogue.apply(out, ((n * C + c) * OH + y0) * OW, ny * OW);
}

template <typename T, int OB, bool Pool, typename F>
void conv_groups(int64_t N, int64_t Cin, const Tiles& tl, int64_t Cout, const Planes<T>& x,
                 const T* weight, const T* bias, T* out, int nthreads,
                 const Epilogue<T>& epilogue) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  constexpr int m = F::m, X = F::X, p = Pool ? m / 2 : m;  // p x p stored outputs per tile
  const int64_t Opad = round_up(Cout, OB);
  // U[xi][c][o], zero for the padded filters.
  std::vector<T> U(X * Cin * Opad, T(0));
  for (int64_t o = 0; o < Cout; ++o)
    for (int64_t c = 0; c < Cin; ++c)
      F::filter(weight + (o * Cin + c) * 9, U.data() + c * Opad + o, Cin * Opad);
  std::vector<T> b(Cout, T(0));
  for (int64_t o = 0; o < Cout && bias; ++o) b[o] = bias[o];
  // A group is computed in bands of tile rows whose interleaved input and output stay in L2
  // (1 MB together; at least 4 tile rows, since each band interleaves 2 input rows twice): a
  // whole group of 16 samples of 32 channels on 32x32 maps is 2.4 MB each way, and on
  // STL-10's 96x96 maps tens of MB per thread.
  const int64_t groups = (N + L - 1) / L;
  // Per tile row: p rows of p TW stored pixels.
  const int64_t OWp = p * tl.TW;
  const int64_t OHo = Pool ? tl.OH / 2 : tl.OH, OWo = Pool ? tl.OW / 2 : tl.OW;
  const int64_t row_bytes = (m * Cin * tl.Wp + p * Cout * OWp) * L * sizeof(T);
  const int64_t band = std::min(tl.TH, std::max<int64_t>((1 << 20) / row_bytes, 4));
  const int64_t band_in = m * band + 2, band_out = p * band;  // rows of xs and ys
  // (Not with an epilogue, which reads the band back.)
  const bool stream = N * Cout * OHo * OWo * int64_t(sizeof(T)) > (4 << 20) && !epilogue.any();
#pragma omp parallel num_threads(nthreads)
  {
    // One tile's transformed values, V[c][xi] and M[o][xi]: a transform touches X adjacent
    // vectors. Every element is written before it is read, so none is zeroed first (zeroing
    // them took 3% of a forward+backward at 16 channels).
    const auto xs = aligned_buffer<T>(Cin * band_in * tl.Wp * L),
               V = aligned_buffer<T>(Cin * X * L), M = aligned_buffer<T>(Opad * X * L),
               ys = aligned_buffer<T>(Cout * band_out * OWp * L);
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < groups; ++grp)
      for (int64_t ty0 = 0; ty0 < tl.TH; ty0 += band) {
        const int64_t ty1 = std::min(tl.TH, ty0 + band), rows_in = m * (ty1 - ty0) + 2;
        // Padded input rows m ty0 to m ty1 + 2: row y of xs is input row y + m ty0 - ph.
        interleave(x, N, 0, Cin, tl.H, tl.W, grp * L, tl.ph - m * ty0, tl.pw, rows_in,
                   tl.Wp, xs.get());
        for (int64_t ty = ty0; ty < ty1; ++ty)
          for (int64_t tx = 0; tx < tl.TW; ++tx) {
            for (int64_t c = 0; c < Cin; ++c) {
              vec v[X];
              F::template input<T>(
                  xs.get() + ((c * rows_in + m * (ty - ty0)) * tl.Wp + m * tx) * L, tl.Wp * L, v);
              for (int xi = 0; xi < X; ++xi) S::store(V.get() + (c * X + xi) * L, v[xi]);
            }
            for (int xi = 0; xi < X; ++xi)
              multiply<T, OB>(V.get() + xi * L, X * L, U.data() + xi * Cin * Opad, Cin, Opad,
                              M.get() + xi * L, X * L);
            for (int64_t o = 0; o < Cout; ++o) {
              vec mm[X], y[m][m];
              for (int xi = 0; xi < X; ++xi) mm[xi] = S::load(M.get() + (o * X + xi) * L);
              F::output(mm, y);
              T* dst = ys.get() + ((o * band_out + p * (ty - ty0)) * OWp + p * tx) * L;
              for (int a = 0; a < p; ++a)
                for (int bb = 0; bb < p; ++bb) {
                  if constexpr (Pool) {
                    // max(y + b) = max(y) + b exactly (adding b rounds monotonically).
                    const vec top = y[2 * a][2 * bb] > y[2 * a][2 * bb + 1] ? y[2 * a][2 * bb]
                                                                            : y[2 * a][2 * bb + 1];
                    const vec bottom = y[2 * a + 1][2 * bb] > y[2 * a + 1][2 * bb + 1]
                                           ? y[2 * a + 1][2 * bb]
                                           : y[2 * a + 1][2 * bb + 1];
                    vec v = (top > bottom ? top : bottom) + b[o];
                    v = v > vec{} ? v : vec{};
                    S::store(dst + (a * OWp + bb) * L, v);
                  } else {
                    S::store(dst + (a * OWp + bb) * L, y[a][bb] + b[o]);
                  }
                }
            }
          }
        const int64_t y0 = p * ty0;
        const int64_t ny = std::min(OHo, p * ty1) - y0;
        if (stream)
          deinterleave<T, true>(ys.get(), band_out, OWp, N, Cout, OHo, OWo, grp * L, y0, ny,
                                out);
        else
          deinterleave<T, false>(ys.get(), band_out, OWp, N, Cout, OHo, OWo, grp * L, y0, ny,
                                 out);
        if (epilogue.any()) finish(epilogue, N, Cout, OHo, OWo, grp * L, y0, ny, out);
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

template <typename T, bool Pool, typename F>
void conv_with(int64_t N, int64_t Cin, const Tiles& tl, int64_t Cout, const Planes<T>& x,
               const T* weight, const T* bias, T* out, int nthreads,
               const Epilogue<T>& epilogue) {
  switch (pick_filters_per_tile(Cout)) {
    case 4:
      return conv_groups<T, 4, Pool, F>(N, Cin, tl, Cout, x, weight, bias, out, nthreads,
                                                 epilogue);
    case 8:
      return conv_groups<T, 8, Pool, F>(N, Cin, tl, Cout, x, weight, bias, out, nthreads,
                                                 epilogue);
    case 12:
      return conv_groups<T, 12, Pool, F>(N, Cin, tl, Cout, x, weight, bias, out, nthreads,
                                                 epilogue);
    case 16:
      return conv_groups<T, 16, Pool, F>(N, Cin, tl, Cout, x, weight, bias, out, nthreads,
                                                 epilogue);
    case 20:
      return conv_groups<T, 20, Pool, F>(N, Cin, tl, Cout, x, weight, bias, out, nthreads,
                                                 epilogue);
    default:
      return conv_groups<T, 24, Pool, F>(N, Cin, tl, Cout, x, weight, bias, out, nthreads,
                                                 epilogue);
  }
}

template <typename T, bool Pool>
void conv_by_tile(int tile, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph,
                  int64_t pw, int64_t Cout, const Planes<T>& x, const T* weight, const T* bias,
                  T* out, int nthreads, const Epilogue<T>& epilogue = {}) {
  if (tile == 4)
    return conv_with<T, Pool, F4>(N, Cin, Tiles(H, W, ph, pw, F4::m), Cout, x, weight, bias,
                                  out, nthreads, epilogue);
  conv_with<T, Pool, F2>(N, Cin, Tiles(H, W, ph, pw, F2::m), Cout, x, weight, bias, out,
                         nthreads, epilogue);
}

template <typename T>
void conv(int tile, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t Cout,
          const Planes<T>& x, const T* weight, const T* bias, T* out, int nthreads,
          Epilogue<T> epilogue) {
  const Tiles tl(H, W, ph, pw);
  if (N == 0 || Cout == 0 || tl.OH <= 0 || tl.OW <= 0) return;
  conv_by_tile<T, false>(tile, N, Cin, H, W, ph, pw, Cout, x, weight, bias, out, nthreads,
                         epilogue);
}

template <typename T>
bool conv_relu_pool(int tile, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t ph, int64_t pw,
                    int64_t Cout, const Planes<T>& x, const T* weight, const T* bias, T* out,
                    int nthreads) {
  const Tiles tl(H, W, ph, pw);
  if (tl.OH < 2 || tl.OW < 2 || tl.OH % 2 || tl.OW % 2) return false;
  if (N > 0 && Cout > 0)
    conv_by_tile<T, true>(tile, N, Cin, H, W, ph, pw, Cout, x, weight, bias, out, nthreads);
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

// Register blocks of the stored weight gradient: OR filters by CR channels of sums, plus OR
// gradient values and one input value in flight (16 vector registers with AVX2, 32 with
// AVX-512).
#if defined(__AVX512F__)
constexpr int kStoredOR = 6, kStoredCR = 4;
#else
constexpr int kStoredOR = 3, kStoredCR = 4;
#endif

// weight_grad with the transformed tiles stored, for layers with many filters and channels:
// weight_grad_tiled computes each transformed value where it is used, which repeats each
// input transform for every block of filters and each gradient transform for every block of
// channels (32 times each at 128 of both: the weight gradient took 3-5x the forward). Here,
// per band of tiles, every transform is computed once, V[xi][t][c] = (B^T d B)[xi] and
// D[xi][t][o] = (A dY A^T)[xi] (vectors of L samples), then for each xi a product over the
// band's tiles, dU[xi][o][c] += sum_t D[xi][t][o] V[xi][t][c], in register blocks of OR by CR
// that load OR + CR vectors per OR CR FMAs, and dL/dg = G^T dU G. Samples are summed in fixed
// groups in a fixed order: the result does not depend on nthreads.
template <typename T>
void weight_grad_stored(int64_t N, const Tiles& tl, int64_t O, const Planes<T>& x,
                        const T* grad_out, int64_t o_begin, int64_t o_end, int64_t c_begin,
                        int64_t c_end, T* grad_w, int nthreads) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  constexpr int OR = kStoredOR, CR = kStoredCR, m = F2::m, X = F2::X;
  const int64_t no = o_end - o_begin, nc = c_end - c_begin;
  const int64_t nop = round_up(no, OR), ncp = round_up(nc, CR);
  const int64_t groups = (N + L - 1) / L, OWp = m * tl.TW;
  const Planes<T> dy(grad_out, O, tl.OH * tl.OW);
  // Per group, dL/dU[o][c][xi] summed over its samples.
  const std::unique_ptr<T[]> partial(new T[groups * X * no * nc]);
  // Tile rows per band: the stored transforms of a band within about 1 MB.
  const int64_t tile_bytes = X * (ncp + nop) * L * sizeof(T);
  const int64_t band = std::clamp<int64_t>((1 << 20) / (tile_bytes * tl.TW), 1, tl.TH);
  const int64_t band_tiles = band * tl.TW;
#pragma omp parallel num_threads(nthreads)
  {
    const auto xs = aligned_buffer<T>(nc * (m * band + 2) * tl.Wp * L),
               gs = aligned_buffer<T>(no * m * band * OWp * L);
    // Padded channels and filters hold zeros, written once: the transforms never write them.
    const auto V = aligned_buffer<T>(X * band_tiles * ncp * L, ncp > nc),
               D = aligned_buffer<T>(X * band_tiles * nop * L, nop > no);
    const auto dU = aligned_buffer<T>(X * nop * ncp * L);  // [xi][o][c] vectors
    const auto sums = aligned_buffer<T>(X * nop * ncp);
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < groups; ++grp) {
      for (int64_t ty0 = 0; ty0 < tl.TH; ty0 += band) {
        const int64_t ty1 = std::min(tl.TH, ty0 + band), nt = (ty1 - ty0) * tl.TW;
        const int64_t rows_x = m * (ty1 - ty0) + 2, rows_g = m * (ty1 - ty0);
        interleave(x, N, c_begin, nc, tl.H, tl.W, grp * L, tl.ph - m * ty0, tl.pw, rows_x,
                   tl.Wp, xs.get());
        interleave(dy, N, o_begin, no, tl.OH, tl.OW, grp * L, -m * ty0, 0, rows_g, OWp,
                   gs.get());
        // The stored values of tile t and xi at ((xi * band_tiles + t) * ncp + c) * L: one
        // xi's products then read nt consecutive rows of channels and filters.
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t ty = t / tl.TW, tx = t % tl.TW;
          for (int64_t c = 0; c < nc; ++c) {
            vec v[X];
            input_tile<T>(xs.get() + ((c * rows_x + m * ty) * tl.Wp + m * tx) * L, tl.Wp * L, v);
            for (int xi = 0; xi < X; ++xi)
              S::store(V.get() + ((xi * band_tiles + t) * ncp + c) * L, v[xi]);
          }
          for (int64_t o = 0; o < no; ++o) {
            vec d[X];
            grad_tile<T>(gs.get() + ((o * rows_g + m * ty) * OWp + m * tx) * L, OWp * L, d);
            for (int xi = 0; xi < X; ++xi)
              S::store(D.get() + ((xi * band_tiles + t) * nop + o) * L, d[xi]);
          }
        }
        for (int xi = 0; xi < X; ++xi) {
          const T* Vx = V.get() + xi * band_tiles * ncp * L;
          const T* Dx = D.get() + xi * band_tiles * nop * L;
          for (int64_t ob = 0; ob < nop; ob += OR)
            for (int64_t cb = 0; cb < ncp; cb += CR) {
              T* out = dU.get() + ((xi * nop + ob) * ncp + cb) * L;
              vec acc[OR][CR];
              for (int i = 0; i < OR; ++i)
                for (int j = 0; j < CR; ++j)
                  acc[i][j] = ty0 == 0 ? vec{} : S::load(out + (i * ncp + j) * L);
              for (int64_t t = 0; t < nt; ++t) {
                const T* dt = Dx + (t * nop + ob) * L;
                const T* vt = Vx + (t * ncp + cb) * L;
                vec d[OR];
                for (int i = 0; i < OR; ++i) d[i] = S::load(dt + i * L);
#pragma GCC unroll 8
                for (int j = 0; j < CR; ++j) {
                  const vec v = S::load(vt + j * L);
                  for (int i = 0; i < OR; ++i) acc[i][j] += d[i] * v;
                }
              }
              for (int i = 0; i < OR; ++i)
                for (int j = 0; j < CR; ++j) S::store(out + (i * ncp + j) * L, acc[i][j]);
            }
        }
      }
      lane_sums(dU.get(), X * nop * ncp, sums.get());
      T* p = partial.get() + grp * X * no * nc;
      for (int xi = 0; xi < X; ++xi)
        for (int64_t o = 0; o < no; ++o)
          for (int64_t c = 0; c < nc; ++c)
            p[(o * nc + c) * X + xi] = sums.get()[(xi * nop + o) * ncp + c];
    }
  }
  sum_groups(partial.get(), groups, no, nc, grad_w);
}

// Whether weight_grad stores the transformed tiles (weight_grad_stored) or computes them where
// they are used (weight_grad_tiled). Measured on a 2-core AMD EPYC (AVX2), batch 128,
// tiled / stored time: 0.66-0.69 at 8 by 8, 0.94-1.06 at 16 by 16, 1.24-1.42 at 32 by 32,
// 1.44 at 64 by 64, 1.08-1.30 at 16 by 64 either way, 0.57-0.99 with 4 or 8 on one side
// (the planted slices), and 2.3-3.6 at 128 by 128.
bool stored_weight_grad(int64_t no, int64_t nc) { return no >= 16 && nc >= 16 && no + nc > 32; }

template <typename T>
void weight_grad(int64_t N, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t O,
                 const Planes<T>& x, const T* grad_out, int64_t o_begin, int64_t o_end,
                 int64_t c_begin, int64_t c_end, T* grad_w, int nthreads) {
  const Tiles tl(H, W, ph, pw);
  const int64_t no = o_end - o_begin, nc = c_end - c_begin;
  std::fill(grad_w, grad_w + no * nc * 9, T(0));
  if (N == 0 || no == 0 || nc == 0 || tl.OH <= 0 || tl.OW <= 0) return;
  if (stored_weight_grad(no, nc))
    return weight_grad_stored<T>(N, tl, O, x, grad_out, o_begin, o_end, c_begin, c_end, grad_w,
                                 nthreads);
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
  template void conv<T>(int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,         \
                        const Planes<T>&, const T*, const T*, T*, int, Epilogue<T>);           \
  template bool conv_relu_pool<T>(int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                  int64_t, const Planes<T>&, const T*, const T*, T*, int);     \
  template void weight_grad<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,           \
                               const Planes<T>&, const T*, int64_t, int64_t, int64_t, int64_t, \
                               T*, int);
PLANTOPS_INSTANTIATE(float)
PLANTOPS_INSTANTIATE(double)
#undef PLANTOPS_INSTANTIATE


}  // namespace plantops::cpu::winograd
