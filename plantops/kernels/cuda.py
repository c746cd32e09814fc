"""The ``cuda`` backend: CUDA C++ kernels (csrc/planted_conv_cuda.cu).

Built by ``pip install -e .`` where a CUDA toolkit is found (module ``plantops._cuda``, CUDA
runtime linked statically). Kernels run on the caller's current stream.
"""

from __future__ import annotations

import torch

from plantops.kernels import _native, joined

NAME = "cuda"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def unavailable_reason(device_type: str, dtype: torch.dtype) -> str | None:
    if device_type != "cuda":
        return "it runs on CUDA tensors only"
    if dtype not in _DTYPES:
        return "it supports float32, float64, float16 and bfloat16 only"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return _native.load("plantops._cuda")[1]


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


# The CUDA kernels read every input channel from one tensor: x_planted is joined to x first.

def forward(x, *args, x_planted=None):
    module = _native.load("plantops._cuda")[0]
    with torch.cuda.device(x.device):
        return _native.forward(module, _stream(), joined(x, x_planted), *args)


def backward(grad_out, x, *args, x_planted=None):
    module = _native.load("plantops._cuda")[0]
    with torch.cuda.device(grad_out.device):
        return _native.backward(module, _stream(), grad_out, joined(x, x_planted), *args)
