"""The ``triton`` backend: implicit-GEMM Triton kernels for the planted convolution.

Design (reference in torch_composite.py; launchers below do shapes, allocation and grids):
- forward: GEMM of [N*OH*OW pixels] x [C*KH*KW taps] x [O channels]. Each program owns a
  BLOCK_M x BLOCK_N output tile and gathers the input patch (implicit im2col, zero padding
  by mask) and the weight tile straight from the three blocks where they lie (disjoint
  masked loads: no assembled weight per call); the bias is fused.
- input gradient: the transposed GEMM, [N*H*W input pixels] x [O*KH*KW] x [channels], for a
  channel range only, gathering the output gradients that read each input pixel.
- planted weight gradients: [rows] x [N*OH*OW pixels] x [channels*KH*KW] for one block at a
  time (planted filters, or the frozen filters' planted input slices), split over pixels
  (split-K: planting's gradients are tiny, the reduction is long) into a float32 partial
  buffer summed in a fixed order: deterministic. Bias gradients are ATen reductions.
Every tile accumulates in float32. float32 inputs use TF32 in tl.dot only where PyTorch
allows it for convolutions (torch.backends.cudnn.allow_tf32). Offsets are 64-bit.
Runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1 (slow: tests only).
Fast for the search's shapes (8 to 128 channels); not tuned for channel counts past 256.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from plantops.kernels import joined
from plantops.kernels._native import dims as _dims

NAME = "triton"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpret() -> bool:
    """Triton's CPU interpreter is on (read at call time: tests set it after import)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not importable ({err}); pip install triton"
    return None


def unavailable_reason(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type == "cpu" and not _interpret():
        return "on CPU tensors it runs only under TRITON_INTERPRET=1 (for tests)"
    if device_type not in ("cpu", "cuda"):
        return "it runs on CUDA tensors"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if dtype not in _DTYPES:
        return "it supports float32, float16 and bfloat16"
    return _triton_missing()


@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernels, defined on first use so that importing plantops never imports triton."""
    import triton

    from plantops.kernels import _triton_kernels as k
    return triton, k.forward_kernel, k.input_grad_kernel, k.weight_grad_kernel


# ----------------------------------------------------------------------------- launchers

def _precision(dtype: torch.dtype) -> str:
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "ieee"


def _device_ctx(t):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def forward(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding,
            x_planted=None):
    triton, forward_kernel, _, _ = _kernels()
    x = joined(x, x_planted)
    x, fw, iw, ow = (t.contiguous() for t in (x, frozen_weight, in_weight, out_weight))
    d = _dims(x.shape, fw.shape, iw.shape, ow.shape, stride, padding)
    from plantops.kernels.torch_composite import assemble_bias
    bias = assemble_bias(frozen_bias, out_bias, d["O_f"], d["O"] - d["O_f"], x)
    out = x.new_empty((d["N"], d["O"], d["OH"], d["OW"]))
    if out.numel() == 0:
        return out
    # Empty blocks still need a valid pointer; their loads are fully masked.
    iw = iw if iw.numel() else fw
    ow = ow if ow.numel() else fw
    grid = lambda meta: (triton.cdiv(d["N"] * d["OH"] * d["OW"], meta["BLOCK_M"]),
                         triton.cdiv(d["O"], meta["BLOCK_N"]))
    with _device_ctx(x):
        forward_kernel[grid](
            x, fw, iw, ow, bias if bias is not None else fw, out,
            d["N"], d["C"], d["O"], d["H"], d["W"], d["OH"], d["OW"], d["O_f"], d["I_f"], d["I_p"],
            KH=d["KH"], KW=d["KW"], SH=d["SH"], SW=d["SW"], PH=d["PH"], PW=d["PW"],
            HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype))
    return out


def _input_grad(grad_out, fw, iw, ow, d, c_begin, c_end):
    triton, _, input_grad_kernel, _ = _kernels()
    nc = c_end - c_begin
    grad_x = grad_out.new_empty((d["N"], nc, d["H"], d["W"]))
    if grad_x.numel() == 0:
        return grad_x
    grid = lambda meta: (triton.cdiv(d["N"] * d["H"] * d["W"], meta["BLOCK_M"]),
                         triton.cdiv(nc, meta["BLOCK_N"]))
    with _device_ctx(grad_out):
        input_grad_kernel[grid](
            grad_out, fw, iw, ow, grad_x,
            d["N"], d["C"], d["O"], d["H"], d["W"], d["OH"], d["OW"], d["O_f"], d["I_f"],
            d["I_p"], c_begin, nc,
            KH=d["KH"], KW=d["KW"], SH=d["SH"], SW=d["SW"], PH=d["PH"], PW=d["PW"],
            PRECISION=_precision(grad_out.dtype))
    return grad_x


def _weight_grad(grad_out, x, d, o_begin, o_end, c_begin, c_end):
    """grad of the weight block [o_begin:o_end, c_begin:c_end] as [rows, channels, KH, KW]."""
    triton, _, _, weight_grad_kernel = _kernels()
    no, nc, kk = o_end - o_begin, c_end - c_begin, d["KH"] * d["KW"]
    pixels = d["N"] * d["OH"] * d["OW"]
    if no * nc * pixels == 0:
        return grad_out.new_zeros((no, nc, d["KH"], d["KW"]))
    block_m, block_n, block_k = (16, 16, 16) if _interpret() else (16, 64, 64)
    # Enough splits to fill the GPU; each split covers a whole number of BLOCK_K chunks.
    tiles = triton.cdiv(no, block_m) * triton.cdiv(nc * kk, block_n)
    splits = max(1, min(triton.cdiv(pixels, 4 * block_k), (1 if _interpret() else 264) // tiles))
    per_split = triton.cdiv(triton.cdiv(pixels, splits), block_k) * block_k
    splits = triton.cdiv(pixels, per_split)
    partial = torch.empty((splits, no, nc * kk), device=x.device, dtype=torch.float32)
    with _device_ctx(x):
        weight_grad_kernel[(triton.cdiv(no, block_m), triton.cdiv(nc * kk, block_n), splits)](
            grad_out, x, partial,
            d["N"], d["C"], d["O"], d["H"], d["W"], d["OH"], d["OW"], o_begin, no, c_begin,
            nc * kk, per_split,
            KH=d["KH"], KW=d["KW"], SH=d["SH"], SW=d["SW"], PH=d["PH"], PW=d["PW"],
            PRECISION=_precision(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return partial.sum(0).view(no, nc, d["KH"], d["KW"]).to(x.dtype)


def backward(grad_out, x, frozen_weight, in_weight, out_weight, stride, padding,
             x_channels, need_in_weight, need_out_weight, need_out_bias, x_planted=None):
    x = joined(x, x_planted)
    grad_out, x, fw, iw, ow = (t.contiguous() for t in
                               (grad_out, x, frozen_weight, in_weight, out_weight))
    d = _dims(x.shape, fw.shape, iw.shape, ow.shape, stride, padding)
    grad_x = grad_in = grad_out_w = grad_out_b = None
    if x_channels[1] > x_channels[0]:
        grad_x = _input_grad(grad_out, fw, iw if iw.numel() else fw, ow if ow.numel() else fw,
                             d, *x_channels)
    if need_out_weight:
        grad_out_w = _weight_grad(grad_out, x, d, d["O_f"], d["O"], 0, d["C"])
    if need_out_bias:
        grad_out_b = grad_out[:, d["O_f"]:].sum((0, 2, 3), dtype=torch.float32).to(x.dtype)
    if need_in_weight:
        grad_in = _weight_grad(grad_out, x, d, 0, d["O_f"], d["I_f"], d["C"])
    return grad_x, grad_in, grad_out_w, grad_out_b
