"""Shared glue for the compiled backends (``plantops._C`` and ``plantops._cuda``).

Both modules take raw data pointers and a ``Geometry`` (csrc/planted_conv.h) rather than
tensors, so they do not depend on the torch they run under. This module builds the Geometry,
makes every tensor contiguous NCHW, and allocates the outputs; the backend modules only
choose the module, the thread count or stream, and the dtypes they accept.
"""

from __future__ import annotations

import functools
import importlib

import torch

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64",
                torch.float16: "float16", torch.bfloat16: "bfloat16"}


@functools.lru_cache(maxsize=None)
def load(module_name: str):
    """(module, None) when the compiled module imports, else (None, why not)."""
    try:
        return importlib.import_module(module_name), None
    except ImportError as err:
        return None, (f"the compiled module {module_name} is not importable ({err}); "
                      "build it with `pip install -e .` from the plantops checkout")


def dims(x_shape, frozen_shape, in_shape, out_shape, stride, padding) -> dict:
    """Every size of one planted convolution, from the shapes of x and the three weight
    blocks, named as in csrc/planted_conv.h's Geometry (plus C and O, the total input and
    output channels)."""
    n, c, h, w = x_shape
    o_f, i_f, kh, kw = frozen_shape
    o_p = out_shape[0]
    return dict(N=n, C=c, O=o_f + o_p, H=h, W=w, I_f=i_f, I_p=in_shape[1], O_f=o_f,
                O_p=o_p, KH=kh, KW=kw, SH=stride[0], SW=stride[1], PH=padding[0],
                PW=padding[1], OH=(h + 2 * padding[0] - kh) // stride[0] + 1,
                OW=(w + 2 * padding[1] - kw) // stride[1] + 1)


# A forward and its backward, and every step of a training loop, ask for the same few
# geometries: built once each (4.5 us to build one, 0.9 us to look it up; twice per forward
# and backward of a layer that takes 0.8 ms).
@functools.lru_cache(maxsize=1024)
def _geometry(module, x_shape, fw_shape, iw_shape, ow_shape, stride, padding):
    sizes = dims(x_shape, fw_shape, iw_shape, ow_shape, stride, padding)
    del sizes["C"], sizes["O"]  # derived in C++
    return module.Geometry(**sizes)


def ptr(t: torch.Tensor | None) -> int:
    """The data pointer of a contiguous tensor; 0 for None or an empty tensor."""
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


# forward and backward run on every call of every planted layer: they call .contiguous() (free
# when it already is) and ptr() one tensor at a time rather than through loops and containers,
# and allocate with empty_like where the kernel writes every element.

def forward(module, extra, x, frozen_weight, frozen_bias, in_weight, out_weight, out_bias,
            stride, padding, x_planted=None):
    """Runs ``module.forward``; ``extra`` is the trailing argument (threads or stream). With
    ``x_planted``, x holds the frozen input channels and x_planted the planted ones."""
    out, _ = _run_forward(module, "forward", 1, extra, x, frozen_weight, frozen_bias, in_weight,
                          out_weight, out_bias, stride, padding, x_planted)
    return out


def forward_relu_pool(module, extra, x, frozen_weight, frozen_bias, in_weight, out_weight,
                      out_bias, stride, padding, x_planted=None):
    """max_pool2d(relu(forward(...)), 2) in one pass of the module's kernels, or None where
    they do not compute it (not a Winograd layer, or an odd output size)."""
    out, done = _run_forward(module, "forward_relu_pool", 2, extra, x, frozen_weight, frozen_bias,
                             in_weight, out_weight, out_bias, stride, padding, x_planted)
    return out if done else None


def forward_add_relu(module, extra, x, frozen_weight, frozen_bias, in_weight, out_weight,
                     out_bias, stride, padding, residual, relu, x_planted=None, out=None):
    """relu(forward(...) + residual) (``residual`` None: nothing added; ``relu`` False: no
    ReLU), the add and the ReLU done by the kernels on outputs just written (csrc/epilogue.h).
    ``residual`` has the output's shape and dtype; ``out``, where given, is where the result
    is written (a contiguous tensor of its shape and dtype)."""
    out, _ = _run_forward(module, "forward_add_relu", 1, extra, x, frozen_weight, frozen_bias,
                          in_weight, out_weight, out_bias, stride, padding, x_planted,
                          epilogue=(residual, relu), out=out)
    return out


def check_residual(residual: torch.Tensor, out: torch.Tensor):
    """ValueError unless ``residual`` can be added to ``out`` in place: its shape and dtype."""
    if residual.shape != out.shape or residual.dtype != out.dtype:
        raise ValueError(f"the residual added to a convolution's output must have its shape "
                         f"{tuple(out.shape)} and dtype {out.dtype}, got "
                         f"{tuple(residual.shape)} and {residual.dtype}")


def check_out(out: torch.Tensor, shape, like: torch.Tensor):
    """ValueError unless ``out`` can take a result of ``shape`` computed from ``like``."""
    if (tuple(out.shape) != tuple(shape) or out.dtype != like.dtype
            or out.device != like.device or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {like.dtype} tensor of shape {tuple(shape)} "
                         f"on {like.device}, got {out.dtype} {tuple(out.shape)} on "
                         f"{out.device}{'' if out.is_contiguous() else ', not contiguous'}")


def _run_forward(module, kernel, pool, extra, x, frozen_weight, frozen_bias, in_weight,
                 out_weight, out_bias, stride, padding, x_planted, epilogue=None, out=None):
    """(the output, the answer) of ``module``'s forward kernel ``kernel``, which writes
    [N, O, OH / pool, OW / pool]; with ``epilogue`` (residual, relu), the kernel's arguments
    for them come before the output's."""
    x, fw, iw, ow = (x.contiguous(), frozen_weight.contiguous(), in_weight.contiguous(),
                     out_weight.contiguous())
    xp = None if x_planted is None else x_planted.contiguous()
    fb = None if frozen_bias is None else frozen_bias.contiguous()
    ob = None if out_bias is None else out_bias.contiguous()
    g = _geometry(module, x.shape, fw.shape, iw.shape, ow.shape, stride, padding)
    shape = (g.N, g.O_f + g.O_p, g.OH // pool, g.OW // pool)
    if out is None:
        out = x.new_empty(shape)
    else:
        check_out(out, shape, x)
    tail = ()
    if epilogue is not None:
        residual, relu = epilogue
        if residual is not None:
            check_residual(residual, out)
            residual = residual.contiguous()
        tail = (ptr(residual), bool(relu))
    done = None
    if out.numel() or pool > 1:
        done = getattr(module, kernel)(g, _DTYPE_NAMES[x.dtype], ptr(x), ptr(fw), ptr(fb),
                                       ptr(iw), ptr(ow), ptr(ob), ptr(xp), *tail,
                                       out.data_ptr(), extra)
    return out, done


def backward(module, extra, grad_out, x, frozen_weight, in_weight, out_weight, stride, padding,
             x_channels, need_in_weight, need_out_weight, need_out_bias, x_planted=None):
    grad_out, x, fw, iw, ow = (grad_out.contiguous(), x.contiguous(),
                               frozen_weight.contiguous(), in_weight.contiguous(),
                               out_weight.contiguous())
    xp = None if x_planted is None else x_planted.contiguous()
    g = _geometry(module, x.shape, fw.shape, iw.shape, ow.shape, stride, padding)
    dtype = _DTYPE_NAMES[x.dtype]
    grad_x = grad_in = grad_out_w = grad_out_b = None
    begin, end = x_channels
    fused = False
    if end > begin:
        grad_x = x.new_empty((g.N, end - begin, g.H, g.W))
    if (need_in_weight and end == g.I_f + g.I_p and begin <= g.I_f and iw.numel()
            and hasattr(module, "planted_input_grads")):
        # The input gradient and the planted input slices' weight gradient in one pass over
        # grad_out (the CPU module, where its Winograd kernels apply).
        grad_in = torch.empty_like(iw)
        fused = module.planted_input_grads(g, dtype, ptr(grad_out), ptr(x), ptr(fw), ptr(iw),
                                           ptr(ow), begin, ptr(xp), ptr(grad_x),
                                           grad_in.data_ptr(), extra)
    if end > begin and not fused:
        if grad_x.numel():
            module.input_grad(g, dtype, ptr(grad_out), ptr(fw), ptr(iw), ptr(ow), begin, end,
                              grad_x.data_ptr(), extra)
    # The weight-gradient kernels write every element of their outputs; where they do not run
    # (no samples, or an empty block) the gradients are zeros.
    if need_out_weight or need_out_bias:
        # Planted filters: output rows [O_f, O), every input channel.
        runs = g.N > 0 and ow.numel() > 0
        grad_out_w = torch.empty_like(ow) if runs else torch.zeros_like(ow)
        grad_out_b = (ow.new_empty if runs else ow.new_zeros)(g.O_p) if need_out_bias else None
        if runs:
            module.weight_grad(g, dtype, ptr(grad_out), ptr(x), g.O_f, g.O_f + g.O_p, 0,
                               g.I_f + g.I_p, ptr(xp), ptr(grad_out_w), ptr(grad_out_b), extra)
        grad_out_w = grad_out_w if need_out_weight else None
    if need_in_weight and not fused:
        # Planted input slices: frozen filters [0, O_f), planted input channels [I_f, C).
        runs = g.N > 0 and iw.numel() > 0
        if not runs:
            grad_in = torch.zeros_like(iw)
        else:
            if grad_in is None:
                grad_in = torch.empty_like(iw)
            module.weight_grad(g, dtype, ptr(grad_out), ptr(x), 0, g.O_f, g.I_f, g.I_f + g.I_p,
                               ptr(xp), ptr(grad_in), 0, extra)
    return grad_x, grad_in, grad_out_w, grad_out_b
