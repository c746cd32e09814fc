"""The search phase of plantops against the straightforward PyTorch search
(baselines/naive_search.py), side by side.

    pytest benchmarks/test_bench_search.py --benchmark-only

The search phase is everything a user waits for after the initial network: the teacher's
logits of the views, the planting rounds, the evaluations, the checkpoints and the report
(results.md, the plot, final.pt). Both sides start from the same trained Teacher[128] and
Student[8] (trained here, untimed); plantops runs ``Search(cfg, data).run()`` on an output
folder holding them as checkpoints, the naive search its rounds. 5,000 training images,
4 epochs per candidate, 3 rounds; synthetic data (class templates plus noise, so there is
something to learn), or a CIFAR-10 copy when PLANTOPS_DATA points at one (an image folder or
its .tar.gz, such as cifar10-jpeg.tar.gz). Both run the poster's procedure (every old
parameter fixed, the lowest validation loss wins: ``--select-rule lowest --finetune-epochs
0``) and must choose the same layers. Under
--benchmark-disable (CI's smoke run) the setting shrinks to 500 images, 1 epoch, 2 rounds.
"""

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from plantops import engine, models, search
from plantops.data import DeviceData, ViewSchedule
from plantops.search.checkpoints import save_network

from baselines.naive_search import naive_search

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL = dict(train=5000, val=500, test=1000, epochs=4, rounds=3)
SMOKE = dict(train=500, val=100, test=100, epochs=1, rounds=2)


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
def setting(request):
    size = SMOKE if request.config.getoption("benchmark_disable") else FULL
    cfg = search.config_from_dict(dict(
        dataset="folder", data=os.environ.get("PLANTOPS_DATA"), device=str(DEVICE),
        train_subset=size["train"], val_size=size["val"], teacher_width=128, init_width=8,
        plant_channels=4, plant_epochs=size["epochs"], max_rounds=size["rounds"], lr=0.05,
        # the poster's procedure, which the naive search implements
        select_rule="lowest", finetune_epochs=0))
    if cfg.data:
        data = search.prepare_data(cfg, DEVICE)
    else:
        mean, std = (0.5,) * 3, (0.25,) * 3
        make = lambda n, seed: DeviceData(*synthetic(n, seed), DEVICE, mean, std)
        data = search.SearchData(make(size["train"], 0), make(size["val"], 1),
                                 make(size["test"], 2), "cifar", 10)
    # Fixture only (both sides start from these, untimed). The teacher must be confident and
    # the initial network partly trained, or every candidate ties and the layer check says
    # nothing: on synthetic data both reach about 90% validation accuracy.
    schedule = engine.Schedule(4, 0.01, decay=1.0)
    views = ViewSchedule(data.train, schedule.batch_size, 4, seed=0)
    torch.manual_seed(2)
    teacher = he_init(models.student(128))
    engine.fit(teacher, list(teacher.parameters()), views, schedule, "ce")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(3)  # each network seeded on its own: some seeds leave it dead
    initial = he_init(models.student(8))
    engine.fit(initial, list(initial.parameters()), views, schedule, "kd",
               teacher=engine.teacher_logits(teacher, views))
    val_views = ViewSchedule(data.val, 500)
    val_teacher = engine.teacher_logits(teacher, val_views)
    metas = {}
    for name, net, teacher_logits in (("teacher", teacher, None), ("initial", initial, val_teacher)):
        val, = engine.evaluate(net, val_views, teacher=teacher_logits)
        test, = engine.evaluate(net, ViewSchedule(data.test, 500))
        metas[name] = dict(kind=name, loss_fn="ce" if name == "teacher" else "kd", val=val,
                           test=test, seconds=0.0)
    print(f"\nteacher val acc {metas['teacher']['val']['acc']:.3f}, initial {metas['initial']['val']}")
    return cfg, data, teacher, initial, metas


CHOSEN = {}


def run_plantops(cfg, data, teacher, initial, metas):
    with tempfile.TemporaryDirectory() as out:
        for name, net in (("teacher", teacher), ("initial", initial)):
            save_network(Path(out) / f"{name}.pt", net, metas[name])
        start = time.perf_counter()
        result = search.Search(search.config_from_dict(dict(out=out), cfg), data).run()
        total = time.perf_counter() - start
    split = ", ".join(f"{phase} {s:.2f} s" for phase, s in result["seconds"].items())
    print(f"\nplantops search phase {total:.2f} s: {split}")
    return [r["layer"] for r in result["rounds"]]


def run_naive(cfg, data, teacher, initial, metas):
    chosen = naive_search(cfg, initial, metas["initial"]["val"], teacher, data.train, data.val,
                          DEVICE)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return chosen


@pytest.mark.parametrize("impl", ["naive", "plantops"])
def test_search_phase(benchmark, record, setting, impl):
    fn = run_plantops if impl == "plantops" else run_naive
    chosen = benchmark.pedantic(fn, args=setting, rounds=1, iterations=1)
    CHOSEN[impl] = chosen
    cfg = setting[0]
    data = "CIFAR-10 subset" if cfg.data else "synthetic"
    record("search phase", f"{data} T[128] S[8] {cfg.train_subset} img {cfg.plant_epochs} ep "
           f"{cfg.max_rounds} rounds", "plantops" if impl == "plantops" else "naive baseline", 0)
    print(f"\n{impl} chose {chosen}")
    if len(CHOSEN) == 2:
        assert CHOSEN["plantops"] == CHOSEN["naive"], CHOSEN
