"""Backends of the planted convolution and the choice between them.

Every backend module exposes the same three things:

- ``NAME``: its name, as users pass it in ``backend=``;
- ``unavailable_reason(device_type, dtype)``: ``None`` when it can run on that device type and
  dtype on this machine, else a sentence saying why not (missing module, wrong device, ...);
- ``forward(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding,
  x_planted)`` and ``backward(grad_out, x, frozen_weight, in_weight, out_weight, stride,
  padding, x_channels, need_in_weight, need_out_weight, need_out_bias, x_planted)`` over
  normalized arguments: every weight a tensor (empty blocks have a zero dimension), stride and
  padding pairs; ``x_planted`` None (x holds every input channel) or the planted input channels
  passed apart (x then holds the frozen ones; ``joined`` puts them together for a backend
  that reads one tensor). ``backward`` returns ``(grad_x, grad_in_weight, grad_out_weight,
  grad_out_bias)`` with ``None`` for what was not asked for; ``grad_x`` covers only the input
  channels ``x_channels = (begin, end)`` of x and x_planted joined (``[N, end - begin, H, W]``;
  none when the range is empty). Nothing is ever computed for the frozen block.

Nothing here touches CUDA or compiles anything at import time: backends are imported lazily.
"""

from __future__ import annotations

import importlib

import torch

from plantops.kernels import autotune

# Every backend, in the order backends() lists them. Which one backend="auto" takes is
# decided here and nowhere else: _auto for planted_conv2d (on a CPU by measuring the
# candidates on this machine, autotune.py, or by the fixed rule cpu_kernels_win),
# relu_pool_backend for relu_max_pool2d (benchmarks/RESULTS.md).
_MODULES = {
    "cpu": "plantops.kernels.cpu",
    "cuda": "plantops.kernels.cuda",
    "triton": "plantops.kernels.triton_conv",
    "torch": "plantops.kernels.torch_composite",
}
NAMES = tuple(_MODULES)


_loaded: dict = {}  # name -> module: import_module costs microseconds on every call


def joined(x: torch.Tensor, x_planted: torch.Tensor | None) -> torch.Tensor:
    """x with the planted channels passed apart (x_planted, if any) appended along dim 1."""
    return x if x_planted is None else torch.cat([x, x_planted], 1)


def get(name: str):
    """The backend module called ``name``; ValueError for an unknown name."""
    module = _loaded.get(name)
    if module is None:
        if name not in _MODULES:
            raise ValueError(
                f"unknown backend {name!r}: expected one of {', '.join(('auto',) + NAMES)}"
            )
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


def backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends that can run here, on ``device`` ('cpu', 'cuda') or on any."""
    types = [torch.device(device).type] if device is not None else ["cpu", "cuda"]
    dtype = torch.float32
    return [
        name
        for name in NAMES
        if any(get(name).unavailable_reason(t, dtype) is None for t in types)
    ]


def shape_key(x_shape, channels: int, outputs: int, kernel, stride, padding) -> tuple:
    """The key a convolution's backend is chosen by (``resolve``, ``autotune``): (batch,
    input channels, outputs, height, width, kernel height, kernel width, stride, padding),
    of an input of ``x_shape`` with ``channels`` channels in all (planted ones included)."""
    return (x_shape[0], channels, outputs, x_shape[2], x_shape[3], *kernel, stride, padding)


def resolve(name: str, device_type: str, dtype: torch.dtype, shape_key=None,
            work: str = "forward") -> str:
    """The name of the backend that runs for ``name`` on ``device_type`` tensors of ``dtype``.

    An explicit name is always honoured (ValueError saying why when it cannot run here);
    ``"auto"`` picks the fastest backend that can run, for the convolution of ``shape_key``
    doing ``work`` (autotune.WORKS: the forward alone, with the input gradient, or with every
    gradient).
    """
    key = (name, device_type, dtype, shape_key, work)
    choice = _resolved.get(key)
    if choice is None:
        choice = _resolved[key] = _resolve(name, device_type, dtype, shape_key, work)
    return choice


# Every call of planted_conv2d resolves its backend: the answers are kept (what can run on
# this machine does not change while it runs, and a layer's shape key recurs every step).
_resolved: dict = {}


def forget_choices():
    """Forgets every backend choice of this process (and the tuner's state): the next calls
    choose again, under the environment of then (PLANTOPS_AUTOTUNE, PLANTOPS_CACHE...)."""
    _resolved.clear()
    autotune.TUNER = autotune.Tuner()


def _resolve(name: str, device_type: str, dtype: torch.dtype, shape_key, work: str) -> str:
    if name == "auto":
        return _auto(device_type, dtype, shape_key, work)
    reason = get(name).unavailable_reason(device_type, dtype)
    if reason is not None:
        raise ValueError(
            f"backend {name!r} cannot run on {device_type} tensors of {dtype}: {reason}. "
            f"Available here for this input: {', '.join(_runnable(device_type, dtype)) or 'none'}; "
            f"or pass backend='auto'."
        )
    return name


# Under torch.compile the choice is made once, at trace time, and baked into the graph: it
# depends only on constants (names, device type, dtype, static shapes), never on tensor data.
# This is what torch.compiler.assume_constant_result does (torch 2.4-2.13 set this one
# attribute); calling it here would import dynamo, and with it triton, on `import plantops`
# (1.3 s, and it breaks a later TRITON_INTERPRET=1).
resolve._dynamo_marked_constant = True


def _runnable(device_type: str, dtype: torch.dtype) -> list[str]:
    return [n for n in NAMES if get(n).unavailable_reason(device_type, dtype) is None]


def _auto(device_type: str, dtype: torch.dtype, shape_key, work: str) -> str:
    if device_type == "cuda":
        # cuDNN through the composite: on an H100, at the search's shapes, the Triton and CUDA
        # kernels measured 0.3-0.9x of it forward+backward in eager mode (benchmarks/RESULTS.md).
        # A CUDA graph (the search's default on a GPU) removes the host overhead that set those
        # times; until the kernels are measured faster there, auto stays on cuDNN.
        return "torch"
    if "cpu" not in _runnable(device_type, dtype):
        return "torch"
    fixed = "cpu" if cpu_kernels_win(shape_key, work) else "torch"
    if shape_key is None or device_type != "cpu" or not autotune.enabled():
        return fixed
    # On a CPU the two are measured on this machine, once per shape and work (autotune).
    return autotune.TUNER.choose(
        work, dtype, shape_key, ["cpu", "torch"],
        lambda names, w, shape: autotune.measure(names, w, dtype, shape), fixed)


def relu_pool_cpu_runs(x: torch.Tensor) -> bool:
    """Whether relu_max_pool2d's C++ kernel can take ``x`` (in any layout): a float32 or
    float64 CPU tensor [N, C, H, W] with H, W >= 2, and the compiled plantops._C."""
    return (x.device.type == "cpu" and min(x.shape[2:]) >= 2
            and get("cpu").unavailable_reason("cpu", x.dtype) is None)


def relu_pool_backend(x: torch.Tensor) -> str:
    """relu_max_pool2d's auto choice: its C++ kernel for NCHW tensors it can take, where
    ATen's max_pool2d is 8-16x slower (benchmarks/test_bench_relu_pool.py); ATen elsewhere
    (channels-last CPU tensors, whose ATen kernel is vectorized over channels, and GPUs)."""
    return "cpu" if x.is_contiguous() and relu_pool_cpu_runs(x) else "torch"


def cpu_kernels_win(shape_key, work: str = "forward") -> bool:
    """Whether the C++ kernels beat oneDNN (the torch backend) for this shape on the CPU.

    Measured with benchmarks/test_bench_planted_conv.py and test_bench_teacher.py on 2-core
    AVX-512 and AVX2 machines (benchmarks/RESULTS.md). 3x3 stride-1 layers with a batch of 8
    or more run as Winograd (F(4x4, 3x3) from 32 channels, F(2x2, 3x3) below) and win at
    every width measured, up to 128 channels plus the planted ones (1.3-1.9x at C128 8x8
    forward+backward; Teacher[128]'s inference 2.4-3.2x, a plain Student[128] training step
    1.3-1.8x); wider ones are not measured. Other layers run the direct kernels, which win at
    planting's narrow layers (up to 20 channels, or up to 40 on maps of 32x32 and more) and
    lose to oneDNN's blocked GEMM on wider ones, except the forward of a 1x1 layer without
    padding, a matrix product (2.3-2.7x oneDNN's NCHW 1x1 convolution).
    """
    if shape_key is None:
        return True
    batch, channels, outputs, height, width, kh, kw, stride, padding = shape_key
    if (kh, kw) == (1, 1) and max(padding) == 0 and work == "forward":
        return True
    widest = max(channels, outputs)
    winograd = (kh, kw) == (3, 3) and tuple(stride) == (1, 1) and max(padding) <= 2 and batch >= 8
    if winograd:
        return widest <= 136
    return widest <= 20 or (widest <= 40 and height * width >= 1024)
