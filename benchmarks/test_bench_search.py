"""The whole search with plantops against the straightforward PyTorch search
(baselines/naive_search.py), side by side.

    pytest benchmarks/test_bench_search.py --benchmark-only

Both sides run the whole process from nothing: Teacher[128] trained 3 epochs with
cross-entropy, Student[8] 3 epochs by distillation, then 3 planting rounds of 4 channels, 4
epochs a candidate, lr 0.05, on 5,000 training images, every evaluation, and the report
(results.md, a plot, final.pt). plantops runs ``Search(cfg, data).run()`` on an empty output
folder; the naive search trains and evaluates torch's own layers, the teacher run on every
batch. Three clocks per side: the whole process, the teacher's training (from the start to
its end), and what follows it (the initial network, every teacher pass, every evaluation,
the rounds and the report), which is what the teacher's tables and the round op speed up;
the tables show the three ("whole search", "the teacher's training", "after the teacher").

The data: a CIFAR-10 copy where PLANTOPS_DATA points at one (an image folder or its .tar.gz,
such as cifar10-jpeg.tar.gz), else synthetic images (class templates plus noise). Both sides
run the poster's procedure (every old parameter fixed, the lowest validation loss wins:
``--select-rule lowest --finetune-epochs 0``) and must run as many rounds (the same work);
their teachers are trained apart, so they may round apart and choose other layers (both
choices are printed). Under --benchmark-disable (CI's smoke run) the setting shrinks to 500
images, 1 epoch of each, 2 rounds, and the rounds are not compared.
"""

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plantops import search
from plantops.data import DeviceData
from plantops.search.trainer import Trainer

from baselines.naive_search import naive_pipeline

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL = dict(train=5000, val=500, test=1000, epochs=3, plant_epochs=4, rounds=3)
SMOKE = dict(train=500, val=100, test=100, epochs=1, plant_epochs=1, rounds=2)


def synthetic(n, seed):
    """Each class a fixed random template, each image its template plus noise. The templates
    are coarse (4x4 blocks of colour), so they survive the crops and flips of augmentation."""
    coarse = np.random.default_rng(1234).uniform(0, 255, (10, 4, 4, 3))
    templates = coarse.repeat(8, 1).repeat(8, 2)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = 0.5 * templates[labels] + 0.5 * rng.uniform(0, 255, (n, 32, 32, 3))
    return images.astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def setting(request):
    size = SMOKE if request.config.getoption("benchmark_disable") else FULL
    cfg = search.config_from_dict(dict(
        dataset="folder", data=os.environ.get("PLANTOPS_DATA"), device=str(DEVICE),
        train_subset=size["train"], val_size=size["val"], teacher_width=128, init_width=8,
        teacher_epochs=size["epochs"], init_epochs=size["epochs"], plant_channels=4,
        plant_epochs=size["plant_epochs"], max_rounds=size["rounds"], lr=0.05,
        # the poster's procedure, which the naive search implements
        select_rule="lowest", finetune_epochs=0))
    if cfg.data:
        data = search.prepare_data(cfg, DEVICE)
    else:
        mean, std = (0.5,) * 3, (0.25,) * 3
        make = lambda n, seed: DeviceData(*synthetic(n, seed), DEVICE, mean, std)
        data = search.SearchData(make(size["train"], 0), make(size["val"], 1),
                                 make(size["test"], 2), "cifar", 10)
    return cfg, data


RUNS = {}


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def run_plantops(cfg, data):
    """Search(cfg, data).run(): (chosen layers, seconds after the teacher's training)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        runner, ended = search.Search(search.config_from_dict(dict(out=out), cfg), data), []
        fit = Trainer.fit

        def timed_fit(trainer, name, *args, **kwargs):
            fit(trainer, name, *args, **kwargs)
            if name == "teacher":
                sync()
                ended.append(time.perf_counter())
        Trainer.fit = timed_fit
        try:
            result = runner.run()
        finally:
            Trainer.fit = fit
        sync()
        total = time.perf_counter() - start
    split = ", ".join(f"{phase} {s:.2f} s" for phase, s in result["seconds"].items())
    print(f"\nplantops whole search {total:.2f} s, after the teacher {total - (ended[0] - start):.2f} s: {split}")
    return [r["layer"] for r in result["rounds"]], ended[0] - start, time.perf_counter() - ended[0]


def run_naive(cfg, data):
    with tempfile.TemporaryDirectory() as out:
        start, ended = time.perf_counter(), []
        result = naive_pipeline(cfg, data, DEVICE, Path(out),
                                teacher_done=lambda: (sync(), ended.append(time.perf_counter())))
        sync()
        return result["chosen"], ended[0] - start, time.perf_counter() - ended[0]


@pytest.mark.parametrize("impl", ["naive", "plantops"])
def test_whole_search(benchmark, record, request, setting, impl):
    fn = run_plantops if impl == "plantops" else run_naive
    chosen, teacher, after_teacher = benchmark.pedantic(fn, args=setting, rounds=1, iterations=1)
    RUNS[impl] = chosen
    cfg = setting[0]
    data = "CIFAR-10 subset" if cfg.data else "synthetic"
    shape = (f"{data} T[128] {cfg.teacher_epochs} ep, S[8] {cfg.init_epochs} ep, "
             f"{cfg.train_subset} img, {cfg.plant_epochs} ep {cfg.max_rounds} rounds")
    name = "plantops" if impl == "plantops" else "naive baseline"
    record("whole search", shape, name, 0)
    record("the teacher's training", shape, name, 0, seconds=teacher)
    record("after the teacher", shape, name, 0, seconds=after_teacher)
    print(f"\n{impl} chose {chosen}; the teacher's training {teacher:.2f} s, "
          f"{after_teacher:.2f} s after it")
    # The same work on both sides. (Not checked in the smoke run, whose 1-epoch networks on
    # 500 images may accept no round on one side.)
    if len(RUNS) == 2 and not request.config.getoption("benchmark_disable"):
        assert len(RUNS["plantops"]) == len(RUNS["naive"]), RUNS
