"""A trained module of the user's for inference through the planted kernels
(plantops/inference.py): the same logits as the module itself, every convolution converted
where the kernels compute it, batch norms folded, ReLU + 2x2 max pool fused, and what
torch.fx cannot trace run as it is."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plantops.inference import FrozenConv2d, for_inference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.resnet import resnet  # noqa: E402


def trained(module, size, dtype=torch.float32):
    """``module`` with batch norms that hold statistics of their own, in eval mode."""
    torch.manual_seed(0)
    module = module.to(dtype).train()
    with torch.no_grad():
        for _ in range(2):
            module(torch.rand(16, 3, size, size, dtype=dtype))
    return module.eval()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("size", [32, 64])
def test_a_resnet_gives_its_own_logits_with_every_conv_through_the_kernels(size, dtype, tol):
    net = trained(resnet(8, 10, size), size, dtype)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = for_inference(net)
    assert fast.note is None and fast.reads_nchw
    convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert sum(isinstance(m, FrozenConv2d) for m in fast.modules()) == convs
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in fast.modules())
    x = torch.rand(9, 3, size, size, dtype=dtype)  # an odd batch
    with torch.no_grad():
        want = net(x)
    got = fast(x)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # untouched


def test_relu_and_a_2x2_max_pool_after_a_conv_fold_into_it():
    net = trained(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                                nn.MaxPool2d(2), nn.Conv2d(5, 4, 3, padding=1), nn.ReLU(),
                                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)), 32,
                  torch.float64)
    fast = for_inference(net)
    pooled = [m.pool for m in fast.modules() if isinstance(m, FrozenConv2d)]
    assert pooled == [True, True]
    assert not any(isinstance(m, (nn.MaxPool2d, nn.ReLU)) for m in fast.modules())
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-10, atol=1e-12)


def test_convolutions_the_kernels_do_not_compute_stay_as_they_are():
    net = trained(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(6, 6, 3, padding=1, groups=3),
                                nn.Conv2d(6, 6, 3, padding=2, dilation=2),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)), 16,
                  torch.float64)
    fast = for_inference(net)
    assert sum(isinstance(m, FrozenConv2d) for m in fast.modules()) == 1
    assert sum(type(m) is nn.Conv2d for m in fast.modules()) == 2
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-10, atol=1e-12)


def test_a_module_fx_cannot_trace_runs_as_it_is_and_says_why():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = self.conv(x)
            if h.mean() > 0:  # data-dependent control flow: not traceable
                h = -h
            return self.fc(h.mean((2, 3)))

    net = Branchy().eval()
    fast = for_inference(net)
    assert fast.note.startswith("torch.fx cannot trace it (") and not fast.reads_nchw
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fast(x), net(x))


def test_it_stays_frozen_and_in_eval_mode():
    net = trained(resnet(4, 3, 32), 32)
    fast = for_inference(net).train()
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert not fast(x).requires_grad
