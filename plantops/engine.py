"""The training engine of the search: one static step per batch, everything on the device.

Every network the search trains (the teacher, the initial network, the ``--table`` students
and each round's candidates, together through ``planted_round.PlantedRound``) trains through
:class:`Training` (epoch by epoch, so the search checkpoints each; :func:`fit` runs a whole
training), and every evaluation goes through :func:`evaluate`:

- A run's batches are fixed in advance (``data.ViewSchedule``): sample order, crops and flips
  are device tensors indexed by the step, and so are the teacher's logits of those views
  (:func:`teacher_logits`, computed once and shared by every run with the same views).
- A step gathers its batch by a device position, runs forward, loss, backward and an SGD
  update (:class:`SGD`: foreach ops, momentum and weight decay, lr a device tensor), and adds
  its losses to device sums. Nothing inside an epoch waits for the device: the sums are read
  once per epoch.
- A run has two shapes of step (full batches, and the last shorter batch of an epoch), each
  static, so on CUDA each is captured once as a CUDA graph and replayed (:class:`StepRunner`):
  one launch per step instead of hundreds.

Losses: ``ce`` (labels) or ``kd``, the poster's distillation loss with the sign that makes it
a loss, ``T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))`` (the T^2 keeps
gradient magnitudes comparable across temperatures, Hinton et al. 2015), optionally mixed
with the label cross-entropy: ``(1 - alpha) * KD + alpha * CE``. A forward may return the
logits of several networks stacked along the batch (a round's candidates): each gets its
own loss, their sum is differentiated (their parameters are disjoint, so each gets exactly
its own gradient), and each is reported.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from plantops.data import ViewSchedule

# float16 would also need loss scaling (GradScaler); bfloat16 has float32's range and does not.
PRECISIONS = ("float32", "bfloat16")
# The dtypes the teacher's cached logits can be stored in (--cache-dtype), by name.
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class Schedule:
    """How a network trains: epochs, SGD and the step decay of its learning rate."""

    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    decay: float = 0.2        # lr multiplier at each step
    decay_steps: int = 2      # steps, evenly spaced: after each third of the run by default
    # "bfloat16": forward passes and losses under torch.autocast (weights, gradients and the
    # optimizer stay float32); "float32": no autocast.
    precision: str = "float32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch``: ``lr`` times ``decay`` for each decay step passed
        (the steps fall on epoch boundaries, after each equal part of the run)."""
        lr = self.lr
        for i in range(self.decay_steps):
            if epoch >= round(self.epochs * (i + 1) / (self.decay_steps + 1)):
                lr *= self.decay
        return lr


def lr_milestones(schedule: Schedule, steps_per_epoch: int) -> list[int]:
    """Optimizer steps after which the lr is multiplied by ``schedule.decay`` (the same steps
    as ``Schedule.lr_at``, for torch.optim.lr_scheduler.MultiStepLR)."""
    return [round(schedule.epochs * (i + 1) / (schedule.decay_steps + 1)) * steps_per_epoch
            for i in range(schedule.decay_steps)]


def autocast(precision: str, device: torch.device, graphs: bool = False):
    """The autocast context of a step in ``precision`` (none for float32). Under CUDA graph
    capture the cast cache is off: cached casts would not be re-cast at replay."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16",
                          cache_enabled=not graphs)


# ----------------------------------------------------------------------------- losses

def kd_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """The distillation loss of one network, averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def losses(logits: torch.Tensor, labels: torch.Tensor, teacher: Optional[torch.Tensor],
           loss: str, count: int, temperature: float = 1.0, alpha: float = 0.0,
           batch: Optional[int] = None) -> torch.Tensor:
    """The loss of each of ``count`` networks whose logits are stacked along the batch
    (``logits [count * N, classes]``, each against the same ``labels [N]`` and ``teacher``
    logits): ``[count]``, each the mean over its N samples; with ``batch``, the sum over them
    divided by ``batch`` (a shard's part of the mean over a whole batch)."""
    n = labels.shape[0]
    logits = logits.float().view(count, n, -1)
    mean = (lambda v: v.mean(1)) if batch is None else (lambda v: v.sum(1) / batch)
    if loss == "ce":
        return mean(F.cross_entropy(logits.transpose(1, 2), labels.expand(count, n),
                                    reduction="none"))
    if loss != "kd":
        raise ValueError(f"loss must be 'ce' or 'kd', got {loss!r}")
    if teacher is None:
        raise ValueError("distillation needs the teacher's logits")
    t = temperature
    target = F.log_softmax(teacher.float() / t, -1)
    kl = F.kl_div(F.log_softmax(logits / t, -1), target.expand_as(logits), reduction="none",
                  log_target=True)
    result = mean(kl.sum(-1)) * t * t
    if alpha:
        ce = mean(F.cross_entropy(logits.transpose(1, 2), labels.expand(count, n),
                                  reduction="none"))
        result = (1 - alpha) * result + alpha * ce
    return result


# ----------------------------------------------------------------------------- optimizer

class SGD:
    """SGD with momentum and weight decay as foreach updates, with the learning rate a device
    tensor (so a CUDA graph reads it at replay). The same arithmetic as torch.optim.SGD
    (no dampening, no Nesterov): its first step copies the gradient into the momentum buffer,
    and ``momentum * 0 + g`` is exactly ``g``."""

    def __init__(self, params: Sequence[torch.Tensor], momentum: float, weight_decay: float):
        self.params = list(params)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.zeros((), device=self.params[0].device)

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]):
        grads = list(grads)
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        torch._foreach_mul_(self.buffers, self.momentum)
        torch._foreach_add_(self.buffers, grads)
        torch._foreach_sub_(self.params, torch._foreach_mul(self.buffers, self.lr))

    def state(self) -> dict:
        """The momentum buffers, as CPU copies (for a checkpoint)."""
        return dict(buffers=[b.detach().cpu().clone() for b in self.buffers])

    def load_state(self, state: dict):
        with torch.no_grad():
            for b, saved in zip(self.buffers, state["buffers"], strict=True):
                b.copy_(saved)


# ----------------------------------------------------------------------------- steps

def use_graphs(setting: str, device: torch.device) -> bool:
    """--cuda-graphs: "auto" captures steps as CUDA graphs on CUDA devices, "on" insists."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"cuda graphs must be auto, on or off, got {setting!r}")
    if setting == "on" and device.type != "cuda":
        raise ValueError(f"--cuda-graphs on needs a CUDA device, the search runs on {device}; "
                         "use --cuda-graphs auto or off")
    return setting != "off" and device.type == "cuda"


class StepRunner:
    """Runs a step function, one per shape of step, eagerly or as CUDA graphs.

    ``run(shape)`` calls ``steps[shape]()``. With ``graphs``, the first ``warmup`` calls of a
    shape run eagerly on a side stream (real steps: they count), the next one is captured and
    then replayed, and every later call only replays the graph. A step function must read
    its inputs from tensors that stay in place (positions, tables, parameters) and advance
    its own position, so that a replay is the next step.
    """

    def __init__(self, steps: dict[str, Callable[[], None]], graphs: bool, warmup: int = 2):
        self.steps, self.graphs, self.warmup = steps, graphs, warmup
        self.calls = {shape: 0 for shape in steps}
        self.captured: dict = {}

    def run(self, shape: str):
        if not self.graphs:
            self.steps[shape]()
            return
        graph = self.captured.get(shape)
        if graph is not None:
            graph.replay()
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        if self.calls[shape] < self.warmup:
            with torch.cuda.stream(stream):
                self.steps[shape]()
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self.steps[shape]()
            self.captured[shape] = graph
            graph.replay()
        torch.cuda.current_stream().wait_stream(stream)
        self.calls[shape] += 1


# ----------------------------------------------------------------------------- teacher logits

@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, views: ViewSchedule,
                   dtype: torch.dtype = torch.float32, precision: str = "float32",
                   images_per_pass: int = 1024, part: tuple[int, int] = (0, 1),
                   from_epoch: int = 0, on_step: Optional[Callable[[], None]] = None,
                   classes: Optional[int] = None) -> dict[str, torch.Tensor]:
    """The teacher's logits of every view of ``views``: ``{shape: [steps, batch, classes]}``
    in ``dtype``. Computed in passes of about ``images_per_pass`` images, through the
    teacher's frozen layers where it has them (``Chain.frozen_forward``: the planted kernels
    where their auto rule takes them). float32 keeps the results those of running the
    teacher on every batch, up to float rounding; a 16-bit dtype halves the memory but rounds
    the logits. ``from_epoch``: only the steps of that epoch on (a table of the first epochs
    is already there); ``part=(i, k)``: only the i-th of k equal blocks of those steps
    (``part_rows``); ``on_step()`` after each step's logits. ``classes`` (unset: the
    teacher's ``num_classes``) shapes a part that holds no step."""
    teacher.eval()
    forward = getattr(teacher, "frozen_forward", teacher)
    device = views.data.device
    tables = {}
    for shape, steps in views.shapes.items():
        per_pass = max(1, images_per_pass // steps.index.shape[1])
        chunks = []
        skip = views.positions(shape, from_epoch).start
        first, stop = (skip + row for row in part_rows(len(steps) - skip, *part))
        for start in range(first, stop, per_pass):
            pos = torch.arange(start, min(start + per_pass, stop), device=device)
            x, _ = views.batch(shape, pos)
            with autocast(precision, device):
                logits = forward(x)
            chunks.append(logits.to(dtype).view(len(pos), steps.index.shape[1], -1))
            for _ in range(len(pos) if on_step is not None else 0):
                on_step()
        tables[shape] = torch.cat(chunks) if chunks else torch.empty(
            (0, steps.index.shape[1], classes or teacher.num_classes), dtype=dtype,
            device=device)
    return tables


def part_rows(rows: int, index: int, parts: int) -> tuple[int, int]:
    """The rows [start, stop) of the ``index``-th of ``parts`` equal blocks of ``rows``."""
    per = -(-rows // parts)
    return min(rows, index * per), min(rows, (index + 1) * per)


def table_nbytes(tables: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tables.values())


# ----------------------------------------------------------------------------- fit, evaluate

@dataclasses.dataclass
class EpochReport:
    epoch: int                 # 0-based
    losses: list[float]        # mean training loss of each network over the epoch's steps
    lr: float


class Training:
    """The training of ``params`` over ``views``, epoch by epoch (:func:`fit` runs them all).

    ``forward(x)`` returns the logits of ``count`` networks stacked along the batch; ``loss``
    is ``"ce"`` or ``"kd"`` (``teacher``: the teacher's logits of these views, from
    :func:`teacher_logits`). Each shape of step is built once, so on CUDA it is captured once
    and replayed for every later step of every epoch. Deterministic: the views are the
    schedule's, and nothing here draws a random number.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor],
                 params: Sequence[torch.Tensor], views: ViewSchedule, schedule: Schedule,
                 loss: str, *, count: int = 1, teacher: Optional[dict] = None,
                 temperature: float = 1.0, alpha: float = 0.0, graphs: bool = False,
                 ranks=None, buffers: Sequence[torch.Tensor] = ()):
        params = list(params)
        # What training changes besides the parameters (batch norms' running statistics):
        # kept in the state, so that a resumed run goes on from the same numbers.
        self.buffers = list(buffers)
        if not params:
            raise ValueError("nothing to train: no parameter requires grad")
        if loss == "kd" and teacher is None:
            raise ValueError("distillation needs the teacher's logits of the views")
        if views.batch_size != schedule.batch_size or views.epochs != schedule.epochs:
            raise ValueError(f"the views are {views.epochs} epochs of batch {views.batch_size}, "
                             f"the schedule {schedule.epochs} epochs of batch "
                             f"{schedule.batch_size}")
        # With several ranks (search.distributed.Ranks), each takes its share of every batch
        # and the gradients are summed over the ranks at every step: data parallelism, the
        # same steps as one process up to float rounding.
        self.ranks = ranks if ranks is not None and ranks.size > 1 else None
        batch = {shape: s.index.shape[1] for shape, s in views.shapes.items()}
        if self.ranks is not None:
            views = views.shard(self.ranks.rank, self.ranks.size)
            if teacher is not None:
                teacher = {shape: t[:, self.ranks.rank::self.ranks.size]
                           for shape, t in teacher.items()}
            graphs = False  # a collective in every step: no CUDA graph
        self.views, self.schedule = views, schedule
        device = views.data.device
        self.sgd = SGD(params, schedule.momentum, schedule.weight_decay)
        # Each shape's position in its tables, advanced by its step: a graph replay reads it.
        self.positions = {shape: torch.zeros(1, dtype=torch.int64, device=device)
                          for shape in views.shapes}
        self.sums = torch.zeros(count, device=device)

        def make_step(shape):
            pos = self.positions[shape]

            def step():
                x, labels = views.batch(shape, pos)
                target = None if teacher is None or loss == "ce" else \
                    teacher[shape].index_select(0, pos)[0]
                with autocast(schedule.precision, device, graphs):
                    values = losses(forward(x), labels, target, loss, count, temperature, alpha,
                                    None if self.ranks is None else batch[shape])
                grads = list(torch.autograd.grad(values.sum(), params))
                if self.ranks is not None:
                    self.ranks.sum_(grads)
                self.sgd.step(grads)
                self.sums.add_(values.detach())
                pos.add_(1)
            return step

        self.steps = StepRunner({shape: make_step(shape) for shape in views.shapes}, graphs)

    def state(self) -> dict:
        """The parameters, SGD's momentum and the buffers, as CPU copies (for a checkpoint)."""
        return dict(params=[p.detach().cpu().clone() for p in self.sgd.params],
                    sgd=self.sgd.state(), buffers=[b.detach().cpu().clone() for b in self.buffers])

    def load_state(self, state: dict):
        """Puts back what ``state`` returned; ValueError if it is of other parameters."""
        if [tuple(p.shape) for p in state["params"]] != [tuple(p.shape) for p in self.sgd.params]:
            raise ValueError("the epoch checkpoint holds parameters of other shapes: it is of "
                             "another run (remove its partial/ folder to start the run over)")
        buffers = state.get("buffers", [])
        if [tuple(b.shape) for b in buffers] != [tuple(b.shape) for b in self.buffers]:
            raise ValueError("the epoch checkpoint holds buffers of other shapes: it is of "
                             "another run (remove its partial/ folder to start the run over)")
        with torch.no_grad():
            for p, saved in zip(self.sgd.params, state["params"]):
                p.copy_(saved)
            for b, saved in zip(self.buffers, buffers):
                b.copy_(saved)
        self.sgd.load_state(state["sgd"])

    def epoch(self, epoch: int, on_step: Optional[Callable[[], None]] = None) -> EpochReport:
        """Runs epoch ``epoch`` (0-based) and returns its mean training losses; ``on_step()``
        after each step (host side: on a GPU the step may still be running)."""
        for shape, pos in self.positions.items():
            pos.fill_(self.views.positions(shape, epoch)[0])
        lr = self.schedule.lr_at(epoch)
        self.sgd.lr.fill_(lr)
        self.sums.zero_()
        for shape, _ in self.views.epoch_steps(epoch):
            self.steps.run(shape)
            if on_step is not None:
                on_step()
        if self.ranks is not None:
            self.ranks.sum_([self.sums])
            # Each rank's batch norms gathered running statistics of its share of the
            # batches: their mean over the ranks, so that every rank goes on with (evaluates,
            # saves, plants into) the same network.
            stats = [b for b in self.buffers if b.is_floating_point()]
            if stats:
                self.ranks.sum_(stats)
                torch._foreach_div_(stats, float(self.ranks.size))
        return EpochReport(epoch, (self.sums / self.views.steps_per_epoch).tolist(), lr)


def fit(forward: Callable[[torch.Tensor], torch.Tensor], params: Sequence[torch.Tensor],
        views: ViewSchedule, schedule: Schedule, loss: str, *,
        on_epoch: Optional[Callable[[EpochReport], None]] = None,
        **options) -> list[EpochReport]:
    """Trains ``params`` for every epoch of ``schedule`` (:class:`Training`, whose options
    ``options`` are); ``on_epoch(report)`` runs after each epoch."""
    training = Training(forward, params, views, schedule, loss, **options)
    reports = []
    for epoch in range(schedule.epochs):
        reports.append(training.epoch(epoch))
        if on_epoch is not None:
            on_epoch(reports[-1])
    return reports


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], views: ViewSchedule,
             count: int = 1, teacher: Optional[dict] = None, temperature: float = 1.0,
             graphs: bool = False) -> list[dict]:
    """Mean cross-entropy (``loss``), accuracy (``acc``) and, with the teacher's logits of
    the views, the distillation loss (``kd_loss``) of each of the ``count`` networks whose
    logits ``forward(x)`` stacks along the batch, over every sample of ``views``."""
    device = views.data.device
    positions = {shape: torch.zeros(1, dtype=torch.int64, device=device) for shape in views.shapes}
    totals = torch.zeros(count, 3, device=device, dtype=torch.float64)

    def make_step(shape):
        pos = positions[shape]

        def step():
            x, labels = views.batch(shape, pos)
            logits = forward(x).float().view(count, labels.shape[0], -1)
            n = labels.shape[0]
            totals[:, 0] += F.cross_entropy(logits.transpose(1, 2), labels.expand(count, n),
                                            reduction="none").sum(1)
            totals[:, 1] += (logits.argmax(-1) == labels).sum(1)
            if teacher is not None:
                target = teacher[shape].index_select(0, pos)[0]
                totals[:, 2] += losses(logits.flatten(0, 1), labels, target, "kd", count,
                                       temperature) * n
            pos.add_(1)
        return step

    steps = StepRunner({shape: make_step(shape) for shape in views.shapes}, graphs, warmup=1)
    for epoch in range(views.epochs):
        for shape, _ in views.epoch_steps(epoch):
            steps.run(shape)
    n = len(views.data) * views.epochs
    results = []
    for loss_sum, correct, kd_sum in (totals / n).tolist():
        result = dict(loss=loss_sum, acc=correct)
        if teacher is not None:
            result["kd_loss"] = kd_sum
        results.append(result)
    return results
