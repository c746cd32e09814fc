"""The ``cpu`` backend: C++ kernels (csrc/planted_conv_cpu.cpp), float32 and float64.

3x3 stride-1 layers run as Winograd over groups of samples (csrc/winograd_cpu.cpp: F(4x4, 3x3)
for the forward and input gradient of layers 32 wide or more, F(2x2, 3x3) otherwise and for
every weight gradient), other layers as direct convolutions, OpenMP over the batch; on as many
threads as ``torch.get_num_threads()``. The
kernels read ``x_planted`` where it lies, and compute the planted input channels' gradients
in one pass where they can. The module ``plantops._C`` is built by ``pip install -e .``.
"""

from __future__ import annotations

import torch

from plantops.kernels import _native

NAME = "cpu"
_DTYPES = (torch.float32, torch.float64)


def unavailable_reason(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type != "cpu":
        return "it runs on CPU tensors only"
    if dtype not in _DTYPES:
        return "it supports float32 and float64 only"
    return _native.load("plantops._C")[1]


# The kernels read x_planted where it lies (csrc/planes.h): no joined copy of the input.

def forward(*args, x_planted=None):
    module = _native.load("plantops._C")[0]
    return _native.forward(module, torch.get_num_threads(), *args, x_planted=x_planted)


def backward(*args, x_planted=None):
    module = _native.load("plantops._C")[0]
    return _native.backward(module, torch.get_num_threads(), *args, x_planted=x_planted)


def forward_relu_pool(*args, x_planted=None):
    """The forward's max_pool2d(relu(.), 2) in one pass, or None where it does not apply."""
    module = _native.load("plantops._C")[0]
    return _native.forward_relu_pool(module, torch.get_num_threads(), *args, x_planted=x_planted)
