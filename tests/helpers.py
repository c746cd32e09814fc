"""Assertions shared by the kernel tests."""

import torch


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


def assert_close_to_reference(got, ref64, baseline, name="tensor"):
    """got (any dtype) against the float64 reference ref64, allowing twice the error that
    baseline (PyTorch's own result in got's dtype) makes against the same reference."""
    if got.dtype == torch.float64:
        assert_close(got, ref64, atol=1e-10, rtol=1e-9, name=name)
        return
    scale = ref64.abs().max().item() if ref64.numel() else 1.0
    err_baseline = (baseline.double().cpu() - ref64.double().cpu()).abs().max().item() if ref64.numel() else 0.0
    eps = torch.finfo(got.dtype).eps
    assert_close(got, ref64, atol=2 * err_baseline + 4 * eps * max(scale, 1.0), rtol=0, name=name)
