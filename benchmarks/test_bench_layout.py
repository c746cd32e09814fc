"""Channels-last against NCHW (contiguous) for what the search trains most, side by side:
one training step of a planting round (5 candidates sharing their parent's forward,
plantops/round_training.py) and one SGD step of a plain Student[k].

    pytest benchmarks/test_bench_layout.py --benchmark-only

The search runs channels-last by default (--channels-last); "contiguous" is the baseline.
"""

import pytest
import torch
import torch.nn.functional as F

from plantops import models
from plantops.round_training import Round

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def round_step(width: int, layout):
    torch.manual_seed(0)
    parent = models.student(width)
    candidates = {layer: models.plant(parent, layer, 4) for layer in range(5)}
    for net in candidates.values():
        for p in models.planted_parameters(net):
            torch.nn.init.normal_(p, 0, 0.05)
    round_ = Round(parent.to(DEVICE), {k: v.to(DEVICE) for k, v in candidates.items()}, layout)
    x = torch.randn(128, 3, 32, 32, device=DEVICE)
    params = round_.parameters()

    def step():
        torch.autograd.grad(sum(l.square().mean() for l in round_.logits(x)), params)
        _sync()
    return step


def student_step(width: int, layout):
    torch.manual_seed(0)
    net = models.student(width).to(DEVICE, memory_format=layout)
    x, y = torch.randn(128, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (128,), device=DEVICE)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync()
    return step


def impl_name(layout: str) -> str:
    return "plantops-channels_last" if layout == "channels_last" else "contiguous"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("width", [8, 12, 16])
def test_round_step(benchmark, record, width, layout):
    benchmark.group = f"round step S[{width}]"
    benchmark.pedantic(round_step(width, LAYOUTS[layout]), warmup_rounds=2, rounds=15)
    record("round step", f"S[{width}] 5 candidates N128", impl_name(layout), 0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_student_step(benchmark, record, width, layout):
    benchmark.group = f"student step S[{width}]"
    benchmark.pedantic(student_step(width, LAYOUTS[layout]), warmup_rounds=2, rounds=15)
    record("student SGD step", f"S[{width}] N128", impl_name(layout), 0)
