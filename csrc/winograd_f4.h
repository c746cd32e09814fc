// Winograd F(4x4, 3x3) (Lavin & Gray, CVPR 2016) as a tile policy of the forward kernel
// (winograd_cpu.cpp, conv_groups): each 4x4 block of outputs takes 36 multiplications per
// (input, output) channel pair instead of 144, 4x fewer than a direct convolution against
// F(2x2, 3x3)'s 2.25x. Its transforms have coefficients up to 8 and 1/24, so it rounds more
// than F(2x2, 3x3): the forward takes it only for wide layers (winograd_tile in
// planted_conv_cpu.cpp), and the tests bound its error apart (F4_FACTOR in tests/helpers.py).
#pragma once

#include <cstdint>

#include "simd.h"
#include "winograd_parts.h"

namespace plantops::cpu::winograd {

// B^T (6x6), A (6x4: Y = A^T M A) and G (6x3: U = G g G^T) for the points 0, +-1, +-2, inf.
inline constexpr double kBt4[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                      {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                      {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
inline constexpr double kA4[6][4] = {{1, 0, 0, 0},  {1, 1, 1, 1},  {1, -1, 1, -1},
                                     {1, 2, 4, 8},  {1, -2, 4, -8}, {0, 0, 0, 1}};
inline constexpr double kG4[6][3] = {{1.0 / 4, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};

struct F4 {
  static constexpr int m = 4, a = m + 2, X = a * a;

  // U = G g G^T (6x6) of one 3x3 filter g, u[xi * stride] for xi = 6 i + j; in double, then
  // rounded once (it runs once per filter and call).
  template <typename T>
  static void filter(const T* g, T* u, int64_t stride) {
    double t[6][3];
    for (int i = 0; i < 6; ++i)
      for (int k = 0; k < 3; ++k)
        t[i][k] = kG4[i][0] * g[k] + kG4[i][1] * g[3 + k] + kG4[i][2] * g[6 + k];
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j)
        u[(6 * i + j) * stride] =
            static_cast<T>(t[i][0] * kG4[j][0] + t[i][1] * kG4[j][1] + t[i][2] * kG4[j][2]);
  }

  // V = B^T d B of the 6x6 input tile at `at` (rows `row` elements apart, vectors of L).
  template <typename T>
  static inline __attribute__((always_inline)) void input(const T* at, int64_t row,
                                                          typename Simd<T>::vec v[X]) {
    using S = Simd<T>;
    using vec = typename S::vec;
    vec d[6][6];
    for (int r = 0; r < 6; ++r)
      for (int c = 0; c < 6; ++c) d[r][c] = S::load(at + r * row + c * S::L);
    two_sided<6, 6, vec>([](int i, int r) { return kBt4[i][r]; },
                                  [&](int r, int c) { return d[r][c]; },
                                  [&](int i, int j, vec x) { v[6 * i + j] = x; });
  }

  // Y = A^T M A (4x4) from mm[36].
  template <typename V>
  static inline __attribute__((always_inline)) void output(const V mm[X], V y[m][m]) {
    two_sided<4, 6, V>([](int p, int i) { return kA4[i][p]; },
                                [&](int i, int j) { return mm[6 * i + j]; },
                                [&](int p, int q, V x) { y[p][q] = x; });
  }
};

}  // namespace plantops::cpu::winograd
