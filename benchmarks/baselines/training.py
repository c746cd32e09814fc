"""The search's training loop as it was before the engine (plantops/engine.py): a Python loop
over ``DeviceData.batches``, torch.optim.SGD with MultiStepLR, the teacher's logits looked up
per batch in a dict (:class:`TeacherCache`), ``.item()`` per evaluation batch. Kept as the
baseline the engine is measured against (benchmarks/test_bench_planted_round.py) and checked
to agree with (tests/test_engine.py); the naive search uses it too.
"""

from __future__ import annotations

import copy
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from plantops.data import DeviceData
from plantops.engine import CACHE_DTYPES, Schedule, kd_loss, lr_milestones


def autocast(schedule: Schedule, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=schedule.precision == "bfloat16")


def loss_fn(kind: str, temperature: float = 1.0, alpha: float = 0.0):
    """(student_logits, labels, teacher_logits) -> loss, for kind 'ce' or 'kd'."""
    if kind == "ce":
        return lambda logits, labels, teacher: F.cross_entropy(logits, labels)
    if kind == "kd":
        def kd(logits, labels, teacher):
            loss = kd_loss(logits, teacher, temperature)
            return loss if alpha == 0 else (1 - alpha) * loss + alpha * F.cross_entropy(logits, labels)
        return kd
    raise ValueError(f"loss must be 'ce' or 'kd', got {kind!r}")


class TeacherCache:
    """The teacher's logits for each batch of a fixed view schedule, computed once.

    Every training run with the same data, batch size, epochs and data seed sees the same
    augmented views in the same order (the views depend on the data seed only), so all the
    candidates of a search can share one teacher pass per view instead of running the
    teacher on every batch of every candidate.
    """

    def __init__(self, teacher: nn.Module, dtype: torch.dtype = torch.float32):
        # The teacher only runs inference here. A channels-last copy runs it 1.7x faster on
        # the CPU (oneDNN's blocked kernels; measured on Teacher[128]) and suits cuDNN too;
        # the logits are the same up to float rounding.
        self.teacher = copy.deepcopy(teacher).eval().to(memory_format=torch.channels_last)
        # float32 keeps results identical to running the teacher on every batch; a 16-bit
        # dtype halves the memory (CIFAR-100, 30 epochs: 540 MB -> 270 MB) but rounds the
        # logits (relative error 2^-11 for float16, 2^-8 for bfloat16).
        if dtype not in CACHE_DTYPES.values():
            raise ValueError(f"the teacher cache stores float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.logits: dict = {}
        self.hits = self.misses = 0
        self.seconds = 0.0  # spent running the teacher

    @torch.no_grad()
    def get(self, key, x):
        cached = self.logits.get(key)
        if cached is None:
            start = time.perf_counter()
            cached = self.teacher(x.contiguous(memory_format=torch.channels_last)).to(self.dtype)
            self.logits[key] = cached
            if cached.is_cuda:
                torch.cuda.synchronize(cached.device)
            self.seconds += time.perf_counter() - start
            self.misses += 1
        else:
            self.hits += 1
        return cached.float()

    @property
    def nbytes(self) -> int:
        """Memory held by the cached logits."""
        return sum(t.numel() * t.element_size() for t in self.logits.values())


def train(model: nn.Module, params, data: DeviceData, schedule: Schedule, loss: str,
          seed: int, teacher: nn.Module | None = None, temperature: float = 1.0,
          alpha: float = 0.0, progress: str = "", data_seed: int | None = None,
          teacher_cache: TeacherCache | None = None) -> float:
    """Trains ``params`` of ``model``; returns seconds taken.

    ``data_seed`` (default ``seed``) alone fixes the order and augmentation of the batches;
    with a ``teacher_cache`` the teacher's logits of each view are computed once across runs.
    Deterministic for given seeds.
    """
    model.train()
    return train_outputs(lambda x: [model(x)], params, data, schedule, loss, seed, teacher,
                         temperature, alpha, progress, data_seed, teacher_cache)


def train_outputs(outputs, params, data: DeviceData, schedule: Schedule, loss: str, seed: int,
                  teacher: nn.Module | None = None, temperature: float = 1.0, alpha: float = 0.0,
                  progress: str = "", data_seed: int | None = None,
                  teacher_cache: TeacherCache | None = None) -> float:
    """``train`` for any ``outputs(x) -> [logits, ...]``: the losses of all the logits are
    summed, so networks with disjoint ``params`` train together exactly as they would alone."""
    params = list(params)
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    if loss == "kd" and teacher is None:
        raise ValueError("distillation needs a teacher")
    objective = loss_fn(loss, temperature, alpha)
    opt = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum,
                          weight_decay=schedule.weight_decay)
    steps_per_epoch = math.ceil(len(data) / schedule.batch_size)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, lr_milestones(schedule, steps_per_epoch),
                                                 schedule.decay)
    torch.manual_seed(seed)
    data_seed = seed if data_seed is None else data_seed
    generator = torch.Generator().manual_seed(data_seed)
    view_key = (len(data), schedule.batch_size, schedule.epochs, data_seed)
    bar = _Progress(progress, schedule.epochs * steps_per_epoch)
    start = time.perf_counter()
    if teacher is not None:
        teacher.eval()
    for epoch in range(schedule.epochs):
        batches = data.batches(schedule.batch_size, generator, augment=True)
        for index, (x, y) in enumerate(batches):
            teacher_logits = None
            with autocast(schedule, x.device):
                if teacher is not None and loss == "kd":
                    if teacher_cache is not None:
                        teacher_logits = teacher_cache.get((view_key, epoch, index), x)
                    else:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                value = sum(objective(logits, y, teacher_logits) for logits in outputs(x))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            bar.step()
    bar.close()
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 500,
             teacher: nn.Module | None = None, temperature: float = 1.0,
             teacher_cache: TeacherCache | None = None) -> dict:
    """Mean cross-entropy, accuracy, and the distillation loss when a teacher is given
    (its logits of the fixed, unaugmented batches taken from ``teacher_cache`` if given)."""
    model.eval()
    return evaluate_outputs(lambda x: [model(x)], 1, data, batch_size, teacher, temperature,
                            teacher_cache)[0]


@torch.no_grad()
def evaluate_outputs(outputs, count: int, data: DeviceData, batch_size: int = 500,
                     teacher: nn.Module | None = None, temperature: float = 1.0,
                     teacher_cache: TeacherCache | None = None) -> list[dict]:
    """``evaluate`` for each of the ``count`` logits that ``outputs(x)`` returns."""
    totals = [dict(loss=0.0, acc=0.0, kd_loss=0.0) for _ in range(count)]
    for index, (x, y) in enumerate(data.batches(batch_size)):
        teacher_logits = None
        if teacher is not None:
            teacher.eval()
            teacher_logits = (teacher_cache.get(("eval", id(data), batch_size, index), x)
                              if teacher_cache is not None else teacher(x))
        for total, logits in zip(totals, outputs(x), strict=True):
            total["loss"] += F.cross_entropy(logits, y, reduction="sum").item()
            total["acc"] += (logits.argmax(1) == y).sum().item()
            if teacher_logits is not None:
                total["kd_loss"] += kd_loss(logits, teacher_logits, temperature).item() * len(y)
    n = len(data)
    results = [{key: value / n for key, value in total.items()} for total in totals]
    if teacher is None:
        for result in results:
            del result["kd_loss"]
    return results


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise (logs stay clean)."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.on = bool(label) and sys.stderr.isatty()
        self.start = time.perf_counter()

    def step(self):
        self.done += 1
        if self.on and (self.done % 10 == 0 or self.done == self.total):
            frac = self.done / max(self.total, 1)
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r  {self.label:<24} [{bar:<30}] {frac:4.0%} "
                             f"{time.perf_counter() - self.start:6.1f}s")
            sys.stderr.flush()

    def close(self):
        if self.on:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()
