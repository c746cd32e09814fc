"""The ``cpu`` backend: C++ kernels (csrc/planted_conv_cpu.cpp), float32 and float64.

3x3 stride-1 layers run as Winograd over groups of samples (csrc/winograd_cpu.cpp: F(4x4, 3x3)
for the forward and input gradient of layers 32 wide or more, F(2x2, 3x3) otherwise and for
every weight gradient), the forward of 1x1 layers as a matrix product, other layers as direct
convolutions, OpenMP over the batch; on as many threads as ``torch.get_num_threads()``. The
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

def forward(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding,
            x_planted=None):
    if frozen_weight.shape[2:] == (1, 1) and tuple(padding) == (0, 0):
        return _pointwise_forward(x, frozen_weight, frozen_bias, in_weight, out_weight,
                                  out_bias, stride, x_planted)
    module = _native.load("plantops._C")[0]
    return _native.forward(module, torch.get_num_threads(), x, frozen_weight, frozen_bias,
                           in_weight, out_weight, out_bias, stride, padding,
                           x_planted=x_planted)


def _pointwise_forward(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride,
                       x_planted, out=None):
    """A 1x1 convolution without padding as one batched matrix product, the assembled weight
    [O, C] times each sample's (strided) pixels [C, H' W'] (torch.matmul: the BLAS's GEMM,
    2.3-2.7x oneDNN's NCHW 1x1 convolution on a 2-core AMD EPYC): its direct kernel reads
    each pixel once per filter, with nothing to reuse between them."""
    x = x if x_planted is None else torch.cat([x, x_planted], 1)
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    n, c, h, w = x.shape
    top = torch.cat([frozen_weight[:, :, 0, 0], in_weight[:, :, 0, 0]], 1)
    weight = torch.cat([top, out_weight[:, :, 0, 0]], 0)
    if out is None:
        flat = torch.matmul(weight, x.reshape(n, c, h * w))
    else:
        _native.check_out(out, (n, weight.shape[0], h, w), x)
        flat = torch.matmul(weight, x.reshape(n, c, h * w), out=out.view(n, -1, h * w))
    biases = [b if b is not None and b.numel() else torch.zeros(rows, dtype=x.dtype)
              for b, rows in ((frozen_bias, frozen_weight.shape[0]),
                              (out_bias, out_weight.shape[0]))]
    flat += torch.cat(biases).view(1, -1, 1)
    return flat.view(n, -1, h, w)


def backward(*args, x_planted=None):
    module = _native.load("plantops._C")[0]
    return _native.backward(module, torch.get_num_threads(), *args, x_planted=x_planted)


def forward_add_relu(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride,
                     padding, residual, relu, x_planted=None, out=None):
    """relu(forward(...) + residual) with the add and the ReLU in the kernels' pass over their
    outputs (csrc/epilogue.h); a 1x1 layer without padding (a matrix product) adds them
    after. ``out``: where the result is written (see _native.forward_add_relu)."""
    if frozen_weight.shape[2:] == (1, 1) and tuple(padding) == (0, 0):
        y = _pointwise_forward(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias,
                               stride, x_planted, out)
        if residual is not None:
            y += residual
        return y.relu_() if relu else y
    module = _native.load("plantops._C")[0]
    return _native.forward_add_relu(module, torch.get_num_threads(), x, frozen_weight,
                                    frozen_bias, in_weight, out_weight, out_bias, stride,
                                    padding, residual, relu, x_planted=x_planted, out=out)


def forward_relu_pool(*args, x_planted=None):
    """The forward's max_pool2d(relu(.), 2) in one pass, or None where it does not apply."""
    module = _native.load("plantops._C")[0]
    return _native.forward_relu_pool(module, torch.get_num_threads(), *args, x_planted=x_planted)
