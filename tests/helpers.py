"""Cases and assertions shared by the tests: the kernels' (against the float64 reference) and
the search's (tiny data, a tiny search, the same result)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from plantops import planted_conv2d, reference_planted_conv2d
from plantops.data import DeviceData
from plantops.search.config import config_from_dict


def assert_close(got, ref, *, atol, rtol, name="tensor"):
    """Like torch.testing.assert_close, but says how many elements differ and where."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    bad = (got - ref).abs() > atol + rtol * ref.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        err = (got - ref).abs().max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ (max abs error "
            f"{err:.3g}, atol {atol:.3g}, rtol {rtol:.3g}); first at {idx}: "
            f"got {[got[tuple(i)].item() for i in idx]}, expected {[ref[tuple(i)].item() for i in idx]}")


def assert_close_to_reference(got, ref64, baseline, name="tensor", factor=2):
    """got (any dtype) against the float64 reference ref64, allowing ``factor`` times (twice
    unless said) the error that baseline (PyTorch's own result in got's dtype) makes against
    the same reference."""
    if got.dtype == torch.float64:
        assert_close(got, ref64, atol=1e-10, rtol=1e-9, name=name)
        return
    scale = ref64.abs().max().item() if ref64.numel() else 1.0
    err_baseline = (baseline.double().cpu() - ref64.double().cpu()).abs().max().item() if ref64.numel() else 0.0
    eps = torch.finfo(got.dtype).eps
    assert_close(got, ref64, atol=factor * err_baseline + 4 * eps * max(scale, 1.0), rtol=0, name=name)


# The bound of a convolution that the cpu module may compute as Winograd F(4x4, 3x3): on the
# shapes of these tests its float32 error measured 3-16x PyTorch's own in the forward and 8-26x
# in the input gradient (whose PyTorch error is smaller), at most 80 eps of the largest output;
# 48x is allowed (csrc/winograd_cpu.h). Every other kernel, and every weight gradient (always
# F(2x2, 3x3) or direct), is held to 2x.
F4_FACTOR = 48


def error_factors(backend, shape):
    """{name: factor} for assert_close_to_reference of the output and the gradients:
    F4_FACTOR where the backend's rule (under the current PLANTOPS_CPU_CONV) takes
    F(4x4, 3x3) for that convolution (the output: x into the filters; x's gradient: the
    filters into x), else 2."""
    n, i_f, i_p, o_f, o_p, h, w, k, s, p = shape
    c, o = i_f + i_p, o_f + o_p
    names = ("out", "x", "in_weight", "out_weight", "out_bias")  # the weights' are F(2x2, 3x3)
    if backend != "cpu" or k != 3 or s != 1 or os.environ.get("PLANTOPS_CPU_CONV") == "direct":
        return dict.fromkeys(names, 2)
    from plantops import _C
    factor = lambda cin, cout: F4_FACTOR if _C.winograd_tile(cin, cout) == 4 else 2
    return {**dict.fromkeys(names, 2), "out": factor(c, o), "x": factor(o, c)}


# (N, I_f, I_p, O_f, O_p, H, W, kernel, stride, padding)
SHAPES = [
    (2, 4, 3, 5, 2, 9, 11, 3, 1, 1),
    (1, 7, 1, 3, 3, 7, 7, 3, 1, 0),      # batch 1, odd everything
    (3, 33, 4, 8, 4, 8, 8, 3, 1, 1),     # 33 input channels
    (2, 8, 4, 33, 7, 5, 6, 5, 2, 2),     # kernel 5, stride 2
    (2, 3, 0, 6, 2, 10, 7, 1, 2, 0),     # kernel 1, no planted inputs
    (2, 5, 3, 4, 0, 6, 6, 3, 1, 1),      # no planted outputs
    (1, 1, 1, 1, 1, 1, 1, 1, 1, 0),      # sizes 1
    (2, 6, 2, 3, 1, 33, 33, 3, 1, 1),    # 33x33 map
    (2, 8, 4, 8, 4, 12, 12, 3, 2, 1),    # stride 2, padding 1
]


def make_inputs(shape, dtype=torch.float64, bias=True):
    n, i_f, i_p, o_f, o_p, h, w, k, s, p = shape
    t = dict(
        x=torch.randn(n, i_f + i_p, h, w, dtype=dtype),
        frozen_weight=torch.randn(o_f, i_f, k, k, dtype=dtype),
        frozen_bias=torch.randn(o_f, dtype=dtype) if bias else None,
        out_weight=torch.randn(o_p, i_f + i_p, k, k, dtype=dtype) if o_p else None,
        out_bias=torch.randn(o_p, dtype=dtype) if (o_p and bias) else None,
        in_weight=torch.randn(o_f, i_p, k, k, dtype=dtype) if i_p else None,
    )
    return t, dict(stride=s, padding=p)


TRAINABLE = ("x", "in_weight", "out_weight", "out_bias")


def run(fn, tensors, conv_args, grad_out=None, **kwargs):
    """Output and the gradients of TRAINABLE (None where a tensor is absent)."""
    leaves = {k: (v.detach().clone().requires_grad_(k in TRAINABLE) if v is not None else None)
              for k, v in tensors.items()}
    out = fn(**leaves, **conv_args, **kwargs)
    if grad_out is None:
        return out, None
    wrt = [leaves[k] for k in TRAINABLE if leaves[k] is not None]
    grads = iter(torch.autograd.grad(out, wrt, grad_out))
    return out, {k: (next(grads) if leaves[k] is not None else None) for k in TRAINABLE}


def run_split(backend, tensors, conv_args, grad_out, frozen_needs_grad):
    """planted_conv2d with the planted input channels passed apart (x_planted): output and
    the gradients of x's two parts and of the planted blocks."""
    i_f = tensors["frozen_weight"].shape[1]
    leaves = {k: (None if v is None else v.detach().clone().requires_grad_(k in TRAINABLE))
              for k, v in tensors.items() if k != "x"}
    x_frozen = tensors["x"][:, :i_f].detach().clone().requires_grad_(frozen_needs_grad)
    x_planted = tensors["x"][:, i_f:].detach().clone().requires_grad_()
    out = planted_conv2d(x_frozen, **leaves, **conv_args, backend=backend, x_planted=x_planted)
    names = ["x_planted"] + (["x_frozen"] if frozen_needs_grad else []) + \
        [k for k in TRAINABLE[1:] if leaves[k] is not None]
    given = dict(leaves, x_frozen=x_frozen, x_planted=x_planted)
    grads = torch.autograd.grad(out, [given[k] for k in names], grad_out)
    return out, dict(zip(names, grads)), (x_frozen, x_planted)


def reference_case(shape, rounded_to=None):
    """make_inputs(shape), a random output gradient, and the float64 reference's output and
    gradients (run's). With ``rounded_to``, the inputs and the output gradient are first
    rounded to that dtype (and kept in float64)."""
    tensors64, conv_args = make_inputs(shape)
    if rounded_to is not None:
        tensors64 = {k: (None if v is None else v.to(rounded_to).double())
                     for k, v in tensors64.items()}
    out, _ = run(reference_planted_conv2d, tensors64, conv_args)
    grad_out = torch.randn_like(out)
    if rounded_to is not None:
        grad_out = grad_out.to(rounded_to).double()
    ref_out, ref_grads = run(reference_planted_conv2d, tensors64, conv_args, grad_out)
    return tensors64, conv_args, grad_out, ref_out, ref_grads


def check_against_reference(backend, shape, dtype, device, rel_tol, split=False):
    """Output and every gradient of ``backend`` on ``device`` in ``dtype`` against the
    float64 reference, within ``rel_tol`` of each tensor's largest reference value. With
    ``split``, the planted input channels go in as ``x_planted`` and only they need a
    gradient (the search's reading layer).

    The reference runs on the inputs as rounded to ``dtype``, so the tolerance bounds the
    backend's own error (accumulation, output rounding), not the inputs' rounding: in float16
    a bias gradient over 2,178 rounded output gradients is off by 0.01 from the unrounded sum
    whatever the kernel does."""
    tensors64, conv_args, grad_out, ref_out, ref_grads = reference_case(shape, dtype)
    low = {k: (None if v is None else v.to(device, dtype)) for k, v in tensors64.items()}
    if split:
        out, grads, _ = run_split(backend, low, conv_args, grad_out.to(device, dtype), False)
        ref_grads = dict(ref_grads, x_planted=ref_grads["x"][:, shape[1]:])
    else:
        out, grads = run(planted_conv2d, low, conv_args, grad_out.to(device, dtype),
                         backend=backend)

    def check(got, ref, name):
        scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
        assert_close(got, ref, atol=rel_tol * scale, rtol=0, name=name)

    check(out, ref_out, f"{backend} output")
    for k in (grads if split else TRAINABLE):
        if ref_grads[k] is None:
            assert grads[k] is None
        else:
            check(grads[k], ref_grads[k], f"{backend} grad {k}")


def check_backend(backend, shape, dtype, transform=lambda t: t):
    """Output and every gradient of ``backend`` in ``dtype`` against the float64 reference,
    within twice the error PyTorch's own ``dtype`` result makes (assert_close_to_reference;
    F4_FACTOR times for a convolution the backend computes as Winograd F(4x4, 3x3))."""
    tensors64, conv_args, grad_out, ref_out, ref_grads = reference_case(shape)
    low = {k: (None if v is None else v.to(dtype)) for k, v in tensors64.items()}
    base_out, base_grads = run(reference_planted_conv2d, low, conv_args, grad_out.to(dtype))
    low["x"] = transform(low["x"])
    out, grads = run(planted_conv2d, low, conv_args, grad_out.to(dtype), backend=backend)
    assert out.dtype == dtype and out.shape == ref_out.shape
    factors = error_factors(backend, shape)
    assert_close_to_reference(out, ref_out, base_out, name=f"{backend} output",
                              factor=factors["out"])
    for k in TRAINABLE:
        if ref_grads[k] is None:
            assert grads[k] is None
            continue
        assert_close_to_reference(grads[k], ref_grads[k], base_grads[k], name=f"{backend} grad {k}",
                                  factor=factors[k])


def check_split(backend, shape, dtype, frozen_needs_grad):
    """x_planted: the same output and gradients as the float64 reference on
    cat([x, x_planted]), within twice PyTorch's own error in ``dtype`` (see check_backend)."""
    tensors64, conv_args, grad_out, ref_out, ref = reference_case(shape)
    i_f = shape[1]
    low = {k: (None if v is None else v.to(dtype)) for k, v in tensors64.items()}
    base_out, base = run(reference_planted_conv2d, low, conv_args, grad_out.to(dtype))
    out, grads, _ = run_split(backend, low, conv_args, grad_out.to(dtype), frozen_needs_grad)
    factors = error_factors(backend, shape)
    assert_close_to_reference(out, ref_out, base_out, name="split output", factor=factors["out"])
    expected = {"x_planted": (ref["x"][:, i_f:], base["x"][:, i_f:]),
                "x_frozen": (ref["x"][:, :i_f], base["x"][:, :i_f])}
    expected.update({k: (ref[k], base[k]) for k in TRAINABLE[1:]})
    for name, got in grads.items():
        assert_close_to_reference(got, *expected[name], name=f"{backend} split grad {name}",
                                  factor=factors["x" if name.startswith("x_") else name])
    assert ("x_frozen" in grads) == frozen_needs_grad


# ----------------------------------------------------------------------------- the search's

CLASSES = ["cat", "dog", "frog"]


def write_image_folder(root, per_class=(6, 2), size=32, fmt="PNG"):
    """An image folder of CLASSES (train/<class>/*, test/<class>/*): ``per_class`` images a
    class in each split, random pixels with the class in the red channel."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for ci, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., 0] = ci * 100  # class visible in the red channel
                Image.fromarray(pixels).save(root / split / cls / f"{i:04d}.png", fmt)
    return root


# A search small enough for a test: 4-wide teacher, 3-wide student, 1 channel per candidate.
# Enough training that the candidates' losses differ by clear margins (0.005 or more): the
# tests compare choices, and choices between near-ties would hang on rounding.
TINY_SEARCH = dict(dataset="folder", device="cpu", seed=0, train_subset=0, val_size=6,
                   teacher_width=4, teacher_epochs=4, init_width=3, init_epochs=4,
                   plant_channels=1, plant_epochs=2, max_rounds=2, batch_size=8, lr=0.1,
                   download=False)


def tiny_config(data_dir, out, **overrides):
    """The Config of TINY_SEARCH on the image folder ``data_dir``, writing to ``out``."""
    values = dict(TINY_SEARCH, data=str(data_dir), out=str(out),
                  cache_dir=str(out.parent / "cache"))
    values.update(overrides)
    return config_from_dict(values).validate()


def tiny_data(n, seed=0, size=32):
    """``n`` random 3-channel images of ``size`` and labels of 10 classes, on the CPU."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return DeviceData(images, labels, torch.device("cpu"), (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def same_result(got, want, rel=1e-5):
    """Two searches' results are the same: the same choices and widths, and the same test and
    validation losses within ``rel`` (1e-5 in one process; the ranks of a torchrun job sum in
    another order)."""
    assert [r["layer"] for r in got["rounds"]] == [r["layer"] for r in want["rounds"]]
    for key in ("teacher", "initial", "final"):
        assert got[key]["widths"] == want[key]["widths"], key
        assert got[key]["test_loss"] == pytest.approx(want[key]["test_loss"], rel=rel), key
        assert got[key]["val_loss"] == pytest.approx(want[key]["val_loss"], rel=rel), key
