"""The planted convolution: a conv2d whose weight is a frozen block plus trainable planted blocks.

Planting ``p`` channels into a layer (Mitsuno et al., ICPR 2020) adds ``p`` output filters to
it and ``p`` input slices to the layer that reads it, and trains only those. The weight of a
layer is therefore three blocks::

    [[frozen_weight  in_weight ]      frozen_weight [O_f, I_f, kh, kw]   never trained
     [       out_weight        ]]     in_weight     [O_f, I_p, kh, kw]   planted input slices
                                      out_weight    [O_p, I_f+I_p, kh, kw] planted filters

and ``planted_conv2d`` computes exactly ``conv2d(x, W, b)`` for that ``W`` and
``b = cat([frozen_bias, out_bias])``, with gradients for ``x``, ``in_weight``, ``out_weight`` and
``out_bias`` only. The frozen block never gets a gradient and none is computed for it.

This file holds, in order: argument checks, the custom ops (a ``torch.library`` op, so
``torch.compile`` traces through it) with their autograd, the functional API and the
``PlantedConv2d`` module. The kernels live in ``plantops/kernels/``.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plantops import kernels as _backends


# ----------------------------------------------------------------------------- argument checks

def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    if type(value) is int and value >= minimum:  # the common case, without the general checks
        return value, value
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(value)}")
    return int(value[0]), int(value[1])


def _check_tensor(t, name: str, ndim: int, optional: bool = True):
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} is required, got None")
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_planted_conv_args(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias,
                            stride, padding, x_planted=None):
    """Validates the arguments of planted_conv2d; returns (stride, padding) as pairs.

    Raises TypeError/ValueError naming the argument, what it got and what was expected.
    """
    # Every call of every planted layer runs these checks (about 4 us; a whole 8x8 layer's
    # forward and backward take 0.8 ms): one pass over the tensors, no containers built.
    _check_tensor(x, "x", 4, optional=False)
    dtype, device = x.dtype, x.device
    for name, t, ndim, optional in (
            ("x_planted", x_planted, 4, True), ("frozen_weight", frozen_weight, 4, False),
            ("frozen_bias", frozen_bias, 1, True), ("in_weight", in_weight, 4, True),
            ("out_weight", out_weight, 4, True), ("out_bias", out_bias, 1, True)):
        _check_tensor(t, name, ndim, optional)
        if t is None:
            continue
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {dtype}: "
                            "all tensors of a planted convolution must share one dtype")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but x is on {device}: "
                             "move all tensors to one device")
    o_frozen, i_frozen, kh, kw = frozen_weight.shape
    i_planted = 0 if in_weight is None else in_weight.shape[1]
    if in_weight is not None and in_weight.shape != (o_frozen, i_planted, kh, kw):
        raise ValueError(f"in_weight must have shape [O_f, I_p, kh, kw] = "
                         f"[{o_frozen}, I_p, {kh}, {kw}] to match frozen_weight "
                         f"{tuple(frozen_weight.shape)}, got {tuple(in_weight.shape)}")
    channels = i_frozen + i_planted
    x_shape = x.shape
    if x_planted is not None:
        if x_shape[1] != i_frozen or x_planted.shape[1] != i_planted:
            raise ValueError(f"with x_planted, x holds the I_f = {i_frozen} frozen input channels "
                             f"and x_planted the I_p = {i_planted} planted ones (in_weight's "
                             f"dim 1), got x {tuple(x_shape)} and x_planted "
                             f"{tuple(x_planted.shape)}")
        if x_planted.shape[0] != x_shape[0] or x_planted.shape[2:] != x_shape[2:]:
            raise ValueError(f"x_planted must match x in batch and map size: x is "
                             f"{tuple(x_shape)}, x_planted {tuple(x_planted.shape)}")
    elif x_shape[1] != channels:
        raise ValueError(f"x has {x_shape[1]} channels but the weight blocks read "
                         f"I_f + I_p = {i_frozen} + {i_planted} = {channels} "
                         f"(x shape {tuple(x_shape)})")
    if out_weight is not None and (out_weight.shape[1:] != (channels, kh, kw)):
        raise ValueError(f"out_weight must have shape [O_p, I_f+I_p, kh, kw] = "
                         f"[O_p, {channels}, {kh}, {kw}], got {tuple(out_weight.shape)}")
    if frozen_bias is not None and frozen_bias.shape[0] != o_frozen:
        raise ValueError(f"frozen_bias must have shape [O_f] = [{o_frozen}], "
                         f"got {tuple(frozen_bias.shape)}")
    if out_bias is not None:
        if out_weight is None:
            raise ValueError("out_bias was given without out_weight: a planted bias needs its "
                             "planted filters; pass out_weight too, or out_bias=None")
        if out_bias.shape[0] != out_weight.shape[0]:
            raise ValueError(f"out_bias must have shape [O_p] = [{out_weight.shape[0]}], "
                             f"got {tuple(out_bias.shape)}")
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    height, width = x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]
    if height < kh or width < kw:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {height}x{width}")
    return stride, padding


# ----------------------------------------------------------------------------- custom ops

# One argument order from planted_conv2d down to every backend and the compiled modules:
# x, the blocks in their reading order [[frozen, in], [out]] (frozen_weight, frozen_bias,
# in_weight, out_weight, out_bias), stride, padding, the backend, and x_planted last.

def _forward_impl(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride,
                  padding, backend, x_planted) -> Tensor:
    out = _backends.get(backend).forward(x, frozen_weight, frozen_bias, in_weight, out_weight,
                                         out_bias, tuple(stride), tuple(padding),
                                         x_planted=x_planted)
    return out.contiguous()


@torch.library.custom_op("plantops::planted_conv2d", mutates_args=())
def _planted_conv2d_op(x: Tensor, frozen_weight: Tensor, frozen_bias: Optional[Tensor],
                       in_weight: Tensor, out_weight: Tensor, out_bias: Optional[Tensor],
                       stride: List[int], padding: List[int], backend: str,
                       x_planted: Optional[Tensor]) -> Tensor:
    return _forward_impl(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride,
                         padding, backend, x_planted)


@_planted_conv2d_op.register_fake
def _(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding, backend,
      x_planted):
    kh, kw = frozen_weight.shape[2:]
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    return x.new_empty((x.shape[0], frozen_weight.shape[0] + out_weight.shape[0], oh, ow))


def _backward_impl(grad_out, x, frozen_weight, in_weight, out_weight, stride, padding, backend,
                   x_begin, x_end, need_in_weight, need_out_weight, need_out_bias, x_planted):
    """(grad_x for channels [x_begin, x_end) of x and x_planted joined, grad_in, grad_out_w,
    grad_out_b); None where not asked for."""
    grad_x, grad_in, grad_out_w, grad_out_b = _backends.get(backend).backward(
        grad_out, x, frozen_weight, in_weight, out_weight, tuple(stride), tuple(padding),
        (x_begin, x_end), need_in_weight, need_out_weight, need_out_bias, x_planted=x_planted)
    return (None if grad_x is None else grad_x.contiguous(),
            None if grad_in is None else grad_in.contiguous(),
            None if grad_out_w is None else grad_out_w.contiguous(),
            None if grad_out_b is None else grad_out_b.contiguous())


@torch.library.custom_op("plantops::planted_conv2d_backward", mutates_args=())
def _planted_conv2d_backward_op(
        grad_out: Tensor, x: Tensor, frozen_weight: Tensor, in_weight: Tensor,
        out_weight: Tensor, stride: List[int], padding: List[int], backend: str, x_begin: int,
        x_end: int, need_in_weight: bool, need_out_weight: bool, need_out_bias: bool,
        x_planted: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grads = _backward_impl(grad_out, x, frozen_weight, in_weight, out_weight, stride, padding,
                           backend, x_begin, x_end, need_in_weight, need_out_weight,
                           need_out_bias, x_planted)
    # A custom op cannot return None: an empty tensor stands for "not asked for".
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_planted_conv2d_backward_op.register_fake
def _(grad_out, x, frozen_weight, in_weight, out_weight, stride, padding, backend, x_begin,
      x_end, need_in_weight, need_out_weight, need_out_bias, x_planted):
    def like(t, needed):
        return t.new_empty(t.shape) if needed else x.new_empty(0)
    grad_x = (x.new_empty((x.shape[0], x_end - x_begin, *x.shape[2:])) if x_end > x_begin
              else x.new_empty(0))
    return (grad_x, like(in_weight, need_in_weight), like(out_weight, need_out_weight),
            like(out_weight.new_empty(out_weight.shape[0]), need_out_bias))


def _setup_context(ctx, inputs, output):
    (x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding, backend,
     x_planted) = inputs
    ctx.save_for_backward(x, frozen_weight, in_weight, out_weight, x_planted)
    ctx.stride, ctx.padding, ctx.backend = stride, padding, backend
    ctx.has_out_bias = out_bias is not None


def _backward(ctx, grad_out, backward_fn=_planted_conv2d_backward_op):
    x, frozen_weight, in_weight, out_weight, x_planted = ctx.saved_tensors
    need = ctx.needs_input_grad  # in the op's argument order
    need_x, need_x_planted = need[0], x_planted is not None and need[9]
    need_in, need_out_w = need[3], need[4]
    need_out_b = ctx.has_out_bias and need[5]
    if not (need_x or need_x_planted or need_in or need_out_w or need_out_b):
        return (None,) * 10
    # The input gradient covers only the channels whose tensor needs one: with the planted
    # channels passed apart (x_planted) and x from frozen layers, just [I_f, I_f + I_p).
    split = x.shape[1]
    begin = 0 if need_x else split
    end = split + x_planted.shape[1] if need_x_planted else split
    if not (need_x or need_x_planted):
        begin = end = 0
    grad_x, grad_in, grad_out_w, grad_out_b = backward_fn(
        grad_out, x, frozen_weight, in_weight, out_weight, ctx.stride, ctx.padding,
        ctx.backend, begin, end, need_in, need_out_w, need_out_b, x_planted)
    if end == begin and (need_x or need_x_planted):  # a tensor with 0 channels asks for one
        grad_x = x.new_zeros((x.shape[0], 0, *x.shape[2:]))
    grad_planted = grad_x[:, split - begin:] if need_x_planted else None
    grad_x = grad_x[:, :split] if need_x else None
    return (grad_x, None, None, grad_in if need_in else None,
            grad_out_w if need_out_w else None, grad_out_b if need_out_b else None,
            None, None, None, grad_planted)


_planted_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerPlantedConv2d(torch.autograd.Function):
    """The custom op's forward and backward without torch.library's per-call dispatch, which
    cost about 0.08 ms per forward+backward on a CPU (219 -> 142 us on a tiny layer; a whole
    8x8 layer's kernels take 1-2 ms). Eager calls go here; torch.compile traces the custom op."""

    @staticmethod
    def forward(ctx, *inputs):
        out = _forward_impl(*inputs)
        _setup_context(ctx, inputs, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            # create_graph=True: the kernels' gradients are not differentiable, so a second
            # backward must fail rather than silently miss them. once_differentiable does
            # that; it costs a few microseconds, so a plain backward goes without it.
            return _backward_once_differentiable(ctx, grad_out)
        return _backward(ctx, grad_out, _backward_impl)


@torch.autograd.function.once_differentiable
def _backward_once_differentiable(ctx, grad_out):
    return _backward(ctx, grad_out, _backward_impl)


# ----------------------------------------------------------------------------- functional API

def planted_conv2d(x: Tensor, frozen_weight: Tensor, frozen_bias: Optional[Tensor] = None,
                   in_weight: Optional[Tensor] = None, out_weight: Optional[Tensor] = None,
                   out_bias: Optional[Tensor] = None, stride=1, padding=0,
                   backend: str = "auto", *, x_planted: Optional[Tensor] = None) -> Tensor:
    """``conv2d(x, [[frozen_weight, in_weight], [out_weight]], [frozen_bias, out_bias])``.

    Args:
        x: ``[N, I_f + I_p, H, W]``.
        frozen_weight: ``[O_f, I_f, kh, kw]``; a constant: it never receives a gradient, even
            when it requires one.
        frozen_bias: ``[O_f]`` or None; a constant like ``frozen_weight``.
        in_weight: ``[O_f, I_p, kh, kw]``, the frozen filters' weights on the planted input
            channels, or None (``I_p = 0``).
        out_weight: ``[O_p, I_f + I_p, kh, kw]``, the planted filters, or None (``O_p = 0``).
        out_bias: ``[O_p]`` or None; needs ``out_weight``.
        stride, padding: as in ``torch.nn.functional.conv2d`` (int or pair).
        backend: ``"auto"`` (the fastest that can run on x's device and dtype) or one of
            ``plantops.backends()``; an explicit backend is always honoured.
        x_planted: ``[N, I_p, H, W]`` or None. Given, ``x`` holds only the ``I_f`` frozen
            input channels and ``x_planted`` the planted ones (the result is the same as for
            ``cat([x, x_planted], 1)``), and the input gradient is computed only for the
            tensor(s) that require one. When the frozen channels come from frozen layers
            (planting's case), that is the planted channels alone: ``O * I_p`` instead of
            ``O * (I_f + I_p)`` filter taps in the input-gradient convolution.

    Returns:
        ``[N, O_f + O_p, H', W']``, contiguous.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if isinstance(x, Tensor) and _autocast_dtype(x.device.type) is not None:
        # Like nn.Conv2d under torch.autocast, compute in the autocast dtype. A custom op
        # gets no autocast rule of its own, and the dtype picks the backend: cast here.
        dtype = _autocast_dtype(x.device.type)
        x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, x_planted = (
            t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in (x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, x_planted))
    name, in_weight, out_weight, stride, padding = _prepare(
        x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding, backend,
        x_planted)
    # Plain tensors outside torch.compile take the eager path; compiled graphs, fake and
    # other subclassed tensors the custom op (same computation, registered with torch).
    eager = type(x) is Tensor and not torch.compiler.is_compiling()
    op = _EagerPlantedConv2d.apply if eager else _planted_conv2d_op
    return op(x, frozen_weight.detach(), None if frozen_bias is None else frozen_bias.detach(),
              in_weight, out_weight, out_bias, list(stride), list(padding), name, x_planted)


def trainable_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1,
                     padding=0) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` of a plain layer whose whole weight
    trains (the teacher, the initial network, the --table students): ``planted_conv2d`` with
    every filter planted where its auto rule takes a planted kernel for this shape, F.conv2d
    elsewhere. On a CPU that is the C++ kernels for the 3x3 stride-1 layers of the paper's
    networks (a Student[8], [64] and [128] training step 1.2-2.2x oneDNN's,
    benchmarks/test_bench_teacher.py); on a GPU cuDNN."""
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    if x.dim() != 4 or weight.dim() != 4:
        return F.conv2d(x, weight, bias, stride, padding)
    shape_key = _backends.shape_key(x.shape, x.shape[1], weight.shape[0], weight.shape[2:],
                                    stride, padding)
    dtype = _autocast_dtype(x.device.type) or x.dtype
    name = _backends.resolve("auto", x.device.type, dtype, shape_key,
                             _work((x,), (weight, bias)))
    if name == "torch":
        return F.conv2d(x, weight, bias, stride, padding)
    return planted_conv2d(x, weight[:0], None, out_weight=weight, out_bias=bias, stride=stride,
                          padding=padding, backend=name)


def _prepare(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding,
             backend, x_planted):
    """Checks the arguments; returns the backend that runs them, the weight blocks with
    empty ones for None, and stride and padding as pairs."""
    stride, padding = check_planted_conv_args(x, frozen_weight, frozen_bias, in_weight,
                                              out_weight, out_bias, stride, padding, x_planted)
    o_frozen, i_frozen, kh, kw = frozen_weight.shape
    channels = x.shape[1] + (0 if x_planted is None else x_planted.shape[1])
    # Empty blocks: new_empty, as there is nothing to zero (new_zeros costs a fill_ dispatch).
    if in_weight is None:
        in_weight = frozen_weight.new_empty((o_frozen, 0, kh, kw))
    if out_weight is None:
        out_weight = frozen_weight.new_empty((0, channels, kh, kw))
    shape_key = _backends.shape_key(x.shape, channels, out_weight.shape[0] + o_frozen,
                                    (kh, kw), stride, padding)
    work = _work((x, x_planted), (in_weight, out_weight, out_bias))
    name = _backends.resolve(backend, x.device.type, x.dtype, shape_key, work)
    return name, in_weight, out_weight, stride, padding


def _work(inputs: tuple, weights: tuple) -> str:
    """What a call computes, for the backend choice (kernels.autotune.WORKS): the gradients of
    the ``inputs`` and of the ``weights`` that need one."""
    if not torch.is_grad_enabled():
        return "forward"
    needs = lambda tensors: any(isinstance(t, Tensor) and t.requires_grad for t in tensors)
    return _backends.autotune.work_of(needs(inputs), needs(weights))


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype torch.autocast computes convolutions in on this device type, or None."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def reference_planted_conv2d(x, frozen_weight, frozen_bias=None, in_weight=None, out_weight=None,
                             out_bias=None, stride=1, padding=0) -> Tensor:
    """The definition, in plain autograd-tracked torch: conv2d on the assembled weight.

    Tests compare every backend against this in float64. Unlike ``planted_conv2d`` it lets
    gradients reach whatever requires them, frozen blocks included.
    """
    o_frozen, _, kh, kw = frozen_weight.shape
    if in_weight is None:
        in_weight = frozen_weight.new_zeros((o_frozen, 0, kh, kw))
    if out_weight is None:
        out_weight = frozen_weight.new_zeros((0, x.shape[1], kh, kw))
    weight = torch.cat([torch.cat([frozen_weight, in_weight], 1), out_weight], 0)
    bias = None
    if frozen_bias is not None or out_bias is not None:
        bias = torch.cat([frozen_bias if frozen_bias is not None else x.new_zeros(o_frozen),
                          out_bias if out_bias is not None else x.new_zeros(out_weight.shape[0])])
    return F.conv2d(x, weight, bias, stride, padding)


# ----------------------------------------------------------------------------- module

def init_planted_filters(weight: Tensor, bias: Optional[Tensor], fan_in: int) -> None:
    """nn.Conv2d's / nn.Linear's default initialization for new planted filters (in place)."""
    # kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias uses the same bound.
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


class _PlantedLayer(nn.Module):
    """What PlantedConv2d and PlantedLinear share: the blocks, planting, freezing.

    ``frozen_weight``/``frozen_bias`` are buffers (saved in the state dict, moved by ``.to``,
    never seen by an optimizer); ``in_weight``, ``out_weight``, ``out_bias`` are Parameters.
    Planting replaces Parameters: build the optimizer after planting.
    """

    def _init_blocks(self, frozen_weight: Tensor, frozen_bias: Optional[Tensor]):
        frozen_weight = frozen_weight.detach().clone()
        self.register_buffer("frozen_weight", frozen_weight)
        self.register_buffer("frozen_bias",
                             None if frozen_bias is None else frozen_bias.detach().clone())
        o_frozen, i_frozen, *kernel = frozen_weight.shape
        self.in_weight = nn.Parameter(frozen_weight.new_zeros((o_frozen, 0, *kernel)))
        self.out_weight = nn.Parameter(frozen_weight.new_zeros((0, i_frozen, *kernel)))
        self.out_bias = (None if frozen_bias is None
                         else nn.Parameter(frozen_weight.new_zeros((0,))))

    @property
    def frozen_out(self) -> int:
        return self.frozen_weight.shape[0]

    @property
    def frozen_in(self) -> int:
        return self.frozen_weight.shape[1]

    @property
    def planted_out(self) -> int:
        return self.out_weight.shape[0]

    @property
    def planted_in(self) -> int:
        return self.in_weight.shape[1]

    @property
    def total_in(self) -> int:
        return self.frozen_in + self.planted_in

    @property
    def total_out(self) -> int:
        return self.frozen_out + self.planted_out

    def _kernel(self) -> tuple[int, ...]:
        return tuple(self.frozen_weight.shape[2:])

    def _fan_in(self) -> int:
        return self.total_in * math.prod(self._kernel())

    def plant_outputs(self, count: int, generator: Optional[torch.Generator] = None):
        """Adds ``count`` trainable output filters (and biases), with the layer's default init."""
        count = _check_count(count)
        new_weight = self.out_weight.new_empty((count, self.total_in, *self._kernel()))
        new_bias = None if self.out_bias is None else self.out_weight.new_empty((count,))
        bound = 1.0 / math.sqrt(self._fan_in()) if self._fan_in() else 0.0
        with torch.no_grad():
            new_weight.uniform_(-bound, bound, generator=generator)
            if new_bias is not None:
                new_bias.uniform_(-bound, bound, generator=generator)
        self.out_weight = nn.Parameter(torch.cat([self.out_weight.detach(), new_weight], 0))
        if new_bias is not None:
            self.out_bias = nn.Parameter(torch.cat([self.out_bias.detach(), new_bias], 0))
        return self

    def plant_inputs(self, count: int):
        """Adds ``count`` input channels; their weights start at zero, so the output is unchanged."""
        count = _check_count(count)
        kernel = self._kernel()
        self.in_weight = nn.Parameter(torch.cat(
            [self.in_weight.detach(), self.in_weight.new_zeros((self.frozen_out, count, *kernel))], 1))
        self.out_weight = nn.Parameter(torch.cat(
            [self.out_weight.detach(), self.out_weight.new_zeros((self.planted_out, count, *kernel))], 1))
        return self

    def assembled_weight(self) -> Tensor:
        """The whole weight ``[[frozen, in], [out]]`` (detached)."""
        top = torch.cat([self.frozen_weight, self.in_weight.detach()], 1)
        return torch.cat([top, self.out_weight.detach()], 0)

    def assembled_bias(self) -> Optional[Tensor]:
        if self.frozen_bias is None:
            return None
        return torch.cat([self.frozen_bias, self.out_bias.detach()])

    def _export_into(self, module: nn.Module) -> nn.Module:
        """Copies the whole (assembled) weight and bias into a plain layer of the right shape."""
        weight, bias = self.assembled_weight(), self.assembled_bias()
        with torch.no_grad():
            module.weight.copy_(weight)
            if bias is not None:
                module.bias.copy_(bias)
        return module

    def freeze(self):
        """The planted blocks join the frozen block; no trainable parameters remain."""
        weight, bias = self.assembled_weight().clone(), self.assembled_bias()
        self._init_blocks(weight, bias)
        return self


def _check_count(count) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"the number of channels to plant must be an int >= 0, got {count!r}")
    return count


class PlantedConv2d(_PlantedLayer):
    """A Conv2d whose weight is a frozen block plus trainable planted blocks.

    Build it from a trained ``nn.Conv2d`` with :meth:`from_conv` (everything frozen), grow it
    with :meth:`plant_outputs` / :meth:`plant_inputs`, train, then :meth:`freeze` or export
    with :meth:`to_conv`.
    """

    def __init__(self, frozen_weight: Tensor, frozen_bias: Optional[Tensor] = None, stride=1,
                 padding=0, backend: str = "auto"):
        super().__init__()
        _check_tensor(frozen_weight, "frozen_weight", 4, optional=False)
        _check_tensor(frozen_bias, "frozen_bias", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.backend = backend
        self._init_blocks(frozen_weight, frozen_bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, backend: str = "auto") -> "PlantedConv2d":
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects an nn.Conv2d, got {type(conv).__name__}")
        unsupported = {"groups": (conv.groups, 1), "dilation": (tuple(conv.dilation), (1, 1)),
                       "padding_mode": (conv.padding_mode, "zeros")}
        for name, (got, expected) in unsupported.items():
            if got != expected:
                raise ValueError(f"PlantedConv2d supports {name}={expected!r} only, "
                                 f"the conv has {name}={got!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"PlantedConv2d needs numeric padding, the conv has "
                             f"padding={conv.padding!r}; rebuild it with padding=k//2")
        return cls(conv.weight, conv.bias, conv.stride, conv.padding, backend)

    def forward(self, x: Tensor, x_planted: Optional[Tensor] = None) -> Tensor:
        """``x``: every input channel; or, with ``x_planted``, the frozen ones only (see
        ``planted_conv2d``: the input gradient then goes only where it is needed)."""
        return planted_conv2d(
            x, self.frozen_weight, self.frozen_bias,
            self.in_weight if self.planted_in else None,
            self.out_weight if self.planted_out else None,
            self.out_bias if self.planted_out and self.out_bias is not None else None,
            self.stride, self.padding, self.backend, x_planted=x_planted)

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the whole (assembled) weight, for export."""
        w = self.frozen_weight
        return self._export_into(nn.Conv2d(
            self.total_in, self.total_out, self._kernel(), self.stride, self.padding,
            bias=self.frozen_bias is not None, device=w.device, dtype=w.dtype))

    def extra_repr(self) -> str:
        return (f"frozen {self.frozen_in}->{self.frozen_out}, planted in={self.planted_in} "
                f"out={self.planted_out}, kernel={self._kernel()}, stride={self.stride}, "
                f"padding={self.padding}, backend={self.backend!r}")
