// The SIMD vector the CPU kernels compute with: GCC/Clang vector extensions, as wide as the
// instruction set the module is compiled for (-march=native by default, see setup.py).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>

namespace plantops::cpu {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(kVecBytes)));
  static constexpr int64_t L = kVecBytes / sizeof(T);  // lanes
  // memcpy: unaligned, and no aliasing assumptions between vec and T.
  static vec load(const T* p) {
    vec v;
    __builtin_memcpy(&v, p, sizeof(vec));
    return v;
  }
  static void store(T* p, vec v) { __builtin_memcpy(p, &v, sizeof(vec)); }
  // The sum of the lanes, first to last (a fixed order: results do not depend on threads).
  static T sum(vec v) {
    T s = 0;
    for (int64_t l = 0; l < L; ++l) s += v[l];
    return s;
  }
};

// n elements aligned to 64 bytes, uninitialized (or zeroed): aligned so that no SIMD vector
// straddles two cache lines. malloc aligns to 16 bytes only, and vector loads that split
// cache lines made the Winograd kernels up to 1.4x slower (benchmarks/RESULTS.md).
template <typename T>
struct AlignedFree {
  void operator()(T* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
template <typename T>
using AlignedBuffer = std::unique_ptr<T[], AlignedFree<T>>;
template <typename T>
AlignedBuffer<T> aligned_buffer(int64_t n, bool zero = false) {
  T* p = static_cast<T*>(::operator new[](n * sizeof(T), std::align_val_t(64)));
  if (zero) std::fill(p, p + n, T(0));
  return AlignedBuffer<T>(p);
}

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

}  // namespace plantops::cpu
