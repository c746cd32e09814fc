"""relu_max_pool2d: ReLU then a 2x2 max pool of stride 2, the activation every planted network
applies after conv1, conv2 and conv5 (and STL-10's conv3).

The result and its gradient are exactly ``F.max_pool2d(F.relu(x), 2)``'s: the gradient of a
window reaches its first maximum in row-major order (max_pool2d's choice among ties), and
nothing where the maximum is <= 0.

Backends: ``torch`` (those two ATen ops, the reference, any device) and ``cpu`` (one C++ pass
over NCHW planes, csrc/relu_pool_cpu.cpp). ``backend="auto"`` takes ``cpu`` for float32 and
float64 CPU tensors in NCHW layout, where ATen's max_pool2d walks every window with scalar
index bookkeeping (3.8 ms for a [128, 8, 32, 32] batch on a 2-core EPYC, 0.3 ms here;
benchmarks/test_bench_relu_pool.py), and ``torch`` elsewhere (plantops.kernels decides).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plantops import kernels as _kernels
from plantops.kernels import _native

BACKENDS = ("auto", "torch", "cpu")
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def reference_relu_max_pool2d(x: Tensor) -> Tensor:
    return F.max_pool2d(F.relu(x), 2)


def _cpu_module():
    return _native.load("plantops._C")[0]


def resolve(backend: str, x: Tensor) -> str:
    """The backend that runs ``relu_max_pool2d(x, backend)``; ValueError when it cannot.
    ``auto`` is plantops.kernels.relu_pool_backend's choice."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for relu_max_pool2d: expected one of "
                         f"{', '.join(BACKENDS)}")
    if backend == "auto":
        return _kernels.relu_pool_backend(x)
    if backend == "cpu" and not _kernels.relu_pool_cpu_runs(x):
        raise ValueError(f"backend 'cpu' of relu_max_pool2d needs a float32 or float64 CPU "
                         f"tensor [N, C, H, W] with H, W >= 2 and the compiled plantops._C; got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}; pass backend='auto'")
    return backend


class _CpuReluMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        n, c, h, w = x.shape
        y = x.new_empty((n, c, h // 2, w // 2))
        arg = torch.empty(y.shape, dtype=torch.uint8)
        if y.numel():
            _cpu_module().relu_max_pool2x2(_DTYPE_NAMES[x.dtype], x.data_ptr(), n * c, h, w,
                                           y.data_ptr(), arg.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(arg)
        ctx.in_shape = x.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        (arg,) = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        n, c, h, w = ctx.in_shape
        grad_x = grad_y.new_empty(ctx.in_shape)
        if grad_x.numel():
            _cpu_module().relu_max_pool2x2_backward(
                _DTYPE_NAMES[grad_y.dtype], grad_y.data_ptr(), arg.data_ptr(), n * c, h, w,
                grad_x.data_ptr(), torch.get_num_threads())
        return grad_x


def relu_max_pool2d(x: Tensor, backend: str = "auto") -> Tensor:
    """``F.max_pool2d(F.relu(x), 2)`` for ``x [N, C, H, W]``, gradient included."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"relu_max_pool2d expects a tensor [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if resolve(backend, x) == "cpu":
        return _CpuReluMaxPool.apply(x)
    return reference_relu_max_pool2d(x)


@torch.no_grad()
def conv_relu_max_pool2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1,
                         padding=0, backend: str = "auto") -> Tensor:
    """``relu_max_pool2d(planted_conv2d(x, weight, bias, ...))`` of a frozen layer, without
    gradients: how a trained network's pooled layers run when it is only evaluated (the
    teacher's logits, a round's parent). Where the convolution runs on the CPU kernels'
    Winograd path, the pool is folded into it: each 2x2 output tile is a pool window,
    reduced before it is stored (a quarter of the stores, and no pass of its own). The
    result is the composite's, bit for bit, except that a NaN output is not propagated."""
    from plantops.planted_conv import planted_conv2d
    cpu = _frozen_on_cpu(x, weight, bias, stride, padding, backend)
    if cpu is not None:
        fused = _kernels.get("cpu").forward_relu_pool(*cpu)
        if fused is not None:
            return fused
    return relu_max_pool2d(planted_conv2d(x, weight, bias, stride=stride, padding=padding,
                                          backend=backend))


def conv_add_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1,
                  padding=0, residual: Optional[Tensor] = None, relu: bool = False,
                  backend: str = "auto", out: Optional[Tensor] = None) -> Tensor:
    """``planted_conv2d(x, weight, bias, ...) + residual`` (where given), then a ReLU (where
    ``relu``), of a frozen layer without gradients: a ResNet block's last convolution, its
    shortcut and its ReLU as a trained network is evaluated. On the CPU kernels the add and
    the ReLU run on each band of outputs as it is written (csrc/epilogue.h), not as passes of
    their own; elsewhere in place on the convolution's fresh output. ``residual`` has the
    output's shape and dtype. The result is the composite's, bit for bit. ``out``: a
    contiguous tensor of the result's shape and dtype that the CPU kernels write it into
    (no allocation: see plantops.inference); other backends allocate, and return, their own."""
    from plantops.planted_conv import planted_conv2d
    cpu = _frozen_on_cpu(x, weight, bias, stride, padding, backend)
    if cpu is not None and not (residual is not None and residual.requires_grad
                                and torch.is_grad_enabled()):
        return _kernels.get("cpu").forward_add_relu(*cpu, residual, relu, out=out)
    y = planted_conv2d(x, weight, bias, stride=stride, padding=padding, backend=backend)
    if residual is not None:
        _native.check_residual(residual, y)
        y = y.add_(residual) if not y.requires_grad else y + residual
    if relu:
        y = y.relu_() if not y.requires_grad else torch.relu(y)
    return y


def _frozen_on_cpu(x, weight, bias, stride, padding, backend):
    """The CPU kernels' arguments (x, frozen weight and bias, the empty planted blocks, stride,
    padding) where ``backend`` resolves to them for this frozen layer, else None (another
    backend; autocast, under which planted_conv2d casts first; or a gradient to record)."""
    from plantops.planted_conv import _autocast_dtype, _prepare
    if _autocast_dtype(x.device.type) is not None or (
            torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                         or (bias is not None and bias.requires_grad))):
        return None  # the kernels' forward alone records no gradient
    name, in_weight, out_weight, pair_stride, pair_padding = _prepare(
        x, weight, bias, None, None, None, stride, padding, backend, None)
    if name != "cpu":
        return None
    return x, weight, bias, in_weight, out_weight, None, pair_stride, pair_padding
