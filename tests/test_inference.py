"""A trained module of the user's for inference through the planted kernels
(plantops/inference.py): the same logits as the module itself, every convolution converted
where the kernels compute it, batch norms folded, ReLU + 2x2 max pool fused, and what
torch.fx cannot trace run as it is."""

import operator
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


def test_a_residual_add_and_relu_fold_into_the_conv_before_them():
    net = trained(resnet(8, 10, 32), 32, torch.float64)
    fast = for_inference(net)
    convs = {n: m for n, m in fast.module.named_modules() if isinstance(m, FrozenConv2d)}
    assert {n for n, m in convs.items() if m.residual} == {f"stages.{i}.conv2" for i in range(3)}
    assert {n for n, m in convs.items() if m.relu} == {
        "stem.0", *(f"stages.{i}.conv{j}" for i in range(3) for j in (1, 2))}
    ops = [node.target for node in fast.module.graph.nodes if node.op == "call_function"]
    assert not any(op in (torch.relu, torch.add) or getattr(op, "__name__", "") == "add"
                   for op in ops)  # what is left: the normalisation's sub and div


class TwoPaths(nn.Module):
    """An add of two convs of one input (the second computed after the first), a ReLU,
    and an add that broadcasts a per-channel offset."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.offset = nn.Parameter(torch.randn(1, 6, 1, 1))
        self.c = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x) + self.b(x))
        return (self.c(h) + self.offset[:, :4]).mean((2, 3))


def test_adds_of_any_two_inputs_fold_and_broadcasting_adds_stay_exact():
    net = trained(TwoPaths(), 12, torch.float64)
    fast = for_inference(net)
    assert sum(isinstance(m, FrozenConv2d) and m.residual for m in fast.modules()) == 2
    x = torch.rand(5, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-10, atol=1e-12)


def test_a_batch_runs_in_chunks_that_keep_the_largest_activation_small(monkeypatch):
    import plantops.inference as inference
    net = trained(resnet(4, 3, 32), 32, torch.float64)
    fast = for_inference(net)
    x = torch.rand(37, 3, 32, 32, dtype=torch.float64)
    largest = 4 * 32 * 32 * 8  # the stem's output: 4 channels at 32x32, float64
    monkeypatch.setattr(inference, "CHUNK_BYTES", largest * 20)
    assert fast.images_per_chunk(x) == 16  # whole SIMD vectors of images, under the budget
    calls = []
    fast.module.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    with torch.no_grad():
        want = net(x)
    torch.testing.assert_close(fast(x), want, rtol=1e-10, atol=1e-12 * want.abs().max().item())
    assert calls == [16, 16, 5]
    monkeypatch.setattr(inference, "CHUNK_BYTES", 1)
    fast._chunks.clear()
    assert fast.images_per_chunk(x) == inference.CHUNK_STEP  # never fewer


class Features(nn.Module):
    """A conv whose output is returned as well as read by another conv, and a conv the
    graph calls twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        return h, self.c(self.c(self.b(h)))


def test_chunks_reuse_an_output_only_where_nothing_keeps_it(monkeypatch):
    """A conv read only by other convs writes each chunk's output over the last chunk's (no
    new memory per chunk); a conv whose output anything else reads, or that the graph calls
    twice, or the last one, allocates. Results of earlier calls stay as they were."""
    import plantops.inference as inference
    net = trained(resnet(4, 3, 32), 32)
    fast = for_inference(net)
    reusing = {n for n, m in fast.module.named_modules()
               if isinstance(m, FrozenConv2d) and m.reuse_output}
    # every conv but the last block's second (read by the pool); the stem's output is read
    # by the first block's shortcut add, folded into its conv2
    assert reusing == {"stem.0", "stages.0.conv1", "stages.0.conv2", "stages.1.conv1",
                       "stages.1.shortcut.0", "stages.1.conv2", "stages.2.conv1",
                       "stages.2.shortcut.0"}
    monkeypatch.setattr(inference, "CHUNK_BYTES", 1)  # chunks of 16
    x = torch.rand(40, 3, 32, 32)
    with torch.no_grad():
        want = net(x)
    first = fast(x)
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-4)
    kept = first.clone()
    second = fast(torch.rand(40, 3, 32, 32))
    assert torch.equal(first, kept) and not torch.equal(second, first)
    plain = trained(Features(), 8)
    feats = for_inference(plain)
    assert {n: feats.module.get_submodule(n).reuse_output for n in "abc"} == {
        "a": False, "b": True, "c": False}  # a is returned, c called twice
    x = torch.rand(40, 3, 8, 8)
    with torch.no_grad():
        for got, want in zip(feats(x), plain(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


class Affine(nn.Module):
    """Images converted and normalised by constants in several steps, as an adapter and a
    module's own normalisation do, and a step that is not affine."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([0.5, 2.0, 4.0]).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = (2.0 - (x * self.scale + 0.25)).div(self.scale) - self.mean
        h = self.conv(x / 3)  # one chain of six steps up to here
        return 1.0 / (h.abs() + 1.0) * self.scale[:, :1] + self.mean[:, :1]  # a chain of two


def test_chains_of_affine_steps_by_constants_fold_into_one():
    net = trained(Affine(), 8, torch.float64)
    fast = for_inference(net)
    folded = [m for m in fast.modules() if type(m).__name__ == "ChannelAffine"]
    assert len(folded) == 2
    ops = [n.target for n in fast.module.graph.nodes if n.op in ("call_function", "call_method")]
    assert ops == ["abs", operator.add, operator.truediv]  # a step alone; 1 / h is not affine
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast(x.float()), net(x.float()), rtol=1e-5, atol=1e-5)
    assert fast(x.float()).dtype == net(x.float()).dtype == torch.float64  # its buffers


def test_it_counts_the_parameters_and_flops_of_the_module_it_came_from():
    from plantops.planting import count_params, forward_flops
    pooled = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 16 * 16, 3))
    for net, size in ((trained(resnet(8, 10, 64), 64), 64), (trained(pooled, 32), 32)):
        fast = for_inference(net)
        assert count_params(fast) == count_params(net)
        assert forward_flops(fast, 3, size) == forward_flops(net, 3, size)
