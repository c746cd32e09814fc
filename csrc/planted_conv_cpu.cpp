// CPU kernels of the planted convolution.
//
// Design: direct convolution, one sample per OpenMP task. Each sample's input is copied once
// into a zero-padded scratch plane (so the inner loops have no bounds checks) and the weight
// blocks are packed once per call into [O/B][C][KH][KW][B] (a few KB at planting's channel
// counts). The inner loop keeps a tile of outputs (a few pixels by B output channels, B one
// to three SIMD vectors) in registers across all input channels and taps: each input value
// is broadcast once and feeds B/lanes vector FMAs, whatever the map's width (8x8 maps waste
// nothing). Output channel counts that are not a multiple of the SIMD width waste lanes.
// The input gradient of a stride-1 convolution is itself a stride-1 convolution (of the
// output gradient, with the weight transposed and flipped), so it reuses the same engine;
// a strided one is one such convolution per phase of the input (strided_input_grad). Weight
// gradients are dot products over every sample, accumulated in V independent lanes (SIMD
// without reassociating a float sum).
//
// Fast for the channel counts planting works with (4 to 128) on 8x8 to 96x96 maps; not
// tuned for large channel counts, where oneDNN's blocked GEMM kernels win.
// 3x3 stride-1 layers (the search's) run as Winograd F(2x2, 3x3) or, wide ones, F(4x4, 3x3)
// instead (winograd_cpu.cpp): 2.25x or 4x fewer multiplications; see use_winograd and
// winograd_tile.
#include "planted_conv_cpu.h"

#include "simd.h"
#include "winograd_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace plantops::cpu {
namespace {

// Register tile, from the instruction set the module is compiled for.
#if defined(__AVX512F__)
constexpr int64_t kPixels = 8;    // output pixels per register tile
constexpr int kMaxVecs = 3;       // output-channel vectors per register tile
#else
constexpr int64_t kPixels = 4;
constexpr int kMaxVecs = 2;
#endif

// Output-channel vectors per register tile for a layer of `vecs` vectors of outputs. Every
// block of the layer computes a whole tile, so the tile wastes lanes where it does not divide
// the layer (64 channels in tiles of 3 vectors of 16 computed 96, a third for nothing; in tiles
// of 2, 64): of 2 to kMaxVecs vectors (one vector alone keeps too few sums in flight to fill
// the FMA units), the most that waste the fewest. Each output's sum runs in the same order
// whatever the tile.
int tile_vectors(int64_t vecs) {
  if (vecs <= 1) return 1;
  int best = 2;
  int64_t best_waste = round_up(vecs, 2) - vecs;
  for (int nv = 3; nv <= kMaxVecs; ++nv) {
    const int64_t waste = round_up(vecs, nv) - vecs;
    if (waste <= best_waste) best = nv, best_waste = waste;
  }
  return best;
}

// Weight of the assembled (virtual) weight at output channel o, input channel c: a pointer to
// its KH*KW taps inside whichever block holds it.
template <typename T>
struct BlockWeight {
  const Geometry& g;
  const T* w_frozen;
  const T* w_in;
  const T* w_out;
  const T* taps(int64_t o, int64_t c) const {
    const int64_t kk = g.KH * g.KW;
    if (o >= g.O_f) return w_out + ((o - g.O_f) * g.C() + c) * kk;
    if (c < g.I_f) return w_frozen + (o * g.I_f + c) * kk;
    return w_in + (o * g.I_p + (c - g.I_f)) * kk;
  }
};

// PLANTOPS_CPU_CONV: unset or "auto" (the rules below), "direct", "winograd" (either tile by
// winograd_tile's rule), "winograd-f2" or "winograd-f4" (that tile for every forward and
// input gradient). The tests check each; the benchmarks compare them.
std::string cpu_conv_choice() {
  const char* env = std::getenv("PLANTOPS_CPU_CONV");
  const std::string choice = env && *env ? env : "auto";
  if (choice != "auto" && choice != "direct" && choice != "winograd" && choice != "winograd-f2" &&
      choice != "winograd-f4")
    throw std::invalid_argument(
        "plantops: PLANTOPS_CPU_CONV must be auto, direct, winograd, winograd-f2 or winograd-f4, "
        "got '" + choice + "'");
  return choice;
}

// Whether the layer's convolutions (forward, input and weight gradients) run as Winograd
// (winograd_cpu.h) rather than directly; (ph, pw) is the padding of the one asked for. Auto:
// Winograd where it applies and the batch fills half a group of samples; it measured faster
// than the direct kernels at every channel count tried, 4 to 128 (benchmarks/RESULTS.md).
template <typename T>
bool use_winograd(const Geometry& g, int64_t ph, int64_t pw) {
  if (!winograd::applies(g.KH, g.KW, g.SH, g.SW, ph, pw)) return false;
  const std::string choice = cpu_conv_choice();
  if (choice == "direct") return false;
  if (choice != "auto") return true;
  return 2 * g.N >= winograd::group_size<T>();
}

// The assembled weight, dense: w[o][c][kh][kw] for o < O, c in [c_begin, c_end); with
// transpose_flip, w[c][o][KH-1-kh][KW-1-kw] (the weight of the input gradient's convolution).
template <typename T>
std::vector<T> dense_weight(const Geometry& g, const BlockWeight<T>& weight, int64_t c_begin,
                            int64_t c_end, bool transpose_flip) {
  const int64_t nc = c_end - c_begin, kk = g.KH * g.KW;
  std::vector<T> w(g.O() * nc * kk);
  for (int64_t o = 0; o < g.O(); ++o)
    for (int64_t c = 0; c < nc; ++c) {
      const T* taps = weight.taps(o, c_begin + c);
      for (int64_t k = 0; k < kk; ++k) {
        if (transpose_flip)
          w[(c * g.O() + o) * kk + (kk - 1 - k)] = taps[k];
        else
          w[(o * nc + c) * kk + k] = taps[k];
      }
    }
  return w;
}

// The layer's input x[N, C, H, W] as the kernels read it: with x_planted not null, x holds
// channels [0, I_f) and x_planted the planted ones (planes.h).
template <typename T>
Planes<T> input_planes(const Geometry& g, const T* x, const T* x_planted) {
  return Planes<T>(x, x_planted, g.C(), g.I_f, g.H * g.W);
}

// A dense convolution with packed weights, run sample by sample on zero-padded NCHW inputs.
// Vectorized over output channels: a register tile holds kPixels output pixels of one row by
// nv*L output channels; each step broadcasts one input value and does nv FMAs with it.
template <typename T>
struct DenseConv {
  using S = Simd<T>;
  using vec = typename S::vec;
  int64_t Cin, Cout, KH, KW, SH, SW, OH, OW;
  int64_t Hp, Wp;         // padded input plane (rows, columns incl. slack for the last tile)
  int64_t nv;             // output-channel vectors per tile
  int64_t block;          // output channels per tile = nv * L
  std::vector<T> wpack;   // [ceil(Cout/block)][Cin][KH][KW][block]
  std::vector<T> bias;    // [round_up(Cout, block)], zeros when there is no bias

  DenseConv(int64_t cin, int64_t cout, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
            int64_t oh, int64_t ow, int64_t padded_h, int64_t padded_w)
      : Cin(cin), Cout(cout), KH(kh), KW(kw), SH(sh), SW(sw), OH(oh), OW(ow), Hp(padded_h) {
    // The last pixel tile reads kPixels columns past its start: room so it stays in the row.
    Wp = std::max(padded_w, (round_up(OW, kPixels) - 1) * SW + KW);
    nv = tile_vectors((Cout + S::L - 1) / S::L);
    block = nv * S::L;
    wpack.assign(round_up(Cout, block) * Cin * KH * KW, T(0));
    bias.assign(round_up(Cout, block), T(0));
  }
  // Packs dense weights w[Cout][Cin][KH][KW] and bias[Cout] (null: none).
  void load(const T* w, const T* b) {
    const int64_t kk = KH * KW;
    for (int64_t o = 0; o < Cout; ++o)
      for (int64_t c = 0; c < Cin; ++c)
        for (int64_t k = 0; k < kk; ++k)
          wpack[(((o / block) * Cin + c) * kk + k) * block + o % block] = w[(o * Cin + c) * kk + k];
    for (int64_t o = 0; o < Cout && b; ++o) bias[o] = b[o];
  }

  // Copies sample n of in [N, Cin, H, W] into the padded scratch [Cin, Hp, Wp] at offset
  // (top, left).
  void pad(const Planes<T>& in, int64_t n, int64_t H, int64_t W, int64_t top, int64_t left,
           T* scratch) const {
    std::fill(scratch, scratch + Cin * Hp * Wp, T(0));
    for (int64_t c = 0; c < Cin; ++c) {
      const T* plane = in.plane(n, c);
      for (int64_t y = 0; y < H; ++y)
        std::memcpy(scratch + (c * Hp + y + top) * Wp + left, plane + y * W, W * sizeof(T));
    }
  }

  template <int NV>
  void run_tiles(const T* padded, T* out) const {
    constexpr int64_t L = S::L;
    const int64_t kk = KH * KW;
    for (int64_t ob = 0; ob < Cout; ob += NV * L) {
      const T* wblock = wpack.data() + (ob / (NV * L)) * Cin * kk * NV * L;
      for (int64_t oy = 0; oy < OH; ++oy) {
        for (int64_t ox = 0; ox < OW; ox += kPixels) {
          vec acc[kPixels][NV];
#pragma GCC unroll 8
          for (int64_t p = 0; p < kPixels; ++p)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[p][v] = S::load(bias.data() + ob + v * L);
          for (int64_t c = 0; c < Cin; ++c) {
            for (int64_t kh = 0; kh < KH; ++kh) {
              const T* row = padded + (c * Hp + oy * SH + kh) * Wp + ox * SW;
              const T* wrow = wblock + (c * kk + kh * KW) * NV * L;
              for (int64_t kw = 0; kw < KW; ++kw) {
                vec w[NV];
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) w[v] = S::load(wrow + (kw * NV + v) * L);
#pragma GCC unroll 8
                for (int64_t p = 0; p < kPixels; ++p) {
                  const T xs = row[kw + p * SW];
#pragma GCC unroll 4
                  for (int v = 0; v < NV; ++v) acc[p][v] += w[v] * xs;
                }
              }
            }
          }
          const int64_t np = std::min(kPixels, OW - ox);
          for (int v = 0; v < NV; ++v) {
            const int64_t nl = std::min(L, Cout - ob - v * L);
            for (int64_t l = 0; l < nl; ++l) {
              T* dst = out + (ob + v * L + l) * OH * OW + oy * OW + ox;
              for (int64_t p = 0; p < np; ++p) dst[p] = acc[p][v][l];
            }
          }
        }
      }
    }
  }

  // Sample n: in [N, Cin, H, W] -> out [Cout, OH, OW], zero padding (top, left) on the input.
  void sample(const Planes<T>& in, int64_t n, int64_t H, int64_t W, int64_t top, int64_t left,
              T* scratch, T* out) const {
    pad(in, n, H, W, top, left, scratch);
    if (nv == 1)
      run_tiles<1>(scratch, out);
    else if (nv == 2)
      run_tiles<2>(scratch, out);
    else
      run_tiles<kMaxVecs>(scratch, out);
  }

  // Every sample of a batch, in parallel.
  void batch(int64_t N, const Planes<T>& in, int64_t H, int64_t W, int64_t top, int64_t left,
             T* out, int nthreads, const Epilogue<T>& epilogue = {}) const {
#pragma omp parallel num_threads(nthreads)
    {
      std::vector<T> scratch(Cin * Hp * Wp);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        sample(in, n, H, W, top, left, scratch.data(), out + n * Cout * OH * OW);
        if (epilogue.any()) epilogue.apply(out, n * Cout * OH * OW, Cout * OH * OW);
      }
    }
  }
};

}  // namespace

// The output tile of a Winograd convolution of cin channels into cout filters (a forward, or
// an input gradient: the output gradient's channels into the input's): 4, F(4x4, 3x3), where
// both are 32 or more, else 2, F(2x2, 3x3). F(4x4, 3x3) makes 1.78x fewer multiplications and
// its transforms cost more per tile, which wide layers amortize: on a 2-core AMD EPYC (AVX2),
// batch 128, it took a 128-channel forward on 16x16 maps from 57 to 31-48 ms, on 8x8 maps from
// 16 to 11, a 64-channel one on 16x16 maps from 11 to 7. It rounds 3-26x more than PyTorch in
// float32 (winograd_cpu.h): where both tiles apply the auto choice trades that for speed.
int winograd_tile(int64_t cin, int64_t cout) {
  const std::string choice = cpu_conv_choice();
  if (choice == "winograd-f2") return 2;
  if (choice == "winograd-f4") return 4;
  return cin >= 32 && cout >= 32 ? 4 : 2;
}

// The whole weight [O][C][KH][KW] and bias [O] (zeros where there is none) of the blocks.
template <typename T>
void assembled(const Geometry& g, const T* w_frozen, const T* b_frozen, const T* w_in,
               const T* w_out, const T* b_out, std::vector<T>& w, std::vector<T>& b) {
  const BlockWeight<T> weight{g, w_frozen, w_in, w_out};
  w = dense_weight(g, weight, 0, g.C(), false);
  b.assign(g.O(), T(0));
  for (int64_t o = 0; o < g.O_f && b_frozen; ++o) b[o] = b_frozen[o];
  for (int64_t o = 0; o < g.O_p && b_out; ++o) b[g.O_f + o] = b_out[o];
}

template <typename T>
void forward(const Geometry& g, const T* x, const T* x_planted, const T* w_frozen,
             const T* b_frozen, const T* w_in, const T* w_out, const T* b_out, T* out,
             int nthreads, Epilogue<T> epilogue) {
  std::vector<T> w, b;
  assembled(g, w_frozen, b_frozen, w_in, w_out, b_out, w, b);
  const Planes<T> in = input_planes(g, x, x_planted);
  if (use_winograd<T>(g, g.PH, g.PW)) {
    winograd::conv(winograd_tile(g.C(), g.O()), g.N, g.C(), g.H, g.W, g.PH, g.PW, g.O(), in,
                   w.data(), b.data(), out, nthreads, epilogue);
    return;
  }
  DenseConv<T> conv(g.C(), g.O(), g.KH, g.KW, g.SH, g.SW, g.OH, g.OW, g.H + 2 * g.PH,
                    g.W + 2 * g.PW);
  conv.load(w.data(), b.data());
  conv.batch(g.N, in, g.H, g.W, g.PH, g.PW, out, nthreads, epilogue);
}

template <typename T>
bool forward_relu_pool(const Geometry& g, const T* x, const T* x_planted, const T* w_frozen,
                       const T* b_frozen, const T* w_in, const T* w_out, const T* b_out, T* out,
                       int nthreads) {
  if (!use_winograd<T>(g, g.PH, g.PW)) return false;
  std::vector<T> w, b;
  assembled(g, w_frozen, b_frozen, w_in, w_out, b_out, w, b);
  return winograd::conv_relu_pool(winograd_tile(g.C(), g.O()), g.N, g.C(), g.H, g.W, g.PH, g.PW,
                                  g.O(),
                                  input_planes(g, x, x_planted), w.data(), b.data(), out,
                                  nthreads);
}

// One dimension of a strided convolution's input gradient, split by phase: the inputs
// r, r + S, r + 2S, ... are read by the taps k0, k0 + S, ... only (k0 = (P + r) mod S), and
// input q of the phase by output q + e - j through tap k0 + j*S. So the phase's gradient is a
// stride-1 correlation of the output gradient, padded by J - 1 - e, with those taps flipped.
struct Phase {
  int64_t q = 0;    // inputs in the phase
  int64_t k0 = 0;   // its first tap
  int64_t j = 0;    // its taps
  int64_t pad = 0;  // the output gradient's padding before it
  Phase(int64_t size, int64_t k, int64_t s, int64_t p, int64_t r) {
    q = r < size ? (size - r + s - 1) / s : 0;
    k0 = (p + r) % s;
    j = k0 < k ? (k - k0 + s - 1) / s : 0;
    pad = j - 1 - (p + r - k0) / s;
  }
};

// The input gradient of a strided convolution as stride-1 convolutions, one per phase of the
// input (the direct engine, vectorised over the input's channels), instead of a scalar
// scatter: for a 3x3 stride-2 layer of 8 into 16 channels at 32x32, batch 128, 2.5-3.3 ms
// against the scatter's 9.3 (oneDNN NCHW 5.9-6.7) on a 2-core AMD EPYC (Zen 4). False where a
// phase would need a negative padding (a padding wider than the kernel), which the scatter
// loop then computes.
template <typename T>
bool strided_input_grad(const Geometry& g, const BlockWeight<T>& weight, const T* grad_out,
                        int64_t c_begin, int64_t c_end, T* grad_x, int nthreads) {
  const int64_t nc = c_end - c_begin;
  for (int64_t ry = 0; ry < g.SH; ++ry)
    for (int64_t rx = 0; rx < g.SW; ++rx) {
      const Phase py(g.H, g.KH, g.SH, g.PH, ry), px(g.W, g.KW, g.SW, g.PW, rx);
      if (py.q && px.q && py.j && px.j && (py.pad < 0 || px.pad < 0)) return false;
    }
  const Planes<T> dy(grad_out, g.O(), g.OH * g.OW);
  std::vector<T> part;
  for (int64_t ry = 0; ry < g.SH; ++ry)
    for (int64_t rx = 0; rx < g.SW; ++rx) {
      const Phase py(g.H, g.KH, g.SH, g.PH, ry), px(g.W, g.KW, g.SW, g.PW, rx);
      if (!py.q || !px.q) continue;
      const bool empty = !py.j || !px.j;  // no tap reads these inputs: their gradient is 0
      if (!empty) {
        std::vector<T> w(nc * g.O() * py.j * px.j);
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t o = 0; o < g.O(); ++o) {
            const T* taps = weight.taps(o, c_begin + c);
            for (int64_t ty = 0; ty < py.j; ++ty)
              for (int64_t tx = 0; tx < px.j; ++tx)
                w[((c * g.O() + o) * py.j + ty) * px.j + tx] =
                    taps[(py.k0 + (py.j - 1 - ty) * g.SH) * g.KW + px.k0 + (px.j - 1 - tx) * g.SW];
          }
        DenseConv<T> conv(g.O(), nc, py.j, px.j, 1, 1, py.q, px.q,
                          std::max(py.q + py.j - 1, py.pad + g.OH),
                          std::max(px.q + px.j - 1, px.pad + g.OW));
        conv.load(w.data(), nullptr);
        part.assign(g.N * nc * py.q * px.q, T(0));
        conv.batch(g.N, dy, g.OH, g.OW, py.pad, px.pad, part.data(), nthreads);
      }
#pragma omp parallel for schedule(static) num_threads(nthreads)
      for (int64_t nc_i = 0; nc_i < g.N * nc; ++nc_i) {
        T* gx = grad_x + nc_i * g.H * g.W;
        const T* src = empty ? nullptr : part.data() + nc_i * py.q * px.q;
        for (int64_t qy = 0; qy < py.q; ++qy)
          for (int64_t qx = 0; qx < px.q; ++qx)
            gx[(qy * g.SH + ry) * g.W + qx * g.SW + rx] = src ? src[qy * px.q + qx] : T(0);
      }
    }
  return true;
}

template <typename T>
void input_grad(const Geometry& g, const T* grad_out, const T* w_frozen, const T* w_in,
                const T* w_out, int64_t c_begin, int64_t c_end, T* grad_x, int nthreads) {
  const int64_t nc = c_end - c_begin;
  const BlockWeight<T> weight{g, w_frozen, w_in, w_out};
  if (g.SH == 1 && g.SW == 1 && g.PH <= g.KH - 1 && g.PW <= g.KW - 1) {
    // Stride 1: grad_x = conv(grad_out padded by K-1-P, weight transposed and flipped).
    const int64_t th = g.KH - 1 - g.PH, tw = g.KW - 1 - g.PW;
    const std::vector<T> w = dense_weight(g, weight, c_begin, c_end, true);
    const Planes<T> dy(grad_out, g.O(), g.OH * g.OW);
    if (use_winograd<T>(g, th, tw)) {
      winograd::conv(winograd_tile(g.O(), nc), g.N, g.O(), g.OH, g.OW, th, tw, nc, dy, w.data(),
                     (const T*)nullptr, grad_x, nthreads);
      return;
    }
    DenseConv<T> conv(g.O(), nc, g.KH, g.KW, 1, 1, g.H, g.W, g.OH + 2 * th, g.OW + 2 * tw);
    conv.load(w.data(), nullptr);
    conv.batch(g.N, dy, g.OH, g.OW, th, tw, grad_x, nthreads);
    return;
  }
  if (strided_input_grad(g, weight, grad_out, c_begin, c_end, grad_x, nthreads)) return;
  // Any other: scatter each output gradient back onto the inputs it read.
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t n = 0; n < g.N; ++n) {
    T* gx = grad_x + n * nc * g.H * g.W;
    std::fill(gx, gx + nc * g.H * g.W, T(0));
    for (int64_t o = 0; o < g.O(); ++o) {
      const T* go = grad_out + (n * g.O() + o) * g.OH * g.OW;
      for (int64_t c = 0; c < nc; ++c) {
        const T* taps = weight.taps(o, c_begin + c);
        T* gxc = gx + c * g.H * g.W;
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const T w = taps[kh * g.KW + kw];
            for (int64_t oy = 0; oy < g.OH; ++oy) {
              const int64_t iy = oy * g.SH + kh - g.PH;
              if (iy < 0 || iy >= g.H) continue;
              for (int64_t ox = 0; ox < g.OW; ++ox) {
                const int64_t ix = ox * g.SW + kw - g.PW;
                if (ix >= 0 && ix < g.W) gxc[iy * g.W + ix] += w * go[oy * g.OW + ox];
              }
            }
          }
      }
    }
  }
}

// grad_b[o - o_begin] = sum of grad_out over samples and pixels, for o in [o_begin, o_end):
// SIMD lanes over chunks of 16 vectors, each chunk's sum added in double, in a fixed order
// (so independent of the thread count). A float sum in lanes over a whole plane erred by
// 5e-6 of the result at 33x33 with 8 lanes (AVX2), more than twice torch's pairwise sum.
// Both algorithms' weight gradients use it.
template <typename T>
void bias_grad(const Geometry& g, const T* grad_out, int64_t o_begin, int64_t o_end, T* grad_b) {
  using S = Simd<T>;
  constexpr int64_t L = S::L, kChunk = 16 * L;
  const int64_t hw = g.OH * g.OW;
  for (int64_t o = o_begin; o < o_end; ++o) {
    double sum = 0;
    for (int64_t n = 0; n < g.N; ++n) {
      const T* go = grad_out + (n * g.O() + o) * hw;
      for (int64_t start = 0; start < hw; start += kChunk) {
        const int64_t stop = std::min(hw, start + kChunk);
        typename S::vec lanes = {};
        int64_t i = start;
        for (; i + L <= stop; i += L) lanes += S::load(go + i);
        T s = S::sum(lanes);
        for (; i < stop; ++i) s += go[i];
        sum += s;
      }
    }
    grad_b[o - o_begin] = static_cast<T>(sum);
  }
}

template <typename T>
void weight_grad(const Geometry& g, const T* grad_out, const T* x, const T* x_planted,
                 int64_t o_begin, int64_t o_end, int64_t c_begin, int64_t c_end, T* grad_w,
                 T* grad_b, int nthreads) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::L;
  constexpr int64_t OT = 4;  // filters per register tile: one input load feeds OT FMAs
  const int64_t no = o_end - o_begin, nc = c_end - c_begin, kk = g.KH * g.KW;
  const int64_t block = no * nc * kk;
  if (no == 0) return;
  if (grad_b) bias_grad(g, grad_out, o_begin, o_end, grad_b);
  const Planes<T> in = input_planes(g, x, x_planted);
  if (use_winograd<T>(g, g.PH, g.PW)) {
    winograd::weight_grad(g.N, g.H, g.W, g.PH, g.PW, g.O(), in, grad_out, o_begin, o_end,
                          c_begin, c_end, grad_w, nthreads);
    return;
  }
  // Fixed chunking keeps the summation order, and so the result, independent of nthreads.
  const int64_t nchunks = std::min<int64_t>(g.N, 32);
  std::vector<T> partial(std::max<int64_t>(nchunks, 1) * block, T(0));
  const int64_t Owp = round_up(g.OW, L);                    // gradient row with a zero tail
  const int64_t Hp = g.H + 2 * g.PH;
  const int64_t Wp = std::max(g.W + 2 * g.PW, (Owp - 1) * g.SW + g.KW);
  const int64_t nop = round_up(no, OT);                     // zero filters pad the last tile
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> xpad(nc * Hp * Wp, T(0)), gpad(nop * g.OH * Owp, T(0));
    std::vector<T> xrow_s(g.SW == 1 ? 0 : Owp);             // strided row, gathered
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < nchunks; ++chunk) {
      T* acc = partial.data() + chunk * block;
      for (int64_t n = chunk * g.N / nchunks; n < (chunk + 1) * g.N / nchunks; ++n) {
        for (int64_t c = 0; c < nc; ++c) {
          const T* plane = in.plane(n, c_begin + c);
          for (int64_t y = 0; y < g.H; ++y)
            std::memcpy(xpad.data() + (c * Hp + y + g.PH) * Wp + g.PW, plane + y * g.W,
                        g.W * sizeof(T));
        }
        for (int64_t o = 0; o < no; ++o)
          for (int64_t y = 0; y < g.OH; ++y)
            std::memcpy(gpad.data() + (o * g.OH + y) * Owp,
                        grad_out + ((n * g.O() + o_begin + o) * g.OH + y) * g.OW,
                        g.OW * sizeof(T));
        for (int64_t ot = 0; ot < nop; ot += OT) {
          const T* gt = gpad.data() + ot * g.OH * Owp;
          for (int64_t c = 0; c < nc; ++c)
            for (int64_t kh = 0; kh < g.KH; ++kh)
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                vec lanes[OT] = {};
                for (int64_t oy = 0; oy < g.OH; ++oy) {
                  const T* xrow = xpad.data() + (c * Hp + oy * g.SH + kh) * Wp + kw;
                  if (g.SW != 1) {
                    for (int64_t ox = 0; ox < Owp; ++ox) xrow_s[ox] = xrow[ox * g.SW];
                    xrow = xrow_s.data();
                  }
                  const T* grow = gt + oy * Owp;
                  for (int64_t ox = 0; ox < Owp; ox += L) {
                    const vec xv = S::load(xrow + ox);
#pragma GCC unroll 4
                    for (int64_t t = 0; t < OT; ++t)
                      lanes[t] += S::load(grow + t * g.OH * Owp + ox) * xv;
                  }
                }
                for (int64_t t = 0; t < OT && ot + t < no; ++t) {
                  acc[((ot + t) * nc + c) * kk + kh * g.KW + kw] += S::sum(lanes[t]);
                }
              }
        }
      }
    }
  }
  for (int64_t i = 0; i < block; ++i) grad_w[i] = T(0);
  for (int64_t chunk = 0; chunk < nchunks; ++chunk) {
    const T* acc = partial.data() + chunk * block;
    for (int64_t i = 0; i < block; ++i) grad_w[i] += acc[i];
  }
}

template <typename T>
bool planted_input_grads(const Geometry& g, const T* grad_out, const T* x, const T* x_planted,
                         const T* w_frozen, const T* w_in, const T* w_out, int64_t x_begin,
                         T* grad_x, T* grad_in, int nthreads) {
  if (g.N == 0 || g.I_p == 0 || g.O_f == 0 || x_begin > g.I_f ||
      !use_winograd<T>(g, g.PH, g.PW))
    return false;
  const BlockWeight<T> weight{g, w_frozen, w_in, w_out};
  const std::vector<T> w = dense_weight(g, weight, x_begin, g.C(), false);
  const Planes<T> in = input_planes(g, x, x_planted);
  return winograd::planted_input_grads(g.N, g.H, g.W, g.PH, g.PW, g.O(), g.O_f, in, x_begin,
                                       g.I_f, g.C(), grad_out, w.data(), grad_x, grad_in,
                                       nthreads);
}

#define PLANTOPS_INSTANTIATE(T)                                                              \
  template bool forward_relu_pool<T>(const Geometry&, const T*, const T*, const T*, const T*,  \
                                     const T*, const T*, const T*, T*, int);                   \
  template void forward<T>(const Geometry&, const T*, const T*, const T*, const T*, const T*,  \
                           const T*, const T*, T*, int, Epilogue<T>);                         \
  template void input_grad<T>(const Geometry&, const T*, const T*, const T*, const T*, int64_t, \
                              int64_t, T*, int);                                              \
  template void weight_grad<T>(const Geometry&, const T*, const T*, const T*, int64_t, int64_t, \
                               int64_t, int64_t, T*, T*, int);                                \
  template bool planted_input_grads<T>(const Geometry&, const T*, const T*, const T*, const T*, \
                                       const T*, const T*, int64_t, T*, T*, int);
PLANTOPS_INSTANTIATE(float)
PLANTOPS_INSTANTIATE(double)
#undef PLANTOPS_INSTANTIATE

}  // namespace plantops::cpu
