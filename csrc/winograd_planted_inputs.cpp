// Winograd F(2x2, 3x3): the backward of a layer for its planted input channels
// (winograd::planted_input_grads in winograd_cpu.h), the input gradient and the gradient of the
// frozen filters' weights on the planted channels together. Both read every channel of the
// output gradient dY through the same transform, D = A dY A^T per 2x2 tile (the gradient of
// the tile's M, since Y = A^T M A):
// - the weight gradient is dU[xi][o][c] = sum over tiles of D[xi][o] V[xi][c], V = B^T d B of
//   the planted channels' input tiles;
// - the input gradient is the forward's adjoint: each tile adds B (sum_o U[o][c] D[o]) B^T to
//   the 4x4 input tile it read (tiles overlap by 2), U = G g G^T the forward's filters.
// Computed separately, the input gradient was a convolution of dY that transformed every dY
// channel with the 4x4 input transform, and the weight gradient recomputed each planted
// channel's V for every block of 4 filters; here D and V are computed once per tile.
#include "winograd_cpu.h"

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "winograd_parts.h"

namespace plantops::cpu::winograd {

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
          for (int i = 0; i < OT; ++i) {
            d[i] = S::load(d0 + k * dk + i * L);
            asm("" : "+v"(d[i]));
          }
#pragma GCC unroll 8
          for (int j = 0; j < CT; ++j) {
            vec v = S::load(v0 + k * vk + j * L);
            // d and v loaded once into registers: left to the compiler, the FMAs reload one of
            // them as a memory operand, 20 loads per 16 FMAs instead of 8.
            asm("" : "+v"(v));
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

#define PLANTOPS_INSTANTIATE(T)                                                                \
  template bool planted_input_grads<T>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,  \
                                       int64_t, const Planes<T>&, int64_t, int64_t, int64_t,  \
                                       const T*, const T*, T*, T*, int);
PLANTOPS_INSTANTIATE(float)
PLANTOPS_INSTANTIATE(double)
#undef PLANTOPS_INSTANTIATE

}  // namespace plantops::cpu::winograd
