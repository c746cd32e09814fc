"""The ``torch`` backend: the planted convolution composed of ATen ops.

This is the reference every other backend is tested against and the fallback on every device
(cuDNN on a GPU, oneDNN on the CPU). The forward assembles the whole weight (a few KB at
planting's sizes) and runs one convolution. The backward calls ``aten.convolution_backward``
with output masks, once per block that needs a gradient, so no gradient is ever computed for
the frozen block: the planted filters' gradient reads only their rows of ``grad_out``, and the
planted input slices' gradient reads only the planted input channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plantops.kernels import joined

NAME = "torch"


def unavailable_reason(device_type: str, dtype: torch.dtype) -> str | None:
    return None


def assemble_weight(frozen_weight, in_weight, out_weight):
    """The whole weight ``[[frozen, in], [out]]`` as one tensor ``[O_f+O_p, I_f+I_p, kh, kw]``."""
    return torch.cat([torch.cat([frozen_weight, in_weight], 1), out_weight], 0)


def assemble_bias(frozen_bias, out_bias, o_frozen, o_planted, like):
    if frozen_bias is None and out_bias is None:
        return None
    if frozen_bias is None:
        frozen_bias = like.new_zeros(o_frozen)
    if out_bias is None:
        out_bias = like.new_zeros(o_planted)
    return torch.cat([frozen_bias, out_bias])


def forward(x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias, stride, padding,
            x_planted=None):
    x = joined(x, x_planted)
    weight = assemble_weight(frozen_weight, in_weight, out_weight)
    bias = assemble_bias(frozen_bias, out_bias, frozen_weight.shape[0], out_weight.shape[0], x)
    return F.conv2d(x, weight, bias, stride, padding)


def _conv_backward(grad_out, x, weight, stride, padding, mask):
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, [weight.shape[0]] if mask[2] else None,
        list(stride), list(padding), [1, 1], False, [0, 0], 1, mask,
    )


def backward(grad_out, x, frozen_weight, in_weight, out_weight, stride, padding,
             x_channels, need_in_weight, need_out_weight, need_out_bias, x_planted=None):
    x = joined(x, x_planted)
    o_frozen, i_frozen = frozen_weight.shape[:2]
    grad_x = grad_in = grad_out_w = grad_out_b = None
    begin, end = x_channels
    if end > begin:
        # Only the weight columns of the asked channels take part.
        weight = assemble_weight(frozen_weight, in_weight, out_weight)[:, begin:end]
        grad_x = _conv_backward(grad_out, x[:, begin:end], weight, stride, padding,
                                [True, False, False])[0]
    if (need_out_weight or need_out_bias) and out_weight.shape[0] > 0:
        _, grad_out_w, grad_out_b = _conv_backward(
            grad_out[:, o_frozen:], x, out_weight, stride, padding,
            [False, need_out_weight, need_out_bias],
        )
    if need_in_weight and in_weight.shape[1] > 0 and o_frozen > 0:
        grad_in = _conv_backward(
            grad_out[:, :o_frozen], x[:, i_frozen:], in_weight, stride, padding,
            [False, True, False],
        )[1]
    # Empty blocks get empty (not missing) gradients, so callers need no special case.
    if need_in_weight and grad_in is None:
        grad_in = torch.zeros_like(in_weight)
    if need_out_weight and grad_out_w is None:
        grad_out_w = torch.zeros_like(out_weight)
    if need_out_bias and grad_out_b is None:
        grad_out_b = out_weight.new_zeros(out_weight.shape[0])
    return grad_x, grad_in, grad_out_w, grad_out_b
