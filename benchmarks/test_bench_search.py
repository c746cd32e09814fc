"""The search phase (after teacher and initial network, which both sides share) of plantops
against the straightforward PyTorch search (baselines/naive_search.py), side by side.

    pytest benchmarks/test_bench_search.py --benchmark-only

Synthetic data by default (class templates plus noise, so there is something to learn); a real
CIFAR-10 copy when PLANTOPS_DATA points at one (an image folder or its .tar.gz, such as
cifar10-jpeg.tar.gz). Teacher[128] and Student[8], a 2,000-image subset, one epoch per
candidate, two rounds. Both sides must choose the same layers.
"""

import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from plantops import data as datasets
from plantops import models, search
from plantops.train import Schedule, TeacherCache, evaluate, train

from baselines.naive_search import naive_search

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TRAIN, VAL = 2000, 500


def synthetic(n, seed):
    """Each class a fixed random template, each image its template plus noise. The templates
    are coarse (4x4 blocks of colour), so they survive the crops and flips of augmentation."""
    coarse = np.random.default_rng(1234).uniform(0, 255, (10, 4, 4, 3))
    templates = coarse.repeat(8, 1).repeat(8, 2)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = 0.5 * templates[labels] + 0.5 * rng.uniform(0, 255, (n, 32, 32, 3))
    return images.astype(np.uint8), labels.astype(np.int64)


def he_init(net):
    """He initialization: a plain 7-layer CNN with PyTorch's default init barely moves in the
    few steps this fixture can afford, and a teacher at chance level would make every
    candidate tie (a choice between ties proves nothing)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net.to(DEVICE)


@pytest.fixture(scope="module")
def setting():
    cfg = search.config_from_dict(dict(
        dataset="folder", data=os.environ.get("PLANTOPS_DATA"), device=str(DEVICE),
        train_subset=TRAIN, val_size=VAL, teacher_width=128, init_width=8, plant_channels=4,
        plant_epochs=1, max_rounds=2, lr=0.05))
    if cfg.data:
        train_data, val_data, _, _, _ = search.prepare_data(cfg, DEVICE)
    else:
        mean, std = (0.5,) * 3, (0.25,) * 3
        train_data = datasets.DeviceData(*synthetic(TRAIN, 0), DEVICE, mean, std)
        val_data = datasets.DeviceData(*synthetic(VAL, 1), DEVICE, mean, std)
    # Fixture only (both sides start from these, untimed). The teacher must be confident and
    # the initial network partly trained, or every candidate ties and the layer check says
    # nothing: on synthetic data both reach about 90% validation accuracy.
    torch.manual_seed(2)
    teacher = he_init(models.student(128))
    train(teacher, teacher.parameters(), train_data, Schedule(4, 0.01, decay=1.0), "ce", 0)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(3)  # each network seeded on its own: some seeds leave it dead
    initial = he_init(models.student(8))
    train(initial, initial.parameters(), train_data, Schedule(4, 0.01, decay=1.0), "kd", 0,
          teacher)
    initial_val = evaluate(initial, val_data, teacher=teacher, temperature=cfg.temperature)
    print(f"\nteacher val acc {evaluate(teacher, val_data)['acc']:.3f}, initial {initial_val}")
    return cfg, teacher, initial, initial_val, train_data, val_data


CHOSEN = {}


def run_plantops(cfg, teacher, initial, initial_val, train_data, val_data):
    """The search phase, and where its time went: teacher passes, student evaluation, and
    candidate training (the rest)."""
    start = time.perf_counter()
    cache = TeacherCache(teacher)
    evaluation = dict(seconds=0.0, teacher=0.0)
    real_evaluate = search.evaluate_round

    def timed_evaluate(*args, **kwargs):
        t0, teacher0 = time.perf_counter(), cache.seconds
        result = real_evaluate(*args, **kwargs)
        evaluation["seconds"] += time.perf_counter() - t0
        evaluation["teacher"] += cache.seconds - teacher0
        return result

    search.evaluate_round = timed_evaluate
    try:
        with tempfile.TemporaryDirectory() as out:
            out = Path(out)
            (out / "candidates").mkdir()
            schedule = functools.partial(search.training_schedule, cfg)
            accepted, _ = search.plant_rounds(cfg, out, search.Log(out / "log.jsonl"), initial,
                                              initial_val, teacher, train_data, val_data, DEVICE,
                                              schedule, cache)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    finally:
        search.evaluate_round = real_evaluate
    total = time.perf_counter() - start
    students = evaluation["seconds"] - evaluation["teacher"]
    print(f"\nplantops time split: total {total:.2f} s = teacher passes {cache.seconds:.2f} s "
          f"({cache.misses} batches, {cache.hits} reused) + student evaluation {students:.2f} s "
          f"+ candidate training {total - cache.seconds - students:.2f} s")
    return [a["layer"] for a in accepted]


def run_naive(cfg, teacher, initial, initial_val, train_data, val_data):
    chosen = naive_search(cfg, initial, initial_val, teacher, train_data, val_data, DEVICE)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return chosen


@pytest.mark.parametrize("impl", ["naive", "plantops"])
def test_search_phase(benchmark, record, setting, impl):
    fn = run_plantops if impl == "plantops" else run_naive
    chosen = benchmark.pedantic(fn, args=setting, rounds=1, iterations=1)
    CHOSEN[impl] = chosen
    data = "CIFAR-10 subset" if setting[0].data else "synthetic"
    record("search phase", f"{data} T[128] S[8] {TRAIN} img 2 rounds",
           "plantops" if impl == "plantops" else "naive baseline", 0)
    print(f"\n{impl} chose {chosen}")
    if len(CHOSEN) == 2:
        assert CHOSEN["plantops"] == CHOSEN["naive"], CHOSEN
