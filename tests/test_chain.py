"""Planting on any chain (plantops/chain.py): a user's VGG-style network with batch norm,
strides, 5x5 kernels, average pooling, GELU and dropout. The round op against a float64
reference of each candidate alone; a candidate before training equals its parent; the frozen
parameters and batch-norm statistics do not change in a round; export equals the trained
network; and each refusal has its one-line error."""

import copy

import pytest
import torch
from torch import nn

from plantops import chain as chains
from plantops import planting
from plantops.chain import Chain, ChainError
from plantops.planted_batch_norm import PlantedBatchNorm
from plantops.planting import export, merge, plant
from plantops.search.networks import check_student
from plantops.planted_round import PlantedRound


def vgg_bn(size=20, classes=7):
    """A small VGG-style chain with every kind of module between its layers."""
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(5, 4, 5, stride=2, padding=2), nn.BatchNorm2d(4), nn.GELU(),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding="same"), nn.LeakyReLU(0.1)),
        nn.AvgPool2d(2), nn.Dropout(0.3),
        nn.Conv2d(6, 3, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.BatchNorm1d(12), nn.Linear(12, 9), nn.Tanh(), nn.Identity(), nn.Linear(9, classes))


def trained_stats(net: Chain, size=20):
    """Gives every batch norm running statistics that are not the defaults."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, size, size, dtype=next(net.parameters()).dtype))
    return net.eval()


def parent64():
    torch.manual_seed(0)
    return trained_stats(Chain.of(vgg_bn(), "vgg_bn").double())


def test_the_chain_computes_the_sequential():
    torch.manual_seed(0)
    seq = vgg_bn().eval()
    net = Chain.of(seq, "vgg_bn").eval()
    x = torch.randn(4, 3, 20, 20)
    torch.testing.assert_close(net(x), seq(x))
    torch.testing.assert_close(net.frozen_forward(x), seq(x), rtol=1e-5, atol=1e-5)
    assert net.layer_names() == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    assert net.points == [0, 1, 2, 3, 4] and net.num_classes == 7


@pytest.mark.parametrize("layer", range(5))
def test_a_candidate_before_training_equals_its_parent(layer):
    parent = parent64()
    x = torch.randn(5, 3, 20, 20, dtype=torch.float64)
    candidate = plant(parent, layer, 3, "preserve", torch.Generator().manual_seed(1))
    torch.testing.assert_close(candidate.eval()(x), parent(x), rtol=0, atol=1e-12)
    candidate.train()  # its frozen batch norms stay on their statistics, dropout off
    torch.testing.assert_close(candidate(x), parent(x), rtol=0, atol=1e-12)
    reader_in = chains.in_features(candidate.layer(layer + 1))
    assert reader_in > chains.in_features(parent.layer(layer + 1))


def reference(candidate: Chain, layer: int, x):
    """The candidate's logits and the gradients of sum(logits^2) for its planted parameters,
    from its own modules with plain autograd (train mode: its planted batch norm on the
    batch's statistics)."""
    candidate = copy.deepcopy(candidate).train()
    logits = candidate(x)
    params = planting.planted_parameters(candidate)
    return logits, torch.autograd.grad(logits.square().sum(), params)


@pytest.mark.parametrize("layers", [range(5), [0, 3], [4], [1, 2]], ids=str)
def test_round_matches_each_candidate_in_float64(layers):
    parent = parent64()
    candidates = {layer: plant(parent, layer, 2, "random", torch.Generator().manual_seed(layer))
                  for layer in layers}
    round_op = PlantedRound(parent, candidates).train()
    x = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    refs = {layer: reference(c, layer, x) for layer, c in candidates.items()}
    logits = round_op(x)
    grads = torch.autograd.grad(logits.square().sum(), round_op.parameters())
    assert logits.shape == (3 * len(candidates), 7)
    at = 0
    for i, (layer, candidate) in enumerate(candidates.items()):
        ref_logits, ref_grads = refs[layer]
        torch.testing.assert_close(logits[3 * i:3 * (i + 1)], ref_logits, rtol=1e-9, atol=1e-10)
        for got, want in zip(grads[at:at + len(ref_grads)], ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
        at += len(ref_grads)
    assert at == len(grads)


def test_a_round_changes_no_frozen_parameter_or_statistic():
    parent = parent64()
    frozen = {k: v.clone() for k, v in parent.state_dict().items()}
    candidates = {layer: plant(parent, layer, 2, "small", torch.Generator().manual_seed(layer))
                  for layer in range(5)}
    round_op = PlantedRound(parent, candidates).train()
    opt = torch.optim.SGD(round_op.parameters(), lr=0.1, momentum=0.9)
    planted_bn = [m for c in candidates.values() for m in c.modules()
                  if isinstance(m, PlantedBatchNorm)]
    stats_before = [m.planted.running_mean.clone() for m in planted_bn]
    for _ in range(3):
        opt.zero_grad()
        round_op(torch.randn(6, 3, 20, 20, dtype=torch.float64)).square().mean().backward()
        opt.step()
    for layer, candidate in candidates.items():
        merged = merge(candidate).state_dict()
        for name, value in frozen.items():
            region = merged[name][tuple(slice(0, s) for s in value.shape)] if value.dim() \
                else merged[name]
            assert torch.equal(region, value), (layer, name)
    # the planted channels' own batch norms did learn their statistics
    assert any(not torch.equal(m.planted.running_mean, before)
               for m, before in zip(planted_bn, stats_before))


def test_export_equals_the_trained_network_and_keeps_the_users_layout():
    parent = parent64().float()
    candidate = plant(parent, 1, 3, "random", torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in candidate.modules():
            if isinstance(m, PlantedBatchNorm):
                m.planted.running_mean.uniform_(-1, 1)
    candidate.eval()
    exported = export(candidate).eval()
    x = torch.randn(4, 3, 20, 20)
    torch.testing.assert_close(exported(x), candidate(x), rtol=1e-5, atol=1e-6)
    assert [type(m) for m in exported.modules()] == [type(m) for m in vgg_bn().modules()]
    assert exported[4].out_channels == 7 and exported[5].num_features == 7
    assert all(type(m).__module__.startswith("torch.nn") for m in exported.modules())
    # the user's state-dict names, so their own code loads it into a wider copy
    assert set(exported.state_dict()) == set(vgg_bn().state_dict())


def test_flattened_planted_channels_grow_the_batch_norm_and_reader_by_their_positions():
    grown = plant(parent64(), 3, 2)
    bn1d = grown.body[grown.segment_range(3)[-1]]
    assert isinstance(bn1d, PlantedBatchNorm) and bn1d.planted_features == 2 * 4
    assert grown.layer(4).planted_in == 8


@pytest.mark.parametrize("module, message", [
    (nn.Linear(3, 4), "not an nn.Sequential"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2),
                   nn.Flatten(), nn.Linear(4, 2)), "groups=2"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.Flatten(), nn.Linear(4, 2)),
     "dilation"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                   nn.Flatten(), nn.Linear(4, 2)), "running statistics"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)), "put an nn.Flatten"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax(1), nn.Flatten(), nn.Linear(4, 2)),
     "'1' \\(Softmax\\) is not a layer plantops can plant"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.ReLU()), "at least two"),
])
def test_refusals_name_the_module_and_why(module, message):
    with pytest.raises(ChainError, match=message) as err:
        Chain.of(module, "mine")
    assert "\n" not in str(err.value)


def test_a_residual_block_is_refused():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    seq = nn.Sequential(nn.Conv2d(3, 4, 3), Block(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ChainError, match="'1' \\(Block\\).*residual block or a branch.*"
                                         "plantops.width_groups"):
        Chain.of(seq, "resnetish")


def test_a_network_that_fails_on_the_image_size_is_refused_naming_the_module():
    net = Chain.of(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)),
                   "mine")
    check_student(net, 3, 32, 2)
    with pytest.raises(ChainError, match="64x64 images.*module '2' \\(Linear\\)"):
        check_student(net, 3, 64, 2)
    with pytest.raises(ChainError, match="outputs 2 logits; the data has 10 classes"):
        check_student(net, 3, 32, 10)
