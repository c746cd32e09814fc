"""A planting round's training step on a residual network of the user's own: a ResNet-8 at
width 8 (examples/resnet.py, the widths a search would start from) at 32x32, plantops' round
op (plantops/planted_round.py) on the engine against the straightforward PyTorch round, side by
side in one run.

    pytest benchmarks/test_bench_graph_round.py --benchmark-only

Both sides train the same candidates (4 channels planted into each of the six width groups:
the three residual widths, the three blocks' inner widths), batch 128, on the teacher's
cached logits, distillation loss, SGD with momentum and weight decay. The straightforward
round is what a user writes without plantops: each candidate the user's ResNet of the grown
widths, trained one after another, with hooks that zero the gradient of every frozen entry
(weight decay applied in the hook too, so frozen weights stay put), its batch norms in eval
mode except the grown ones, which run in training mode over all their channels (a full-size
module cannot freeze some of its channels' statistics: the same cost, a slightly different
function). Each measurement is one epoch: STEPS steps of every candidate.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plantops import GraphNet, engine, export, plant
from plantops.data import ViewSchedule
from round_epochs import (random_images, round_op_epoch, round_op_flops, straightforward_epoch,
                          straightforward_flops)
from plantops.planted_round import PlantedRound

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from resnet import student  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
STEPS = 6 if DEVICE.type == "cpu" else 50
BATCH, PLANTED, WD, LR = 128, 4, 5e-4, 0.05
IMPLS = ["straightforward", "straightforward-channels-last", "plantops"]


def setting():
    data = random_images(STEPS * BATCH, DEVICE)
    torch.manual_seed(0)
    teacher = student(32).to(DEVICE).eval()
    net = student(8).train()
    with torch.no_grad():  # batch norms with statistics of their own
        for _ in range(3):
            net(torch.rand(64, 3, 32, 32))
    parent = GraphNet.of(net.eval(), "resnet8", (3, 32, 32))
    candidates = {j: plant(parent, j, PLANTED, "small", torch.Generator().manual_seed(j))
                  for j in parent.plantable_points()}
    return data, teacher, parent, candidates


def masks_of(candidate: GraphNet) -> nn.Module:
    """The candidate exported with every planted entry 1 and every frozen one 0: each weight
    of the full-size network's mask, wherever the planted entries lie."""
    ones = copy.deepcopy(candidate)
    with torch.no_grad():
        for t in [*ones.net.parameters(), *ones.net.buffers()]:
            if t.is_floating_point():
                t.fill_(1.0 if isinstance(t, nn.Parameter) and t.requires_grad else 0.0)
    return export(ones)


def straightforward(candidate: GraphNet, memory_format=torch.contiguous_format):
    """The candidate as the user's full-size network with gradient-masking hooks; its
    trainable parameters."""
    net = export(candidate).to(DEVICE, memory_format=memory_format)
    mask_net = masks_of(candidate).to(DEVICE)
    params = []
    net.eval()
    for (name, p), (_, mask) in zip(net.named_parameters(), mask_net.named_parameters()):
        p.requires_grad_(bool(mask.any()))
        if p.requires_grad:
            params.append(p)
            p.register_hook(lambda g, p=p, mask=mask.detach(): (g + WD * p.detach()) * mask)
    for m in net.modules():  # a grown batch norm trains over all its channels
        if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad:
            m.train()
    return net, params


def make_epoch(impl: str):
    """(a callable that runs one epoch of ``impl``, the FLOPs of that epoch)."""
    data, teacher, parent, candidates = setting()
    views = ViewSchedule(data, BATCH, 1, seed=0)
    table = engine.teacher_logits(teacher, views)
    x = torch.rand(BATCH, 3, 32, 32, device=DEVICE)
    if impl.startswith("straightforward"):
        layout = torch.channels_last if impl.endswith("channels-last") else \
            torch.contiguous_format
        nets = [straightforward(c, layout) for c in candidates.values()]
        return (straightforward_epoch(nets, views, table, STEPS, LR, DEVICE, layout),
                STEPS * straightforward_flops(nets, x))
    return (round_op_epoch(PlantedRound(parent, candidates).train(), views, table, LR, BATCH),
            STEPS * round_op_flops(parent, candidates, x))


def test_the_straightforward_round_trains_only_the_planted_entries():
    _, _, parent, candidates = setting()
    for point, candidate in candidates.items():
        net, params = straightforward(candidate)
        before = {k: v.detach().clone() for k, v in net.state_dict().items()}
        opt = torch.optim.SGD(params, lr=LR, momentum=0.9)
        net(torch.rand(8, 3, 32, 32, device=DEVICE)).square().mean().backward()
        opt.step()
        mask_net = masks_of(candidate).to(DEVICE)
        masks = dict(mask_net.named_parameters())
        for name, p in net.named_parameters():
            kept = masks[name] == 0
            assert torch.equal(p.detach()[kept], before[name][kept]), (point, name)
        assert any(not torch.equal(p.detach(), before[n]) for n, p in net.named_parameters())


@pytest.mark.parametrize("impl", IMPLS)
def test_graph_round_step(benchmark, record, impl):
    epoch, flops = make_epoch(impl)
    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    print(f"\n{impl}: {flops / 1e9:.2f} GFLOP per epoch")
    record("round step: ResNet-8[8], 6 candidates, batch 128", "epoch of 6 steps", impl, flops,
           per=1)
