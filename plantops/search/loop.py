"""The search, phase by phase: data, teacher, initial network, planting rounds, the ``--table``
students, and the report.

Every network trains through the engine (plantops/engine.py: one static step per batch, the
data, views and teacher logits on the device, CUDA graphs on a GPU); each round's candidates
train together through the round op (plantops/planted_round.py), whose convolutions are the
planted kernels. Each network is evaluated once, when it is trained (validation and test),
and its numbers are kept in its checkpoint; the test set never decides anything.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import plantops
from plantops import data as datasets
from plantops import engine, models
from plantops.data import DeviceData, ViewSchedule
from plantops.engine import Schedule
from plantops.planted_round import PlantedRound
from plantops.progress import Progress
from plantops.search.checkpoints import (Log, atomic_write, candidate_stem, code_version,
                                         is_network_checkpoint, make_folder, network_from, read_network,
                                         read_partials, remove_partial, save_network,
                                         save_partial, teacher_path, write_json)
from plantops.search.distributed import Ranks
from plantops.search.config import Config
from plantops.search.networks import (InputAdapter, check_student, check_teacher,
                                      display_name, load_module)
from plantops.search.teacher_tables import TeacherTables
from plantops.chain import Chain, ChainError

NORMALIZATION = {  # per-channel mean and std of the training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}
EVAL_BATCH = 500  # images per evaluation step


@dataclasses.dataclass
class SearchData:
    """The three splits on the device, the network family their images need, and the classes."""
    train: DeviceData
    val: DeviceData
    test: DeviceData
    arch: str | None   # the paper's network family for these images; None for other sizes
    classes: int
    name: str = ""     # the dataset as the user knows it (a folder's name)

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; "
                         "use --device cpu")
    return device


def prepare_data(cfg: Config, device, paper: bool = True) -> SearchData:
    """The splits on ``device``. ``paper``: for the paper's networks (32x32 or 96x96 images,
    normalised by the dataset's channel statistics); otherwise for the user's own networks
    (any size, float [0, 1] images: search.networks)."""
    ds = datasets.load(cfg.dataset, cfg.data, Path(cfg.cache_dir) if cfg.cache_dir else None,
                       cfg.download)
    labels = ds.train_labels
    pool = np.arange(len(labels))
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if cfg.train_subset:
        if cfg.train_subset + cfg.val_size > len(labels):
            raise ValueError(f"--train-subset {cfg.train_subset} + --val-size {cfg.val_size} "
                             f"exceeds the {len(labels)} training images")
    if cfg.train_subset and cfg.train_subset + cfg.val_size < len(labels):  # else: all of them
        _, pool = datasets.stratified_split(labels, cfg.train_subset + cfg.val_size, split_seed)
    train_rel, val_rel = datasets.stratified_split(labels[pool], cfg.val_size, split_seed + 1)
    train_idx, val_idx = pool[train_rel], pool[val_rel]
    if paper and ds.image_size not in (32, 96):
        raise ValueError(f"images are {ds.image_size}x{ds.image_size}: the paper's networks "
                         "take 32x32 (CIFAR) or 96x96 (STL-10) images; plant a network built "
                         "for them with --student FILE")
    arch = {32: "cifar", 96: "stl"}.get(ds.image_size)
    mean, std = dataset_stats(cfg, ds.train_images[train_idx]) if paper else \
        ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    make = lambda x, y: DeviceData(x, y, device, mean, std)
    return SearchData(make(ds.train_images[train_idx], labels[train_idx]),
                      make(ds.train_images[val_idx], labels[val_idx]),
                      make(ds.test_images, ds.test_labels), arch, len(ds.classes),
                      display_name(cfg, cfg.data))


def dataset_stats(cfg: Config, train_images) -> tuple:
    """The per-channel mean and std the paper's networks normalise images by."""
    return NORMALIZATION.get(cfg.dataset) or _stats(train_images)


def _stats(images):
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return tuple(x.mean(0)), tuple(x.std(0))


def layout(cfg: Config, device, net=None) -> torch.memory_format:
    """The memory layout ``net`` runs in on ``device`` (--channels-last; unset: NCHW for a
    chain, whose convs run through the planted kernels where their rule takes them, and those
    read NCHW; channels-last on a CPU for any other module, a user's teacher, where oneDNN's
    channels-last kernels measured faster: 1.6x for examples/resnet.py at 64x64 on a 2-core
    AMD EPYC; NCHW on a GPU, 0.84-0.94x in channels-last on an H100)."""
    on = cfg.channels_last
    if on is None:
        on = torch.device(device).type == "cpu" and not isinstance(net, Chain)
    return torch.channels_last if on else torch.contiguous_format


def _digest(tensors) -> str:
    """A hash of the tensors' values: ranks that must hold the same network compare it."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def line(kind, name, params, metrics, seconds, extra=""):
    return (f"{kind:<9} {name:<24} params {params:>9,}  val loss {metrics['loss']:.4f}  "
            f"val acc {metrics['acc'] * 100:6.2f}%  {seconds:7.1f}s {extra}")


def training_schedule(cfg: Config, epochs: int, kind: str = "plain") -> Schedule:
    """How the search trains for ``epochs`` epochs: a plain network (``"plain"``: the teacher,
    the initial network, the --table students), a round's planted parameters
    (``"planted"``: --plant-lr, --plant-lr-decay, --plant-weight-decay where set), or a whole
    network after an accepted round (``"finetune"``: --finetune-lr where set)."""
    pick = lambda value, default: default if value is None else value
    lr, decay, weight_decay = cfg.lr, cfg.lr_decay, cfg.weight_decay
    if kind == "planted":
        lr = pick(cfg.plant_lr, lr)
        decay = pick(cfg.plant_lr_decay, decay)
        weight_decay = pick(cfg.plant_weight_decay, weight_decay)
    elif kind == "finetune":
        lr = pick(cfg.finetune_lr, lr)
    elif kind != "plain":
        raise ValueError(f"kind must be plain, planted or finetune, got {kind!r}")
    return Schedule(epochs, lr, cfg.momentum, weight_decay, cfg.batch_size, decay,
                    precision=cfg.precision)


def choose(results: list[dict], current_val: dict, current_params: int, cfg: Config) -> dict:
    """The candidate a round keeps (--select-rule): the lowest validation --select-on
    ("lowest", the poster's rule), or the largest fall of it below ``current_val`` per added
    parameter ("per_param": a cheap layer's tiny gain no longer beats a dear layer's large
    one). Where none falls, the lowest, which the round then rejects. Ties go to the lower
    layer."""
    metric = cfg.select_on
    lowest = min(results, key=lambda r: (r["val"][metric], r["layer"]))
    gains = [r for r in results if r["val"][metric] < current_val[metric]]
    if cfg.select_rule == "lowest" or not gains:
        return lowest
    return max(gains, key=lambda r: ((current_val[metric] - r["val"][metric])
                                     / max(1, r["params"] - current_params), -r["layer"]))


def candidate_seed(cfg, rnd: int, layer: int) -> int:
    """The seed of a candidate's new weights: round and layer only, so resuming or reordering
    changes nothing. (The data order and augmentation depend on cfg.seed only: every
    candidate sees the same views, which compares candidates fairly and lets the teacher's
    logits be computed once per view.)"""
    return cfg.seed * 1000003 + rnd * 101 + layer


class Search:
    """One search: its options, output folder, data, and the phases that run it.

    ``Search(cfg).run()`` is ``run_search(cfg)``. ``data`` replaces the dataset of
    ``cfg.dataset``/``cfg.data`` (benchmarks bring synthetic data). Checkpoints found in the
    output folder are reused, phase by phase.

    Under ``torchrun`` the search runs on every rank (search.distributed): the plain networks
    train data-parallel (each rank a share of every batch), the teacher's logits are computed
    in shares and gathered, and each round's candidates are spread over the ranks. Rank 0
    alone reads and writes the output folder and tells the others what it holds.
    """

    def __init__(self, cfg: Config, data: SearchData | None = None, ranks: Ranks | None = None,
                 student: torch.nn.Module | None = None, teacher: torch.nn.Module | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.ranks = ranks or Ranks.start(self.device.type)
        if self.ranks.size > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.ranks.local_rank)
            if not self.ranks.main:  # one voice: rank 0's (errors still reach stderr)
                sys.stdout = open(os.devnull, "w")
            self.ranks.same("options", dataclasses.asdict(cfg))
        self.graphs = engine.use_graphs(cfg.cuda_graphs, self.device)
        # The networks and the data first: a run that cannot start leaves no output folder.
        self.student_net, self.student_name = self._user_student(student)
        self.user_teacher = self._user_teacher(teacher)
        self.data = data or prepare_data(cfg, self.device, paper=self.student_net is None)
        self._check_networks()
        self.created = self.ranks.broadcast(not self.out.exists() if self.ranks.main else None)
        self.log = None
        if self.ranks.main:
            make_folder(self.out / "candidates", "the output folder")
            write_json(self.out / "config.json", dict(
                config=dataclasses.asdict(cfg), plantops=plantops.__version__,
                code=code_version(), torch=torch.__version__, device=str(self.device),
                world_size=self.ranks.size))
            self.log = Log(self.out / "log.jsonl")
        self.schedule = functools.partial(training_schedule, cfg)
        self.eval_views = {split: ViewSchedule(getattr(self.data, split), EVAL_BATCH)
                           for split in ("val", "test")}
        self._views: dict[int, ViewSchedule] = {}
        self.tables = TeacherTables(self.out / "teacher_logits", self.ranks, cfg.cache_dtype,
                                    cfg.precision, cfg.cache_teacher)
        self.teacher_net = None
        self.val_teacher = None  # the teacher's logits of the validation set
        self.seconds: dict[str, float] = {}  # wall time of each phase run in this process
        self.warnings: list[str] = []  # what the user was warned of, for result.json

    # ------------------------------------------------------------------------- the networks

    def _user_student(self, module):
        """(the user's student as a chain, its name), or (None, "Student[k]")."""
        cfg = self.cfg
        if module is None and cfg.student:
            module, name = load_module(cfg.student, "--student", cfg.seed)
        elif module is not None:
            name = getattr(module, "name", None) if isinstance(module, Chain) else None
            name = name or type(module).__name__
        else:
            return None, f"Student[{cfg.init_width}]"
        if name == "Sequential":
            name = "student"
        return Chain.of(module, name), name

    def _user_teacher(self, module):
        """(a teacher module of the user's, its name), or None: the search's own Teacher[k]
        (trained, or a teacher.pt of an earlier search)."""
        spec = self.cfg.teacher
        if module is not None:
            return module, getattr(module, "name", None) or type(module).__name__
        if not spec:
            return None
        path = Path(spec)
        if ".py:" not in spec:
            if not path.is_file():
                raise FileNotFoundError(f"--teacher {spec} does not exist: pass a teacher.pt "
                                        "of an earlier search, a saved nn.Module or "
                                        "FILE.py:FUNCTION")
            if is_network_checkpoint(path):
                return None  # a teacher.pt of plantops
        return load_module(spec, "--teacher", self.cfg.seed)

    def _check_networks(self):
        """Refuses, in one line and before anything trains, a student that does not run on
        the data's images or a teacher that gives the wrong logits."""
        data, cfg = self.data, self.cfg
        if self.student_net is not None:
            check_student(self.student_net, data.train.images.shape[1], data.image_size,
                          data.classes)
            if not self.points(self.student_net):
                raise ChainError(f"{self.student_name} has no conv layer before its "
                                 "classifier: pass --plant-fc1 to plant its linear layers")
        elif data.arch is None:
            raise ValueError(f"images are {data.image_size}x{data.image_size}: the paper's "
                             "networks take 32x32 or 96x96 images; plant a network built for "
                             "them with --student FILE")
        if self.user_teacher is None and not cfg.teacher and data.arch is None:
            raise ValueError(f"the paper's Teacher[k] takes 32x32 or 96x96 images, these are "
                             f"{data.image_size}x{data.image_size}: pass a trained teacher "
                             "with --teacher FILE")
        if self.user_teacher is not None:
            module, name = self.user_teacher
            # A copy (the user's module stays theirs), in the layout plain networks run in
            # (channels-last on a CPU unless --no-channels-last: 1.6x faster inference for
            # examples/resnet.py at 64x64 on a 2-core AMD EPYC).
            module = copy.deepcopy(module)
            module = module.to(self.device, memory_format=layout(cfg, self.device, module)).eval()
            if not hasattr(module, "num_classes"):
                module.num_classes = data.classes
            for p in module.parameters():
                p.requires_grad_(False)
            # The user's teacher takes [0, 1] images (search.networks).
            adapted = self.adapted(module, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), data.classes)
            sample = data.val.normalize(data.val.images[:2])
            check_teacher(adapted, name, sample, data.classes)
            self.user_teacher = adapted, name

    def adapted(self, module, mean, std, classes: int):
        """``module``, which takes images normalised by ``mean`` and ``std``, fed this
        search's images (an InputAdapter where the two differ)."""
        train = self.data.train
        mine_mean, mine_std = train.mean.flatten().cpu(), train.std.flatten().cpu()
        mean, std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()
        if torch.equal(mine_mean, mean) and torch.equal(mine_std, std):
            return module
        return InputAdapter(module, mine_std / std, (mine_mean - mean) / std, classes).to(
            self.device)

    def points(self, net) -> list[int]:
        """The layers a round plants: every conv before the classifier, and the linear ones
        with --plant-fc1."""
        return [j for j in net.points
                if self.cfg.plant_fc1 or isinstance(net.layer(j), torch.nn.Conv2d)]

    def inputs_meta(self) -> dict:
        """The input convention of the networks this search trains, kept in their meta."""
        train = self.data.train
        return dict(mean=train.mean.flatten().tolist(), std=train.std.flatten().tolist())

    # ------------------------------------------------------------------------- the folder

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists, as rank 0 sees it."""
        return self.ranks.broadcast(path.exists() if self.ranks.main else None)

    def read(self, read, path: Path):
        """``read(path)`` on rank 0, sent to every rank."""
        return self.ranks.broadcast(read(path) if self.ranks.main else None)

    def load(self, path: Path):
        net, meta = network_from(self.read(read_network, path), self.device, path)
        return net.to(memory_format=layout(self.cfg, self.device, net)), meta

    def save(self, path: Path, net, meta: dict):
        if self.ranks.main:
            save_network(path, net, meta)

    def add_log(self, record: dict):
        if self.ranks.main:
            self.log.add(record)

    # ------------------------------------------------------------------------- building blocks

    def views(self, epochs: int) -> ViewSchedule:
        """The training views of a run of ``epochs`` epochs. They depend on the data seed only
        (--seed), so every run of that length sees the same ones."""
        if epochs not in self._views:
            self._views[epochs] = ViewSchedule(self.data.train, self.cfg.batch_size, epochs,
                                               seed=self.cfg.seed)
        return self._views[epochs]

    def teacher_table(self, views: ViewSchedule) -> dict:
        """The teacher's logits of every view of ``views``, each view's computed once per
        search (search.teacher_tables)."""
        start = time.perf_counter()
        tables = self.tables.get(views)
        self._add_seconds("teacher logits", start)
        return tables

    def _add_seconds(self, phase: str, start: float) -> float:
        seconds = time.perf_counter() - start
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        return seconds

    def fit(self, name: str, label: str, forward, params, epochs: int, loss: str,
            count: int = 1, teacher=None, shared: bool = True, kind: str = "plain",
            buffers=()) -> Path:
        """Trains ``params`` for ``epochs`` epochs through the engine, with a checkpoint at the
        end of every epoch (out/partial/NAME.pt: the parameters, SGD's momentum, the epoch;
        the views are the epoch's own): a run killed and resumed redoes at most the epoch it
        was in. ``shared``: every rank trains these same parameters on its share of each
        batch (a plain network); otherwise each rank trains its own, or none (``params``
        empty: it keeps step with the others' epochs), and every rank's state is kept.
        ``kind``: which schedule (training_schedule); ``buffers``: what training changes
        besides ``params`` (batch norms' running statistics), kept in the checkpoints."""
        cfg = self.cfg
        views = self.views(epochs)
        training = None
        if params:
            training = engine.Training(
                forward, params, views, self.schedule(epochs, kind), loss, count=count,
                teacher=teacher, temperature=cfg.temperature, alpha=cfg.label_weight,
                graphs=self.graphs, ranks=self.ranks if shared else None, buffers=buffers)
        partial = self.out / "partial" / f"{name}.pt"
        start = 0
        for where, saved in self.read(read_partials, partial):  # newest first
            try:
                if training is not None:
                    training.load_state(saved["states"][0 if shared else self.ranks.rank])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                if self.ranks.main:
                    print(f"warning: the epoch checkpoint {where} is not of this training run "
                          f"({str(err).splitlines()[0][:100]}); passed over", file=sys.stderr)
                continue
            start = saved["epochs_done"]
            break
        progress = Progress(label, epochs, views.steps_per_epoch, start)
        try:
            for epoch in range(start, epochs):
                report = training.epoch(epoch, progress.step) if training else None
                state = None if training is None else training.state()
                states = {0: state} if shared else dict(enumerate(self.ranks.gather(state)))
                if self.ranks.main:
                    save_partial(partial, epoch + 1, states)
                progress.epoch_done(epoch, report.losses if report else [])
        finally:
            progress.close()
        if shared and training is not None and self.ranks.size > 1:
            self.ranks.same(f"weights of the {label} network after training",
                            _digest([*params, *buffers]),
                            "the ranks trained it apart, which is a bug of plantops' (please "
                            "report it with the command)")
        return partial

    def evaluate(self, network, split: str, count: int = 1) -> list[dict]:
        """``engine.evaluate`` on ``split``; a plain network runs through its frozen layers."""
        teacher = self.val_teacher if split == "val" else None
        forward = getattr(network, "frozen_forward", network)
        return engine.evaluate(forward, self.eval_views[split], count, teacher,
                               self.cfg.temperature, self.graphs)

    # ------------------------------------------------------------------------- plain networks

    def trained(self, path: Path, kind: str, width: int, loss: str, epochs: int,
                build=None):
        """Student[width] (or Teacher[width]; ``build()``: another network) trained with
        ``loss`` for ``epochs`` (0: as it is), or loaded from ``path``."""
        cfg = self.cfg
        if self.exists(path):
            net, meta = self.load(path)
            print(line(kind, net.describe(), models.count_params(net), meta["val"],
                       meta["seconds"], "(from checkpoint)"))
            return net, meta
        start = time.perf_counter()
        # Seeded here, so a network's initial weights do not depend on whether the ones
        # before it were trained in this process or loaded by --resume.
        torch.manual_seed(cfg.seed)
        net = build() if build is not None else models.student(width, self.data.arch,
                                                               self.data.classes)
        net = net.to(self.device, memory_format=layout(cfg, self.device, net))
        partial = None
        if epochs:
            teacher = self.teacher_table(self.views(epochs)) if loss == "kd" else None
            net.train()
            partial = self.fit(path.stem, kind, net, list(net.parameters()), epochs, loss,
                               teacher=teacher, buffers=list(net.buffers()))
        net.eval()
        val, = self.evaluate(net, "val")
        test, = self.evaluate(net, "test")
        seconds = time.perf_counter() - start
        meta = dict(kind=kind, loss_fn=loss if epochs else "as given", val=val, test=test,
                    seconds=seconds, inputs=self.inputs_meta())
        self.save(path, net, meta)
        if self.ranks.main and partial is not None:
            remove_partial(partial)
        self.add_log(dict(kind=kind, round=0, layer=None, widths=net.widths,
                          fc_width=net.fc_width, params=models.count_params(net),
                          val_loss=val["loss"], val_acc=val["acc"], seconds=seconds))
        print(line(kind, net.describe(), models.count_params(net), val, seconds))
        if val["acc"] <= 1.5 / self.data.classes and self.ranks.main:
            print(f"warning: {kind} is at chance level ({val['acc'] * 100:.1f}% validation "
                  f"accuracy): training diverged or its ReLUs died; try a lower --lr "
                  f"(now {cfg.lr}) or --temperature (now {cfg.temperature})", file=sys.stderr)
        return net, meta

    def warn(self, text: str, result: dict | None = None):
        """A warning: one line on stderr (rank 0's), kept for result.json."""
        (self.warnings if result is None else result["warnings"]).append(text)
        if self.ranks.main:
            print(f"warning: {text}", file=sys.stderr)

    def check_teacher(self, teacher_val: dict, initial_val: dict):
        """Distillation cannot lift a student above its teacher: say so before the rounds
        when the teacher is no better than the initial network on the validation set: a
        validation loss no lower, or a lower accuracy."""
        cfg = self.cfg
        if teacher_val["loss"] < initial_val["loss"] and teacher_val["acc"] >= initial_val["acc"]:
            return
        how = (f"train it longer (--teacher-epochs, now {cfg.teacher_epochs})"
               if not cfg.teacher else "pass a stronger one (--teacher FILE)")
        self.warn(f"the teacher (val loss {teacher_val['loss']:.4f}, val acc "
                  f"{teacher_val['acc'] * 100:.2f}%) is no better than the initial network "
                  f"(val loss {initial_val['loss']:.4f}, val acc {initial_val['acc'] * 100:.2f}%)"
                  f": distilling from it cannot make planting beat the initial network; {how}, "
                  f"or a wider one (--teacher-width, now {cfg.teacher_width})")

    def teacher(self):
        """The teacher: the user's module (evaluated once), a teacher.pt of an earlier search,
        or Teacher[--teacher-width] trained here; frozen, with its validation logits."""
        cfg = self.cfg
        start = time.perf_counter()
        if self.user_teacher is not None:
            net, name = self.user_teacher
            meta = self.given_teacher_meta(net, name)
        else:
            path = teacher_path(cfg, self.out)
            net, meta = self.trained(path, "teacher", cfg.teacher_width, "ce", cfg.teacher_epochs)
            if net.num_classes != self.data.classes or (
                    self.data.arch is not None and net.arch != self.data.arch):
                raise ValueError(f"the teacher {path} is a {net.arch} network with "
                                 f"{net.num_classes} classes, but the data is "
                                 f"{self.data.arch or f'{self.data.image_size}x{self.data.image_size}'} "
                                 f"with {self.data.classes} classes: pass a teacher trained on "
                                 "this dataset")
            # A teacher.pt of an earlier search takes the images it was trained on.
            # (Without a record of them, as the paper's networks are fed: normalised.)
            inputs = meta.get("inputs")
            meta = dict(meta, name=f"Teacher[{max(net.widths)}]")
            if inputs is not None or self.student_net is not None:
                mean, std = (inputs["mean"], inputs["std"]) if inputs else self.paper_stats()
                net = self.adapted(net, mean, std, net.num_classes)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.teacher_net = self.tables.teacher = net
        self.teacher_meta = meta
        self.val_teacher = engine.teacher_logits(net, self.eval_views["val"])
        self._add_seconds("teacher", start)
        return net, meta

    def paper_stats(self) -> tuple:
        """The channel statistics the paper's networks normalise this data by."""
        images = self.data.train.images
        if self.cfg.dataset in NORMALIZATION:
            return NORMALIZATION[self.cfg.dataset]
        x = images.permute(0, 2, 3, 1).reshape(-1, images.shape[1]).cpu().double() / 255.0
        return tuple(x.mean(0).tolist()), tuple(x.std(0, unbiased=False).tolist())

    def given_teacher_meta(self, net, name: str) -> dict:
        """A teacher of the user's, evaluated on validation and test (it is not trained)."""
        val, = self.evaluate(net, "val")
        test, = self.evaluate(net, "test")
        params = sum(p.numel() for p in net.parameters())
        print(line("teacher", name[:24], params, val, 0.0, "(given)"))
        self.add_log(dict(kind="teacher", round=0, layer=None, name=name, params=params,
                          val_loss=val["loss"], val_acc=val["acc"], seconds=0.0))
        return dict(kind="teacher", loss_fn="given", val=val, test=test, seconds=0.0, name=name,
                    params=params)

    def initial(self):
        start = time.perf_counter()
        build = None if self.student_net is None else (lambda: Chain.of(self.student_net))
        result = self.trained(self.out / "initial.pt", "initial", self.cfg.init_width,
                              self.cfg.init_loss, self.cfg.init_epochs, build)
        self._add_seconds("initial", start)
        return result

    def students(self) -> list:
        """The paper's comparison rows: Student[k] trained the standard way, CE and KD."""
        cfg = self.cfg
        start = time.perf_counter()
        students = []
        for width in [int(w) for w in cfg.table_widths.split(",") if w.strip()] + [cfg.init_width]:
            for loss in ("ce", "kd"):
                path = self.out / f"student_{width}_{loss}.pt"
                if (width == cfg.init_width and loss == cfg.init_loss) or \
                        any(p == path for p, _, _ in students):
                    continue  # the initial network is that row already
                self.trained(path, f"Student[{width}] {loss.upper()}", width, loss,
                             cfg.init_epochs)
                students.append((path, f"Student[{width}]", loss.upper()))
        self._add_seconds("students", start)
        return students

    # ------------------------------------------------------------------------- planting

    def plant_rounds(self, current, initial_val):
        """The planting rounds from ``current``; returns (accepted rounds, why the search
        stopped). Each round's candidates and every accepted network are checkpointed."""
        cfg = self.cfg
        current_val = initial_val
        accepted = []
        stop_reason = f"reached --max-rounds {cfg.max_rounds}"
        for rnd in range(1, cfg.max_rounds + 1):
            round_path = self.out / f"round_{rnd}.pt"
            if self.exists(round_path):
                current, meta = self.load(round_path)
                current_val = meta["val"]
                accepted.append(dict(round=rnd, **meta["round"]))
                print(line(f"round {rnd}", current.describe(), models.count_params(current),
                           current_val, meta["seconds"], "(from checkpoint)"))
                continue
            start, comm = time.perf_counter(), self.ranks.seconds
            results = self.run_candidates(rnd, current)
            eligible = [r for r in results if r is not None]
            if not eligible:
                stop_reason = f"every candidate is above --max-params {cfg.max_params}"
                break
            # The same results on every rank, so every rank makes this choice.
            best = choose(eligible, current_val, models.count_params(current), cfg)
            improved = best["val"][cfg.select_on] < current_val[cfg.select_on]
            name = current.layer_names()[best["layer"]]
            verdict = "accepted" if improved else "rejected: no lower validation loss, stop"
            seconds = self._add_seconds(f"round {rnd}", start)
            if self.ranks.size > 1:
                self.seconds[f"round {rnd} communication"] = self.ranks.seconds - comm
            print(f"round {rnd:<3} best {name:<6} val {cfg.select_on} "
                  f"{best['val'][cfg.select_on]:.4f} vs {current_val[cfg.select_on]:.4f}  "
                  f"{verdict}  ({seconds:.1f}s)")
            if not improved:
                stop_reason = (f"round {rnd}: no candidate lowered the validation "
                               f"{cfg.select_on} below {current_val[cfg.select_on]:.4f}")
                break
            current, _ = self.load(candidate_stem(self.out, rnd, best["layer"]).with_suffix(".pt"))
            current_val = best["val"]
            if cfg.finetune_epochs:
                tuned = time.perf_counter()
                current, current_val = self.finetune(rnd, current)
                seconds += self._add_seconds(f"round {rnd}", tuned)
            test, = self.evaluate(current, "test")
            info = dict(layer=name, widths=current.widths, fc_width=current.fc_width,
                        params=models.count_params(current), val=current_val)
            self.save(round_path, current, dict(val=current_val, test=test, round=info,
                                                seconds=seconds))
            self.add_log(dict(kind="round", round=rnd, layer=name, widths=current.widths,
                              fc_width=current.fc_width, params=info["params"],
                              val_loss=current_val["loss"], val_acc=current_val["acc"],
                              seconds=seconds))
            accepted.append(dict(round=rnd, **info))
        return accepted, stop_reason

    def finetune(self, rnd: int, net):
        """--finetune-epochs: the accepted network of round ``rnd``, every parameter trained by
        distillation (a departure from the poster, docs/method.md); returns it and its
        validation numbers. Its views are the first epochs of the initial network's, so the
        teacher's logits are already in the table."""
        cfg = self.cfg
        start = time.perf_counter()
        for p in net.parameters():
            p.requires_grad_(True)
        teacher = self.teacher_table(self.views(cfg.finetune_epochs))
        net.train()
        partial = self.fit(f"finetune_r{rnd}", f"round {rnd} fine-tuning", net,
                           list(net.parameters()), cfg.finetune_epochs, "kd", teacher=teacher,
                           kind="finetune", buffers=list(net.buffers()))
        net.eval()
        val, = self.evaluate(net, "val")
        if self.ranks.main:
            remove_partial(partial)
        print(line("finetune", net.describe(), models.count_params(net), val,
                   time.perf_counter() - start, f"(round {rnd}, {cfg.finetune_epochs} epochs)"))
        return net, val

    def run_candidates(self, rnd: int, current) -> list:
        """Trains (or reloads) round ``rnd``'s candidate for each plantable layer; returns each
        one's result, None for a candidate above --max-params.

        The candidates are spread over the ranks (rank r takes every size-th, from the r-th;
        one process takes them all), and each rank trains its share together, or one after
        another without --train-together, in slots that every rank steps through at once.
        The validation metrics and the trained weights of every candidate are then gathered
        on every rank, and rank 0 saves them."""
        cfg = self.cfg
        layers = self.points(current)
        results, eligible = {}, {}
        for layer in layers:
            stem = candidate_stem(self.out, rnd, layer)
            name = current.layer_names()[layer]
            saved = self.read(lambda p: json.loads(p.read_text())
                              if p.exists() and p.with_suffix(".pt").exists() else None,
                              stem.with_suffix(".json"))
            if saved is not None:
                results[layer] = saved
                print(line("candidate", f"r{rnd} +{cfg.plant_channels} {name}",
                           saved["params"], saved["val"], saved["seconds"], "(from checkpoint)"))
            generator = torch.Generator().manual_seed(candidate_seed(cfg, rnd, layer))
            candidate = models.plant(current.cpu(), layer, cfg.plant_channels, cfg.plant_init,
                                     generator).to(self.device)
            current.to(self.device)
            params = models.count_params(candidate)
            if cfg.max_params and params > cfg.max_params:
                print(f"candidate r{rnd} +{cfg.plant_channels} {name}: {params:,} params is "
                      f"above --max-params {cfg.max_params:,}, skipped")
                results[layer] = None
                continue
            eligible[layer] = candidate
        mine = self.ranks.share(sorted(eligible))
        groups = [mine] if cfg.train_together else [[layer] for layer in mine]
        slots = 1 if cfg.train_together else -(-len(eligible) // self.ranks.size)
        for slot in range(slots):
            # A slot is always all its candidates (those saved before an interruption too):
            # the same groups train the same way, and its epoch checkpoint is kept until every
            # member is saved.
            members = [layer for layers_r in self.ranks.gather(groups[slot] if slot < len(groups)
                                                                else [])
                       for layer in layers_r]
            if all(results.get(layer) is not None for layer in members):
                continue  # trained and saved before an interruption
            group = groups[slot] if slot < len(groups) else []
            start = time.perf_counter()
            round_op = PlantedRound(current, {layer: eligible[layer] for layer in group}) \
                if group else None
            names = "+".join(current.layer_names()[layer] for layer in group)
            where = f", rank {self.ranks.rank} of {self.ranks.size}" if self.ranks.size > 1 else ""
            teacher = self.teacher_table(self.views(cfg.plant_epochs))
            if round_op:
                round_op.train()
            partial = self.fit(f"r{rnd}_" + "_".join(map(str, sorted(members))),
                               f"round {rnd} ({names}{where})", round_op,
                               round_op.parameters() if round_op else [], cfg.plant_epochs,
                               "kd", count=len(group), teacher=teacher, shared=False,
                               kind="planted", buffers=round_op.buffers() if round_op else [])
            vals = self.evaluate(round_op.eval(), "val", len(group)) if group else []
            seconds = time.perf_counter() - start
            states = [models.planted_state(eligible[layer]) for layer in group]
            for rank, (layers_r, vals_r, states_r, seconds_r) in enumerate(
                    self.ranks.gather((group, vals, states, seconds))):
                for layer, val, state in zip(layers_r, vals_r, states_r):
                    models.load_planted_state(eligible[layer], state)
                    if results.get(layer) is None:
                        note = (f"(trained with {len(layers_r) - 1} others in {seconds_r:.1f}s"
                                f"{f' on rank {rank}' if self.ranks.size > 1 else ''})"
                                if len(layers_r) > 1 else
                                (f"(rank {rank})" if self.ranks.size > 1 else ""))
                        # One pass trained them all: each is charged an equal share of its time.
                        results[layer] = self.save_candidate(rnd, layer, eligible[layer], val,
                                                             seconds_r / len(layers_r), note,
                                                             rank)
            if self.ranks.main:
                remove_partial(partial)
        return [results[layer] for layer in layers]

    def save_candidate(self, rnd, layer, candidate, val, seconds, note="", rank=0) -> dict:
        cfg = self.cfg
        stem = candidate_stem(self.out, rnd, layer)
        name = candidate.layer_names()[layer]
        params = models.count_params(candidate)
        result = dict(round=rnd, layer=layer, layer_name=name, widths=candidate.widths,
                      fc_width=candidate.fc_width, params=params, val=val, seconds=seconds,
                      rank=rank)
        self.save(stem.with_suffix(".pt"), candidate, dict(val=val, seconds=seconds))
        if self.ranks.main:
            write_json(stem.with_suffix(".json"), result)
        self.add_log(dict(kind="candidate", round=rnd, layer=name, widths=candidate.widths,
                          fc_width=candidate.fc_width, params=params, val_loss=val["loss"],
                          val_acc=val["acc"], val_kd_loss=val["kd_loss"], seconds=seconds,
                          rank=rank))
        print(line("candidate", f"r{rnd} +{cfg.plant_channels} {name}", params, val, seconds,
                   note))
        return result

    # ------------------------------------------------------------------------- the report

    def finish(self, accepted, stop_reason, students=()) -> dict:
        """Result files, plot and exported network, from the numbers kept in the checkpoints
        (each network was evaluated once, when it was trained)."""
        from plantops.search import report

        cfg = self.cfg
        start = time.perf_counter()

        def entry(path, label, loss_fn):
            net, meta = self.load(path)
            test = meta.get("test")
            if test is None:  # a checkpoint from a search that did not keep test numbers
                test, = self.evaluate(net, "test")
            return dict(network=label, widths=net.widths, fc_width=net.fc_width,
                        params=models.count_params(net), test_loss=test["loss"],
                        test_acc=test["acc"], val_loss=meta["val"]["loss"],
                        val_acc=meta["val"]["acc"], loss_fn=loss_fn), net

        if self.user_teacher is not None:
            meta = self.teacher_meta
            teacher = dict(network=meta["name"], widths=None, fc_width=None,
                           params=meta["params"], test_loss=meta["test"]["loss"],
                           test_acc=meta["test"]["acc"], val_loss=meta["val"]["loss"],
                           val_acc=meta["val"]["acc"], loss_fn="given")
        else:
            teacher, _ = entry(teacher_path(cfg, self.out), self.teacher_meta["name"], "CE")
        initial_loss = cfg.init_loss.upper() if cfg.init_epochs or self.student_net is None \
            else "given"
        initial, final_net = entry(self.out / "initial.pt", f"Initial = {self.student_name}",
                                   initial_loss)
        rounds = []
        for a in accepted:
            row, final_net = entry(self.out / f"round_{a['round']}.pt",
                                   f"Planted round {a['round']} (+{a['layer']})", "KD")
            rounds.append(dict(row, round=a["round"], layer=a["layer"]))
        final = dict(rounds[-1] if rounds else initial, network="Planted (final)")
        student_rows = [entry(path, label, loss)[0] for path, label, loss in students]
        compare = cfg.compare_with
        if compare == "auto":
            compare = cfg.dataset if cfg.dataset in report.PAPER else "none"
        result = dict(final=final, initial=initial, teacher=teacher, rounds=rounds,
                      students=student_rows, compare_with=compare, stop_reason=stop_reason,
                      config=dataclasses.asdict(cfg), world_size=self.ranks.size,
                      warnings=list(self.warnings), dataset_name=self.data.name or cfg.dataset,
                      student_name=self.student_name)
        result["against_curves"] = report.against_curves(result)
        if any(c["margin"] < 0 for c in result["against_curves"].values()):
            self.warn(report.curve_sentence(result) + ": planting did not beat the "
                      "networks of its size trained the standard way", result)
        if self.ranks.main:
            # The paper's network takes [0, 1] images through a normalising first layer; the
            # user's own is exported as they built it, grown (it takes [0, 1] images already).
            train = self.data.train
            exported = final_net.cpu().to_sequential(train.mean.cpu(), train.std.cpu()) \
                if isinstance(final_net, models.PlantNet) else final_net.cpu().export()
            atomic_write(self.out / "final.pt", lambda p: torch.save(exported, p))
            report.write_results(self.out, result)
        seconds = self._add_seconds("report", start)
        print(f"report: results.md, accuracy_vs_params.png, final.pt, result.json "
              f"({seconds:.1f}s)")
        if self.ranks.size > 1:  # of the phases' times, spent in collectives (rank 0's)
            self.seconds["communication"] = self.ranks.seconds
        result["seconds"] = dict(self.seconds)
        if self.ranks.main:
            write_json(self.out / "result.json", result)
        print(f"done: {final['network']} {final_net.describe()} "
              f"{final['params']:,} params, test loss {final['test_loss']:.4f}, test acc "
              f"{final['test_acc'] * 100:.2f}% ({stop_reason}). Results in {self.out}/results.md")
        print("time: " + ", ".join(f"{phase} {s:.1f}s" for phase, s in self.seconds.items()))
        return result

    def run(self) -> dict:
        try:
            return self._run()
        except (ValueError, FileNotFoundError, datasets.DataError):
            # Refused before anything was trained (a teacher of another dataset, say): remove
            # the folder this run made, rather than leave one that holds nothing to resume.
            if self.ranks.main and self.created and not any(self.out.glob("*.pt")):
                shutil.rmtree(self.out, ignore_errors=True)
            raise

    def _run(self) -> dict:
        cfg = self.cfg
        where = f", {self.ranks.size} ranks" if self.ranks.size > 1 else ""
        family = self.data.arch if self.student_net is None else self.student_name
        print(f"plantops {plantops.__version__}: {self.data.name or cfg.dataset} ({family}), "
              f"{len(self.data.train)} train / {len(self.data.val)} val / {len(self.data.test)} "
              f"test images, device {self.device}{where}, out {self.out}")
        _, teacher_meta = self.teacher()
        current, meta = self.initial()
        self.check_teacher(teacher_meta["val"], meta["val"])
        accepted, stop_reason = self.plant_rounds(current, meta["val"])
        students = self.students() if cfg.table else []
        return self.finish(accepted, stop_reason, students)


def run_search(cfg: Config, student: torch.nn.Module | None = None,
               teacher: torch.nn.Module | None = None) -> dict:
    """Runs the whole search of ``cfg`` (see ``python -m plantops.search --help``).
    ``student``: an nn.Sequential of your own to plant (instead of Student[--init-width]);
    ``teacher``: a trained module of your own, used as it is (instead of training
    Teacher[--teacher-width]). Both take float [0, 1] images (search.networks)."""
    return Search(cfg, student=student, teacher=teacher).run()
