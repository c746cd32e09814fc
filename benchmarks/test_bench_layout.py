"""Channels-last against NCHW (contiguous) with torch's own layers (oneDNN on a CPU, cuDNN on
a GPU): one SGD step of a Student[k] exported to nn.Sequential, side by side.

    pytest benchmarks/test_bench_layout.py --benchmark-only

This is the layout choice for modules the search runs as they are, a --teacher module of the
user's (--channels-last: on a CPU by default); "contiguous" is the baseline. The networks the
search builds and plants are chains, whose convs train on the planted kernels in NCHW
(benchmarks/test_bench_teacher.py).
"""

import pytest
import torch
import torch.nn.functional as F

from plantops import models

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def student_step(width: int, layout):
    torch.manual_seed(0)
    net = models.student(width).to_sequential().to(DEVICE, memory_format=layout)
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
@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_student_step(benchmark, record, width, layout):
    benchmark.group = f"student step S[{width}]"
    benchmark.pedantic(student_step(width, LAYOUTS[layout]), warmup_rounds=2, rounds=15)
    record("student SGD step", f"S[{width}] N128", impl_name(layout), 0)
