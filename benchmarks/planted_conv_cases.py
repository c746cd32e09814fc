"""Setup factory for the planted-convolution benchmarks: one planting step's two layers.

A planting step touches two layers; three cases are benchmarked:
- ``outputs``: the layer being planted. Its input comes from frozen layers (no gradient);
  ``O_p`` new filters (and biases) train. A user would write two ``nn.Conv2d`` joined by
  ``torch.cat`` (the frozen one with requires_grad False), or one ``nn.Conv2d`` whose weight
  gradient a hook masks to the new rows.
- ``inputs``: the layer that reads it. Its input has ``I_p`` new channels and needs a
  gradient; the new input slices of its frozen filters train. A user would write a frozen
  conv over the old channels plus a trainable conv over the new ones, added; or one conv
  whose gradient a hook masks to the new columns.
- ``reader``: that layer as the search runs it. Its old channels come from frozen layers
  and need no gradient; only the ``I_p`` new ones do. plantops takes them apart
  (``x_planted``) and computes the input gradient for them alone; a user would write the
  split convs over the two parts (autograd then skips the frozen part too) or the masked
  conv over their concatenation.
Every implementation computes the same function on the same tensors.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from plantops import backends, planted_conv2d

BASELINES = ("split_convs", "masked_conv")
# The cpu backend with its algorithm forced (PLANTOPS_CPU_CONV), next to its own choice: for
# 3x3 stride-1 layers that is Winograd F(2x2, 3x3), so the direct kernels are measured too.
VARIANTS = {"plantops-cpu-direct": ("cpu", "direct")}


def implementations(device: str) -> list[str]:
    ours = [f"plantops-{b}" for b in backends(device)]
    variants = [name for name, (b, _) in VARIANTS.items() if f"plantops-{b}" in ours]
    return ours + variants + list(BASELINES)


@contextlib.contextmanager
def _cpu_algorithm(choice):
    """PLANTOPS_CPU_CONV=choice for the duration (None: leave it as it is)."""
    old = os.environ.get("PLANTOPS_CPU_CONV")
    if choice is not None:
        os.environ["PLANTOPS_CPU_CONV"] = choice
    try:
        yield
    finally:
        if choice is not None:
            if old is None:
                del os.environ["PLANTOPS_CPU_CONV"]
            else:
                os.environ["PLANTOPS_CPU_CONV"] = old


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_case(case: str, impl: str, batch: int, channels: int, size: int, planted: int,
              mode: str, device: str = "cpu", dtype=torch.float32):
    """A zero-argument callable that runs one forward (mode 'fwd') or forward+backward
    ('fwdbwd') of ``impl`` and synchronizes; the FLOPs of the useful work; and the fewest
    bytes any implementation must move to and from memory (each tensor read or written once)."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    k = 3
    if case == "outputs":
        i_f, i_p, o_f, o_p = channels, 0, channels, planted
    else:
        i_f, i_p, o_f, o_p = channels, planted, channels, 0
    x = rand(batch, i_f + i_p, size, size).requires_grad_(case == "inputs")
    # reader: the old channels need no gradient, the planted ones (a leaf of their own) do.
    x_old = x[:, :i_f].detach().clone()
    x_new = x[:, i_f:].detach().clone().requires_grad_(case == "reader")
    frozen_w, frozen_b = rand(o_f, i_f, k, k) * 0.1, rand(o_f) * 0.1
    in_w = rand(o_f, i_p, k, k).mul_(0.1).requires_grad_() if i_p else None
    out_w = rand(o_p, i_f + i_p, k, k).mul_(0.1).requires_grad_() if o_p else None
    out_b = rand(o_p).mul_(0.1).requires_grad_() if o_p else None
    grad_out = rand(batch, o_f + o_p, size, size)
    trainable = [t for t in (in_w, out_w, out_b) if t is not None]
    needs_grad = [x] if case == "inputs" else [x_new] if case == "reader" else []
    wrt = trainable + needs_grad

    backend, algorithm = VARIANTS.get(impl, (impl.removeprefix("plantops-"), None))
    if impl.startswith("plantops-"):

        def forward():
            if case == "reader":
                return planted_conv2d(x_old, frozen_w, frozen_b, in_w, out_w, out_b, 1, 1,
                                      backend, x_planted=x_new)
            return planted_conv2d(x, frozen_w, frozen_b, in_w, out_w, out_b, 1, 1, backend)
    elif impl == "split_convs":
        def forward():
            if case == "outputs":
                return torch.cat([F.conv2d(x, frozen_w, frozen_b, 1, 1),
                                  F.conv2d(x, out_w, out_b, 1, 1)], 1)
            old, new = (x_old, x_new) if case == "reader" else (x[:, :i_f], x[:, i_f:])
            return F.conv2d(old, frozen_w, frozen_b, 1, 1) + F.conv2d(new, in_w, None, 1, 1)
    elif impl == "masked_conv":
        conv = nn.Conv2d(i_f + i_p, o_f + o_p, k, padding=1, device=device, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([torch.cat([frozen_w, in_w], 1) if i_p else frozen_w,
                                         out_w.detach()] if o_p else
                                        [torch.cat([frozen_w, in_w.detach()], 1)], 0))
            conv.bias.copy_(torch.cat([frozen_b, out_b.detach()]) if o_p else frozen_b)
        mask = torch.zeros_like(conv.weight)
        if o_p:
            mask[o_f:] = 1
        else:
            mask[:, i_f:] = 1
        bias_mask = torch.zeros_like(conv.bias)
        bias_mask[o_f:] = 1
        conv.weight.register_hook(lambda g: g * mask)
        conv.bias.register_hook(lambda g: g * bias_mask)
        wrt = [conv.weight, conv.bias] + needs_grad

        def forward():
            return conv(torch.cat([x_old, x_new], 1) if case == "reader" else x)
    else:
        raise ValueError(f"unknown implementation {impl!r}")

    def run_fwd():
        with torch.no_grad(), _cpu_algorithm(algorithm):
            forward()
        _sync(device)

    def run_fwdbwd():
        with _cpu_algorithm(algorithm):
            torch.autograd.grad(forward(), wrt, grad_out)
        _sync(device)

    # FLOPs of the useful work: the forward conv, plus the planted-only backward.
    macs_fwd = batch * size * size * (o_f + o_p) * (i_f + i_p) * k * k
    grad_x_macs = {"inputs": (o_f + o_p) * (i_f + i_p), "reader": (o_f + o_p) * i_p}.get(case, 0)
    macs_bwd = batch * size * size * k * k * (o_p * (i_f + i_p) + o_f * i_p + grad_x_macs)
    flops = 2 * (macs_fwd + (macs_bwd if mode == "fwdbwd" else 0))
    weights = frozen_w.numel() + sum(t.numel() for t in trainable)
    elems = x.numel() + weights + grad_out.numel()  # read x and weights, write the output
    if mode == "fwdbwd":  # read grad_out, write the planted gradients (and grad_x)
        elems += grad_out.numel() + sum(t.numel() for t in trainable)
        elems += sum(t.numel() for t in needs_grad)
    def result():
        """The output and the input gradient (of sum(out^2)/2; None in the ``outputs`` case),
        so that tests can check that every implementation computes the same thing."""
        with _cpu_algorithm(algorithm):
            out = forward()
            grads = torch.autograd.grad(out.square().sum() / 2, needs_grad) if needs_grad else [None]
        return out.detach(), grads[0]

    fn = run_fwd if mode == "fwd" else run_fwdbwd
    fn.result = result
    return fn, flops, elems * x.element_size()
