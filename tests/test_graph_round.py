"""The round op (plantops/planted_round.py) on networks of any shape, in float64 on residual,
depthwise, squeeze-and-excitation, concatenating and random networks, every width group
planted at once: the round's logits and gradients are each candidate's alone, a default-start
candidate computes its parent's function, training through the round leaves every old
parameter and statistic bit-identical, and the exported network computes what the trained
candidate computes."""

import sys
from pathlib import Path

import pytest
import torch

from plantops import GraphNet, export, merge, plant
from plantops.planted_round import PlantedRound
from plantops.planting import count_params, from_scratch, planted_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.inception import student as inception  # noqa: E402
from tests.test_group_planting import NETWORKS, trained  # noqa: E402

ALL = {**NETWORKS, "inception-example": lambda: inception(4)}
COUNT = 3


def graph(name):
    return GraphNet.of(trained(ALL[name]()), name, (3, 16, 16))


def candidates(net, init="small"):
    return {p: plant(net, p, COUNT, init, torch.Generator().manual_seed(p))
            for p in net.plantable_points(include_linear=True)}


@pytest.mark.parametrize("name", ALL)
def test_the_round_is_each_candidate_alone(name):
    net = graph(name)
    cands = candidates(net)
    round_ = PlantedRound(net, cands).train()
    x = torch.rand(5, 3, 16, 16, dtype=torch.float64)
    out = round_(x)
    alone = torch.cat([c.train()(x) for c in cands.values()])
    torch.testing.assert_close(out, alone, atol=1e-12, rtol=1e-10)
    weights = torch.randn_like(out)
    got = torch.autograd.grad((out * weights).sum(), round_.parameters())
    ref = torch.autograd.grad((alone * weights).sum(), round_.parameters())
    assert len(got) == len(ref) > 0
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", ["resnet", "mobilenet-se", "inception", "random-1"])
def test_a_default_start_candidate_is_its_parent(name):
    net = graph(name)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        parent = net.eval()(x)
        out = PlantedRound(net, candidates(net, "preserve")).eval()(x)
    for part in out.split(len(x)):
        torch.testing.assert_close(part, parent, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", ["resnet", "mobilenet-se", "inception-example", "random-2"])
def test_training_the_round_changes_only_the_planted_parts_and_exports_what_it_trained(name):
    net = graph(name)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cands = candidates(net)
    round_ = PlantedRound(net, cands).train()
    params = round_.parameters()
    start = {point: [p.detach().clone() for p in planted_parameters(c)]
             for point, c in cands.items()}
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        round_(torch.rand(6, 3, 16, 16, dtype=torch.float64)).square().mean().backward()
        opt.step()
    changed = [point for point, cand in cands.items()
               if any(not torch.equal(a, b) for a, b in zip(start[point],
                                                             planted_parameters(cand)))]
    assert len(changed) >= len(cands) - 1  # (the new units of a small gate can start dead)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    for point, cand in cands.items():
        frozen = {k: v for k, v in cand.net.module.state_dict().items()
                  if "frozen" in k or not any(s in k for s in ("planted", "in_weight",
                                                               "out_weight", "out_bias"))}
        for key, value in frozen.items():  # a frozen tensor under its own name, unchanged
            plain_key = key.replace(".frozen_weight", ".weight").replace(".frozen_bias", ".bias")
            plain_key = plain_key.replace(".frozen.", ".").replace(".module.", ".")
            if plain_key in before and before[plain_key].shape == value.shape:
                assert torch.equal(value, before[plain_key]), (point, key)
        grown = export(cand).eval()
        assert type(grown) is type(net.net)
        with torch.no_grad():
            torch.testing.assert_close(grown(x), cand.eval()(x), atol=1e-12, rtol=1e-10)
        assert count_params(cand) == sum(p.numel() for p in grown.parameters())
        assert count_params(cand) > count_params(net)


def test_a_graph_network_merges_widens_and_starts_again():
    net = graph("resnet")
    point = net.points[1]
    cand = plant(net, point, COUNT)
    assert cand.widths[point] == net.widths[point] + COUNT and cand.is_planted()
    assert len(planted_parameters(cand)) > 0
    plain = merge(cand)
    assert not plain.is_planted() and plain.widths == cand.widths
    assert [g.name for g in plain.groups] == [g.name for g in net.groups]
    torch.manual_seed(0)
    fresh = from_scratch(cand)
    assert fresh.widths == cand.widths
    assert all(not torch.equal(a, b) for a, b in zip(fresh.net.parameters(),
                                                     plain.net.parameters()) if a.dim() > 1)
    with pytest.raises(ValueError, match="groups that can grow"):
        plant(net, 99, COUNT)


def test_a_chain_planted_as_a_graph_is_the_chains_candidate_and_round():
    """The chain is the graph's simplest case: a VGG-style nn.Sequential planted by its width
    groups gives, point by point, the chain's candidates (the same drawn weights), and the
    round op computes the same logits and gradients from either, bit for bit in float32."""
    from examples.vgg_bn import vgg_bn
    from plantops import Chain
    torch.manual_seed(0)
    seq = trained(vgg_bn(4)).float()
    chain, net = Chain.of(seq), GraphNet.of(seq, "vgg", (3, 16, 16))
    assert net.plantable_points(True) == chain.points
    draw = lambda p: torch.Generator().manual_seed(p)
    as_chain = {p: plant(chain, p, COUNT, "small", draw(p)) for p in chain.points}
    as_graph = {p: plant(net, p, COUNT, "small", draw(p)) for p in chain.points}
    for p in chain.points:
        for a, b in zip(planted_parameters(as_chain[p]), planted_parameters(as_graph[p]),
                        strict=True):
            assert torch.equal(a, b), p
    x = torch.rand(5, 3, 16, 16)
    rounds = [PlantedRound(chain, as_chain).train(), PlantedRound(net, as_graph).train()]
    outs = [r(x) for r in rounds]
    assert torch.equal(outs[1], outs[0])
    weights = torch.randn_like(outs[0])
    grads = [torch.autograd.grad((out * weights).sum(), r.parameters())
             for out, r in zip(outs, rounds)]
    for a, b in zip(*grads, strict=True):
        assert torch.equal(b, a)