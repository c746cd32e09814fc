"""A planting round's training step on a network of the user's own: a VGG-style chain with
batch norm at 32x32 (examples/vgg_bn.py, width 8: the widths a search would start from),
plantops' round op on the engine against the straightforward PyTorch round, side by side in
one run.

    pytest benchmarks/test_bench_chain_round.py --benchmark-only

Both sides train the same candidates (4 channels planted into each of the three convs),
batch 128, on the teacher's cached logits, distillation loss, SGD with momentum and weight
decay. The straightforward round is what a user writes without plantops: each candidate a
full-size plain network (the parent's layers widened, nn.Conv2d / nn.BatchNorm2d), trained
one after another, with hooks that zero the gradient of every frozen entry (weight decay
applied in the hook too, so frozen weights stay put) and its batch norms in eval mode except
the grown one, which runs in training mode over all its channels (a full-size module cannot
freeze some of its channels' statistics: the same cost, a slightly different function).
Each measurement is one epoch: STEPS steps of every candidate.
"""

import sys
from pathlib import Path

import pytest
import torch

from plantops import engine
from plantops.chain import Chain
from plantops.data import ViewSchedule
from round_epochs import random_images, round_op_epoch, straightforward_epoch
from plantops.planted_round import PlantedRound
from plantops.planting import export, plant

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from vgg_bn import vgg_bn  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
STEPS = 6 if DEVICE.type == "cpu" else 50
BATCH, PLANTED, WD, LR = 128, 4, 5e-4, 0.05
IMPLS = ["straightforward", "plantops"]


def setting():
    data = random_images(STEPS * BATCH, DEVICE)
    torch.manual_seed(0)
    teacher = Chain.of(vgg_bn(32)).to(DEVICE).eval()
    parent = Chain.of(vgg_bn(8))
    parent.train()
    with torch.no_grad():  # batch norms with statistics of their own
        for _ in range(3):
            parent(torch.rand(64, 3, 32, 32))
    parent.eval()
    points = parent.plantable_points()
    candidates = {j: plant(parent, j, PLANTED, "small", torch.Generator().manual_seed(j))
                  for j in points}
    return data, teacher, parent, candidates


def straightforward(candidate: Chain, layer: int):
    """The candidate as a full-size plain network with gradient-masking hooks; its
    trainable parameters."""
    net = export(candidate).to(DEVICE)
    layers = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    grown, reader = layers[layer], layers[layer + 1]
    old_out = candidate.layer(layer).frozen_out
    old_in = candidate.layer(layer + 1).frozen_in
    masks = {}
    for m in net.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    masks[grown.weight] = torch.zeros_like(grown.weight).index_fill_(0, torch.arange(
        old_out, grown.weight.shape[0], device=DEVICE), 1)
    masks[grown.bias] = torch.zeros_like(grown.bias)
    masks[grown.bias][old_out:] = 1
    masks[reader.weight] = torch.zeros_like(reader.weight)
    masks[reader.weight][:, old_in:] = 1
    bn = net[list(net).index(grown) + 1]
    for p in (bn.weight, bn.bias):
        masks[p] = torch.zeros_like(p)
        masks[p][old_out:] = 1
    for p, mask in masks.items():
        p.requires_grad_(True)
        p.register_hook(lambda g, p=p, mask=mask: (g + WD * p.detach()) * mask)
    net.eval()
    bn.train()
    return net, list(masks)


def make_epoch(impl: str):
    data, teacher, parent, candidates = setting()
    views = ViewSchedule(data, BATCH, 1, seed=0)
    table = engine.teacher_logits(teacher, views)
    if impl == "straightforward":
        nets = [straightforward(c, layer) for layer, c in candidates.items()]
        return straightforward_epoch(nets, views, table, STEPS, LR, DEVICE)
    return round_op_epoch(PlantedRound(parent, candidates).train(), views, table, LR, BATCH)


def test_the_straightforward_round_trains_only_the_planted_entries():
    _, _, parent, candidates = setting()
    layer, candidate = next(iter(candidates.items()))
    net, params = straightforward(candidate, layer)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9)
    net(torch.rand(8, 3, 32, 32, device=DEVICE)).square().mean().backward()
    opt.step()
    frozen_conv = parent.layer(layer).weight
    torch.testing.assert_close(params[0][:frozen_conv.shape[0]], frozen_conv.to(DEVICE),
                               rtol=0, atol=0)
    assert not torch.equal(params[0], before[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_chain_round_step(benchmark, impl):
    epoch = make_epoch(impl)
    benchmark.group = "round step: VGG-BN[8] chain, 3 candidates, batch 128"
    benchmark.extra_info["steps"] = STEPS
    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
