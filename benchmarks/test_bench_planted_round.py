"""A planting round's training step: the round op on the engine against the search's previous
round trainer (baselines/round_training.py), side by side in one run.

    pytest benchmarks/test_bench_planted_round.py --benchmark-only

Five candidates (conv1-conv5, 4 channels each) of Student[8], [16] and [32], batch 128, a
teacher's cached logits: everything a round's step does (batch gathering and augmentation,
forward, distillation loss, backward, SGD with momentum and weight decay). Each measurement
is one epoch of STEPS steps, reported per step. The baseline is today's loop: DeviceData.batches,
the TeacherCache dict, torch.optim.SGD with MultiStepLR, plain F.conv2d in the search's
layout (channels-last on a CPU). On a GPU the engine also runs with every step captured as
a CUDA graph, and the profiler's GPU-busy fraction of a step is printed for each.
"""

import numpy as np
import pytest
import torch

from plantops import engine, models, planting

from plantops.data import DeviceData, ViewSchedule
from plantops.planted_round import PlantedRound

from baselines.round_training import Round, train_round
from baselines.training import TeacherCache

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
STEPS = 6 if DEVICE.type == "cpu" else 50
BATCH, PLANTED = 128, 4
IMPLS = ["today's Round", "plantops"] + (["plantops-graphed"] if DEVICE.type == "cuda" else [])


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def round_setting(width: int):
    """Data of STEPS batches, a teacher, a Student[width] parent and its five candidates."""
    rng = np.random.default_rng(0)
    n = STEPS * BATCH
    data = DeviceData(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, n), DEVICE, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    teacher = models.student(16).to(DEVICE).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    parent = models.student(width)
    candidates = {layer: planting.plant(parent, layer, PLANTED,
                                      generator=torch.Generator().manual_seed(layer)).to(DEVICE)
                  for layer in range(5)}
    return data, teacher, parent.to(DEVICE), candidates


def make_epoch(impl: str, width: int):
    """A callable that runs one epoch of STEPS round steps with ``impl``."""
    data, teacher, parent, candidates = round_setting(width)
    schedule = engine.Schedule(1, 0.05, batch_size=BATCH)
    if impl == "today's Round":
        layout = torch.channels_last if DEVICE.type == "cpu" else torch.contiguous_format
        round_ = Round(parent, candidates, layout)
        cache = TeacherCache(teacher)
        train_round(round_, data, schedule, teacher, 1.0, 0.0, 0, cache)  # fills the cache

        def epoch():
            train_round(round_, data, schedule, teacher, 1.0, 0.0, 0, cache)
            _sync()
        return epoch
    views = ViewSchedule(data, BATCH, 1, seed=0)
    table = engine.teacher_logits(teacher, views)
    round_op = PlantedRound(parent, candidates)
    training = engine.Training(round_op, round_op.parameters(), views, schedule, "kd",
                               count=len(round_op), teacher=table,
                               graphs=impl == "plantops-graphed")
    training.epoch(0)  # builds (and on CUDA captures) the steps

    def epoch():
        training.epoch(0)
        _sync()
    return epoch


def gpu_busy_fraction(epoch) -> float:
    """The fraction of an epoch's wall time during which GPU kernels ran (profiler)."""
    import time
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        epoch()
        wall = time.perf_counter() - start
    busy_us = sum(e.self_device_time_total for e in prof.key_averages())
    return busy_us / 1e6 / wall


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("width", [8, 16, 32])
def test_round_step(benchmark, record, width, impl):
    epoch = make_epoch(impl, width)
    benchmark.group = f"round step S[{width}]"
    benchmark.pedantic(epoch, warmup_rounds=1, rounds=7 if DEVICE.type == "cpu" else 20)
    record("round step", f"S[{width}] 5 candidates N{BATCH}", impl, 0, per=STEPS)
    if DEVICE.type == "cuda" and benchmark.stats is not None:
        print(f"\n{impl} S[{width}]: GPU busy {gpu_busy_fraction(epoch):.0%} of the step")
