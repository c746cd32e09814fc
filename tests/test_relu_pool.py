"""relu_max_pool2d against F.max_pool2d(F.relu(x), 2) in float64: output and gradient, on odd
shapes, ties, windows that are all negative, and NaN; on every backend this machine runs."""

import pytest
import torch

from plantops.relu_pool import reference_relu_max_pool2d, relu_max_pool2d

BACKENDS = ["torch", "cpu"]
SHAPES = [(2, 3, 8, 8), (3, 5, 7, 9), (1, 1, 2, 2), (2, 4, 33, 16), (5, 2, 3, 2), (4, 7, 16, 6)]


def run(fn, x, grad):
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf)
    (g,) = torch.autograd.grad(out, leaf, grad)
    return out, g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_max_pool_of_relu(backend, dtype, shape):
    x = torch.randn(shape, dtype=torch.float64)
    x[0, 0, :2, :2] = -1.0                 # a window with no positive value: no gradient
    x[..., 0, :2] = x[..., 0, :2].round()  # ties: the first maximum takes the gradient
    x[-1, -1, -2:, :2] = 0.5
    x = x.to(dtype)
    grad = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2, dtype=dtype)
    out, g = run(lambda t: relu_max_pool2d(t, backend), x, grad)
    ref_out, ref_g = run(reference_relu_max_pool2d, x.double(), grad.double())
    # Selections, not sums: the values and gradients are copied exactly.
    assert out.dtype == dtype and torch.equal(out.double(), ref_out)
    assert torch.equal(g.double(), ref_g)


def test_nan_propagates_like_max_pool():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 0] = float("nan")
    assert torch.isnan(relu_max_pool2d(x, "cpu")[0, 0, 0, 0])
    assert torch.isnan(reference_relu_max_pool2d(x)[0, 0, 0, 0])


def test_auto_takes_the_kernel_for_nchw_cpu_tensors_only():
    from plantops.relu_pool import resolve
    x = torch.randn(2, 3, 8, 8)
    assert resolve("auto", x) == "cpu"
    assert resolve("auto", x.contiguous(memory_format=torch.channels_last)) == "torch"
    assert resolve("auto", x.half()) == "torch"


def test_channels_last_input_on_the_cpu_kernel():
    x = torch.randn(2, 3, 8, 6).contiguous(memory_format=torch.channels_last)
    assert torch.equal(relu_max_pool2d(x, "cpu"), reference_relu_max_pool2d(x))


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"expects a tensor \[N, C, H, W\], got \(3, 8, 8\)"):
        relu_max_pool2d(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="unknown backend 'cuda' for relu_max_pool2d"):
        relu_max_pool2d(torch.randn(1, 1, 4, 4), "cuda")
    with pytest.raises(ValueError, match="backend 'cpu' of relu_max_pool2d needs"):
        relu_max_pool2d(torch.randn(1, 1, 4, 4, dtype=torch.float16), "cpu")


@pytest.mark.parametrize("tile", ["auto", "winograd-f4"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(16, 3, 12, 32, 32, 1), (9, 5, 7, 16, 10, 1),
                                   (8, 4, 3, 10, 12, 0), (11, 2, 5, 6, 8, 2),
                                   (8, 3, 4, 7, 9, 1), (3, 4, 4, 8, 8, 1)], ids=str)
def test_conv_relu_pool_folds_the_pool_into_the_convolution_bit_for_bit(dtype, shape, tile,
                                                                        monkeypatch):
    """The frozen layer's fused forward (Winograd tiles as pool windows, where the batch is
    8 or more and the output size even; the composite elsewhere) equals
    relu_max_pool2d(planted_conv2d(...)) exactly: the same sums, then the same selections.
    Also with F(4x4, 3x3) tiles, which hold 2x2 windows each, and maps whose size is even but
    not a multiple of 4 (a last tile half outside)."""
    monkeypatch.setenv("PLANTOPS_CPU_CONV", tile)
    from plantops import kernels, planted_conv2d
    from plantops.relu_pool import conv_relu_max_pool2d
    cpu = kernels.get("cpu")
    fused = []
    real = cpu.forward_relu_pool
    monkeypatch.setattr(cpu, "forward_relu_pool",
                        lambda *a, **k: fused.append(real(*a, **k)) or fused[-1])
    n, c, o, h, w, pad = shape
    x, weight, bias = (torch.randn(n, c, h, w, dtype=dtype), torch.randn(o, c, 3, 3, dtype=dtype),
                       torch.randn(o, dtype=dtype))
    got = conv_relu_max_pool2d(x, weight, bias, 1, pad)
    want = relu_max_pool2d(planted_conv2d(x, weight, bias, padding=pad))
    assert got.shape == want.shape and torch.equal(got, want)
    even = (h + 2 * pad - 2) % 2 == 0 and (w + 2 * pad - 2) % 2 == 0
    if n >= 8:  # the fused kernel ran where it applies, and only there
        assert fused and (fused[-1] is not None) == even


@pytest.mark.parametrize("tile", ["auto", "winograd-f4", "direct"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(16, 3, 12, 32, 32, 3, 1, 1), (9, 5, 7, 16, 10, 3, 1, 1),
                                   (11, 2, 5, 6, 8, 3, 1, 2), (8, 3, 4, 9, 7, 3, 2, 1),
                                   (3, 4, 4, 8, 8, 3, 1, 1), (10, 6, 5, 7, 9, 5, 1, 2),
                                   (9, 4, 6, 8, 10, 1, 2, 0)], ids=str)
@pytest.mark.parametrize("residual, relu", [(True, True), (True, False), (False, True)])
def test_conv_add_relu_folds_the_shortcut_and_relu_into_the_convolution_bit_for_bit(
        dtype, shape, tile, residual, relu, monkeypatch):
    """A frozen layer's forward with a residual added and a ReLU (a ResNet block's end) on
    the CPU kernels (Winograd bands, the direct kernel's samples, the 1x1 matrix product)
    equals planted_conv2d, then the add, then the ReLU, exactly; negative values, zeros and
    NaN go through the ReLU as torch.relu takes them."""
    monkeypatch.setenv("PLANTOPS_CPU_CONV", tile)
    from plantops import planted_conv2d
    from plantops.relu_pool import conv_add_relu
    n, c, o, h, w, k, stride, pad = shape
    g = torch.Generator().manual_seed(n * c)
    x, weight, bias = (torch.randn(n, c, h, w, dtype=dtype, generator=g),
                       torch.randn(o, c, k, k, dtype=dtype, generator=g),
                       torch.randn(o, dtype=dtype, generator=g))
    want = planted_conv2d(x, weight, bias, stride=stride, padding=pad, backend="cpu")
    add = torch.randn(want.shape, dtype=dtype, generator=g) if residual else None
    if add is not None:
        add.view(-1)[::7] = -want.view(-1)[::7]  # some sums exactly zero
        add.view(-1)[3] = float("nan")
        want = want + add
    want = torch.relu(want) if relu else want
    got = conv_add_relu(x, weight, bias, stride, pad, add, relu, backend="cpu")
    assert got.shape == want.shape and torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
    assert got.isnan().sum() == want.isnan().sum()
    composite = conv_add_relu(x, weight, bias, stride, pad, add, relu, backend="torch")
    torch.testing.assert_close(composite, want, equal_nan=True,
                               **({} if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)))


def test_conv_add_relu_says_what_residual_it_needs():
    from plantops.relu_pool import conv_add_relu
    x, weight = torch.randn(8, 3, 6, 6), torch.randn(4, 3, 3, 3)
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match=r"must have its shape \(8, 4, 6, 6\)"):
            conv_add_relu(x, weight, None, 1, 1, torch.randn(8, 4, 6, 5), True, backend)


def test_a_networks_frozen_forward_is_its_forward():
    from plantops import models
    for arch, size in (("cifar", 32), ("stl", 96)):
        net = models.PlantNet([5, 4, 6, 3, 4], arch).double().eval()
        x = torch.randn(9, 3, size, size, dtype=torch.float64)
        torch.testing.assert_close(net.frozen_forward(x), net(x), rtol=1e-10, atol=1e-12)
