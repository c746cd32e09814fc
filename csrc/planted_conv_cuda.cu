// CUDA kernels of the planted convolution (see planted_conv.h for the weight blocks).
//
// Design: direct kernels that read the three weight blocks where they lie (no assembled copy).
//   forward     one thread per output element; loops over input channels and taps.
//   input_grad  one thread per input element of the requested channel range; gathers the
//               output gradients that read it (no atomics).
//   weight_grad one block per weight-gradient element of the requested block (and one per
//               bias element); its threads stride over N*OH*OW and reduce in shared memory in
//               a fixed order, so the result is deterministic.
// Every type accumulates in float (double for double). These kernels are the portable
// baseline of the CUDA backend: simple and exact, not tiled for tensor cores; the Triton
// backend holds the implicit-GEMM kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "planted_conv_cuda.h"

namespace plantops::cuda {
namespace {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The taps of the assembled weight at (o, c), inside whichever block holds them.
template <typename T>
__device__ __forceinline__ const T* taps(const Geometry& g, const T* w_frozen, const T* w_in,
                                         const T* w_out, int64_t o, int64_t c) {
  const int64_t kk = g.KH * g.KW;
  if (o >= g.O_f) return w_out + ((o - g.O_f) * g.C() + c) * kk;
  if (c < g.I_f) return w_frozen + (o * g.I_f + c) * kk;
  return w_in + (o * g.I_p + (c - g.I_f)) * kk;
}

template <typename T>
__global__ void forward_kernel(Geometry g, const T* __restrict__ x, const T* __restrict__ w_frozen,
                               const T* __restrict__ b_frozen, const T* __restrict__ w_in,
                               const T* __restrict__ w_out, const T* __restrict__ b_out,
                               T* __restrict__ out) {
  using A = typename Acc<T>::type;
  const int64_t total = g.N * g.O() * g.OH * g.OW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ox = i % g.OW, oy = (i / g.OW) % g.OH, o = (i / (g.OW * g.OH)) % g.O();
    const int64_t n = i / (g.OW * g.OH * g.O());
    A acc = 0;
    if (o < g.O_f) {
      if (b_frozen) acc = to_acc(b_frozen[o]);
    } else if (b_out) {
      acc = to_acc(b_out[o - g.O_f]);
    }
    for (int64_t c = 0; c < g.C(); ++c) {
      const T* w = taps(g, w_frozen, w_in, w_out, o, c);
      const T* xc = x + (n * g.C() + c) * g.H * g.W;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t iy = oy * g.SH + kh - g.PH;
        if (iy < 0 || iy >= g.H) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t ix = ox * g.SW + kw - g.PW;
          if (ix >= 0 && ix < g.W) acc += to_acc(w[kh * g.KW + kw]) * to_acc(xc[iy * g.W + ix]);
        }
      }
    }
    out[i] = from_acc<T>(acc);
  }
}

template <typename T>
__global__ void input_grad_kernel(Geometry g, const T* __restrict__ grad_out,
                                  const T* __restrict__ w_frozen, const T* __restrict__ w_in,
                                  const T* __restrict__ w_out, int64_t c_begin, int64_t nc,
                                  T* __restrict__ grad_x) {
  using A = typename Acc<T>::type;
  const int64_t total = g.N * nc * g.H * g.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ix = i % g.W, iy = (i / g.W) % g.H, c = c_begin + (i / (g.W * g.H)) % nc;
    const int64_t n = i / (g.W * g.H * nc);
    A acc = 0;
    for (int64_t o = 0; o < g.O(); ++o) {
      const T* w = taps(g, w_frozen, w_in, w_out, o, c);
      const T* go = grad_out + (n * g.O() + o) * g.OH * g.OW;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ty = iy + g.PH - kh;
        if (ty < 0 || ty % g.SH) continue;
        const int64_t oy = ty / g.SH;
        if (oy >= g.OH) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t tx = ix + g.PW - kw;
          if (tx < 0 || tx % g.SW) continue;
          const int64_t ox = tx / g.SW;
          if (ox < g.OW) acc += to_acc(w[kh * g.KW + kw]) * to_acc(go[oy * g.OW + ox]);
        }
      }
    }
    grad_x[i] = from_acc<T>(acc);
  }
}

constexpr int kReduceThreads = 256;

// Block b < no*nc*kk computes grad_w[b]; block no*nc*kk + o computes grad_b[o].
template <typename T>
__global__ void weight_grad_kernel(Geometry g, const T* __restrict__ grad_out,
                                   const T* __restrict__ x, int64_t o_begin, int64_t no,
                                   int64_t c_begin, int64_t nc, T* __restrict__ grad_w,
                                   T* __restrict__ grad_b) {
  using A = typename Acc<T>::type;
  __shared__ A partial[kReduceThreads];
  const int64_t kk = g.KH * g.KW;
  const int64_t b = blockIdx.x;
  const bool is_bias = b >= no * nc * kk;
  const int64_t o = is_bias ? b - no * nc * kk : b / (nc * kk);
  const int64_t c = is_bias ? 0 : (b / kk) % nc;
  const int64_t kh = is_bias ? 0 : (b % kk) / g.KW, kw = is_bias ? 0 : b % g.KW;
  const int64_t plane = g.OH * g.OW;
  A acc = 0;
  for (int64_t i = threadIdx.x; i < g.N * plane; i += blockDim.x) {
    const int64_t n = i / plane, oy = (i % plane) / g.OW, ox = i % g.OW;
    const A go = to_acc(grad_out[(n * g.O() + o_begin + o) * plane + oy * g.OW + ox]);
    if (is_bias) {
      acc += go;
      continue;
    }
    const int64_t iy = oy * g.SH + kh - g.PH, ix = ox * g.SW + kw - g.PW;
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W)
      acc += go * to_acc(x[((n * g.C() + c_begin + c) * g.H + iy) * g.W + ix]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (is_bias)
      grad_b[o] = from_acc<T>(partial[0]);
    else
      grad_w[b] = from_acc<T>(partial[0]);
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("plantops._cuda: ") + what + " failed: " +
                             cudaGetErrorString(err));
}

int grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 16 ? blocks : 65535 * 16);  // grid-stride beyond
}

template <typename T>
void forward_t(const Geometry& g, const Pointers& p, cudaStream_t stream) {
  const int64_t total = g.N * g.O() * g.OH * g.OW;
  if (total == 0) return;
  forward_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(
      g, p.in<T>(p.x), p.in<T>(p.w_frozen), p.in<T>(p.b_frozen), p.in<T>(p.w_in),
      p.in<T>(p.w_out), p.in<T>(p.b_out), p.out<T>(p.result));
  check_launch("forward kernel launch");
}

template <typename T>
void input_grad_t(const Geometry& g, const Pointers& p, int64_t c_begin, int64_t c_end,
                  cudaStream_t stream) {
  const int64_t total = g.N * (c_end - c_begin) * g.H * g.W;
  if (total == 0) return;
  input_grad_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(
      g, p.in<T>(p.grad_out), p.in<T>(p.w_frozen), p.in<T>(p.w_in), p.in<T>(p.w_out), c_begin,
      c_end - c_begin, p.out<T>(p.result));
  check_launch("input-gradient kernel launch");
}

template <typename T>
void weight_grad_t(const Geometry& g, const Pointers& p, int64_t o_begin, int64_t o_end,
                   int64_t c_begin, int64_t c_end, cudaStream_t stream) {
  const int64_t no = o_end - o_begin, nc = c_end - c_begin;
  const int64_t blocks = no * nc * g.KH * g.KW + (p.result_bias ? no : 0);
  if (blocks == 0) return;
  weight_grad_kernel<T><<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(
      g, p.in<T>(p.grad_out), p.in<T>(p.x), o_begin, no, c_begin, nc, p.out<T>(p.result),
      p.out<T>(p.result_bias));
  check_launch("weight-gradient kernel launch");
}

// Calls fn<T>() for the dtype named.
template <typename Fn>
void by_dtype(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32")
    fn(float{});
  else if (dtype == "float64")
    fn(double{});
  else if (dtype == "float16")
    fn(__half{});
  else if (dtype == "bfloat16")
    fn(__nv_bfloat16{});
  else
    throw std::invalid_argument("plantops._cuda: unsupported dtype " + dtype);
}

}  // namespace

void forward(const Geometry& g, const std::string& dtype, const Pointers& p,
             std::uintptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    forward_t<decltype(zero)>(g, p, reinterpret_cast<cudaStream_t>(stream));
  });
}

void input_grad(const Geometry& g, const std::string& dtype, const Pointers& p, int64_t c_begin,
                int64_t c_end, std::uintptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    input_grad_t<decltype(zero)>(g, p, c_begin, c_end, reinterpret_cast<cudaStream_t>(stream));
  });
}

void weight_grad(const Geometry& g, const std::string& dtype, const Pointers& p, int64_t o_begin,
                 int64_t o_end, int64_t c_begin, int64_t c_end, std::uintptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    weight_grad_t<decltype(zero)>(g, p, o_begin, o_end, c_begin, c_end,
                                  reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace plantops::cuda
