"""Channel planting search (Mitsuno, Nomura, Kurita, ICPR 2020), end to end.

    python -m plantops.search --dataset folder --data ../shared/data/cifar10-jpeg.tar.gz --out runs/quick
    python -m plantops.search --preset paper --dataset cifar10 --data DIR --out runs/paper --device cuda
    python -m plantops.search --resume runs/quick          # continue an interrupted search

Steps (METHOD.md): train a teacher with cross-entropy; train a narrow initial network; then in
each round plant ``--plant-channels`` channels into each plantable layer in turn (one
candidate per layer), train only the planted parameters by distillation from the teacher,
keep the candidate with the lowest validation loss if it beats the current network, and stop
when none does (or at ``--max-rounds`` / ``--max-params``). The test set is evaluated only
for the final report, never for a choice.

Writes to ``--out``: config.json, log.jsonl, result.json, results.md, accuracy_vs_params.png,
checkpoints (teacher.pt, initial.pt, round_K.pt), and final.pt, the chosen network as a plain
``nn.Sequential`` (``torch.load(path, weights_only=False)``; no plantops needed).

The ``quick`` preset (default) runs a reduced protocol meant for a 2-core CPU in about ten
minutes; ``paper`` is the full protocol of the first author's code (100 epochs, SGD 0.01).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import plantops
from plantops import data as datasets
from plantops import models
from plantops.round_training import Round, evaluate_round, train_round
from plantops.train import CACHE_DTYPES, PRECISIONS, Schedule, TeacherCache, evaluate, train

NORMALIZATION = {  # per-channel mean and std of the training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


@dataclasses.dataclass
class Config:
    """Every option of the search; the command-line flags are these names with dashes."""

    dataset: str = dataclasses.field(default="cifar10", metadata=dict(
        help="cifar10, cifar100, stl10 or folder (train/<class>/*, test/<class>/*)"))
    data: Optional[str] = dataclasses.field(default=None, metadata=dict(
        help="where the dataset is: its folder, archive, or the folder holding it"))
    out: str = dataclasses.field(default="runs/search", metadata=dict(help="output folder"))
    device: str = dataclasses.field(default="auto", metadata=dict(help="cpu, cuda, or auto"))
    seed: int = dataclasses.field(default=0, metadata=dict(help="seed of every random choice"))
    split_seed: Optional[int] = dataclasses.field(default=None, metadata=dict(
        help="seed of the train/validation split and of --train-subset (default: --seed); fix "
             "it to rerun with other seeds on the same validation set, e.g. reusing a "
             "teacher.pt and initial.pt"))
    download: bool = dataclasses.field(default=True, metadata=dict(
        help="download an official dataset that is missing (checksum verified)"))
    train_subset: int = dataclasses.field(default=0, metadata=dict(
        help="use this many training images (stratified, seeded); 0 = all"))
    val_size: int = dataclasses.field(default=5000, metadata=dict(
        help="validation images held out of the training set (images)"))
    teacher_width: int = dataclasses.field(default=128, metadata=dict(help="Teacher[k] conv width"))
    teacher_epochs: int = dataclasses.field(default=100, metadata=dict(help="teacher epochs"))
    teacher: Optional[str] = dataclasses.field(default=None, metadata=dict(
        help="reuse a trained teacher: a teacher.pt from an earlier --out"))
    init_width: int = dataclasses.field(default=8, metadata=dict(help="initial Student[k] width"))
    init_epochs: int = dataclasses.field(default=100, metadata=dict(help="initial network epochs"))
    init_loss: str = dataclasses.field(default="kd", metadata=dict(
        help="initial network loss: kd (distillation) or ce (labels)"))
    plant_channels: int = dataclasses.field(default=4, metadata=dict(
        help="channels planted per candidate (p)"))
    plant_epochs: int = dataclasses.field(default=30, metadata=dict(
        help="epochs of training the planted channels of each candidate"))
    plant_fc1: bool = dataclasses.field(default=False, metadata=dict(
        help="let fc1 be planted too (adds fc1 outputs and fc2 inputs)"))
    plant_init: str = dataclasses.field(default="preserve", metadata=dict(
        help="preserve: new outgoing weights start at zero (a candidate starts exactly at its "
             "parent); random: default init for them too"))
    max_rounds: int = dataclasses.field(default=20, metadata=dict(help="planting rounds at most"))
    max_params: int = dataclasses.field(default=0, metadata=dict(
        help="skip candidates above this many parameters; 0 = no budget"))
    select_on: str = dataclasses.field(default="loss", metadata=dict(
        help="validation criterion: loss (cross-entropy) or kd_loss (distillation loss)"))
    batch_size: int = dataclasses.field(default=128, metadata=dict(help="images per step"))
    lr: float = dataclasses.field(default=0.01, metadata=dict(help="SGD learning rate"))
    momentum: float = dataclasses.field(default=0.9, metadata=dict(help="SGD momentum"))
    weight_decay: float = dataclasses.field(default=5e-4, metadata=dict(help="SGD weight decay"))
    lr_decay: float = dataclasses.field(default=0.2, metadata=dict(
        help="lr multiplier after each third of every training run"))
    temperature: float = dataclasses.field(default=1.0, metadata=dict(
        help="distillation temperature (the poster's L_KL has none, i.e. 1; the loss is "
             "scaled by T^2, so larger T needs a smaller --lr)"))
    label_weight: float = dataclasses.field(default=0.0, metadata=dict(
        help="weight of the label cross-entropy mixed into distillation (0 = pure KD)"))
    precision: str = dataclasses.field(default="float32", metadata=dict(
        help="training precision: float32, or bfloat16 (forward passes and losses under "
             "torch.autocast; weights, gradients, optimizer and evaluation stay float32; "
             "meant for GPUs with bfloat16 units)"))
    channels_last: Optional[bool] = dataclasses.field(default=None, metadata=dict(
        help="run the networks in channels-last memory layout; auto: on a CPU (training "
             "steps 1.3-1.6x faster with oneDNN on 2 cores), not on a GPU (a round's step "
             "0.84-0.94x in float32 on an H100); sums in another order, so a long run ends "
             "at slightly different numbers"))
    cache_teacher: bool = dataclasses.field(default=True, metadata=dict(
        help="compute the teacher's logits once per augmented view and reuse them across "
             "candidates (same results, far fewer teacher passes)"))
    cache_dtype: str = dataclasses.field(default="float32", metadata=dict(
        help="dtype of the cached teacher logits: float32 (results identical to no cache), "
             "or float16/bfloat16 (half the memory; rounded logits can change results "
             "slightly)"))
    train_together: bool = dataclasses.field(default=True, metadata=dict(
        help="train a round's candidates together in one pass over the data, sharing the "
             "parent's forward (same results up to float rounding; faster)"))
    table: bool = dataclasses.field(default=False, metadata=dict(
        help="also train Student[k] for each --table-widths with cross-entropy and with "
             "distillation (same epochs as the initial network) and put them, with the "
             "paper's numbers, in the results table and plot"))
    table_widths: str = dataclasses.field(default="16,32,64", metadata=dict(
        help="comma-separated Student[k] widths for --table"))
    compare_with: str = dataclasses.field(default="auto", metadata=dict(
        help="whose paper table to print beside ours: cifar10, cifar100, stl10, none, or auto "
             "(the dataset's own; none for an image folder)"))
    cache_dir: Optional[str] = dataclasses.field(default=None, metadata=dict(
        help="where decoded datasets are cached (default ~/.cache/plantops or $PLANTOPS_CACHE)"))

    def validate(self):
        choices = dict(dataset=tuple(datasets.FORMATS), init_loss=("kd", "ce"),
                       plant_init=("preserve", "random"), select_on=("loss", "kd_loss"),
                       compare_with=("auto", "cifar10", "cifar100", "stl10", "none"),
                       cache_dtype=tuple(CACHE_DTYPES), precision=PRECISIONS)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        positive = ("teacher_width", "init_width", "plant_channels", "batch_size", "val_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("teacher_epochs", "init_epochs", "plant_epochs", "max_rounds",
                     "train_subset", "max_params", "seed", "split_seed"):
            value = getattr(self, name)
            if value is not None and value < 0:  # split_seed None: --seed's
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not 0 <= self.label_weight <= 1:
            raise ValueError(f"--label-weight must be in [0, 1], got {self.label_weight}")
        try:
            widths = [int(w) for w in str(self.table_widths).split(",") if w.strip()]
        except ValueError:
            widths = [0]
        if not widths or min(widths) < 1:
            raise ValueError(f"--table-widths must be comma-separated positive widths, "
                             f"got {self.table_widths!r}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("--temperature and --lr must be > 0")
        return self


PRESETS = {
    # Reduced protocol for a 2-core CPU (about ten minutes with the data present).
    "quick": dict(train_subset=8000, val_size=2000, teacher_width=64, teacher_epochs=15,
                  init_epochs=15, plant_epochs=12, max_rounds=3, lr=0.05),
    # The first author's training recipe of the period (METHOD.md): 100 epochs, SGD 0.01.
    "paper": dict(train_subset=0, val_size=5000, teacher_width=128, teacher_epochs=100,
                  init_epochs=100, plant_epochs=30, max_rounds=20, lr=0.01),
}


def config_from_dict(values: dict, base: Config | None = None) -> Config:
    """A Config from a mapping of option names; unknown names are rejected."""
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known options: "
                         f"{', '.join(sorted(known))}")
    return dataclasses.replace(base or Config(), **values)


def shown(f: dataclasses.Field, value):
    """An option's value as --help and the README show it: an unset on/off option is auto."""
    return "auto" if value is None and f.type == "Optional[bool]" else value


def options_table() -> str:
    """The README's table of options, from Config (tests/test_search.py keeps them equal)."""
    rows = ["| option | default (`--preset quick`) | `--preset paper` | meaning |",
            "|---|---|---|---|"]
    quick, paper = config_from_dict(PRESETS["quick"]), config_from_dict(PRESETS["paper"])
    for f in dataclasses.fields(Config):
        rows.append(f"| `--{f.name.replace('_', '-')}` | {shown(f, getattr(quick, f.name))} | "
                    f"{shown(f, getattr(paper, f.name))} | {f.metadata['help']} |")
    return "\n".join(rows)


def parse_args(argv=None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m plantops.search", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="starting values of every option (default quick): " +
                        "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    parser.add_argument("--config", help="JSON file of options (same names, dashes or "
                        "underscores); command-line flags override it")
    parser.add_argument("--resume", metavar="DIR", help="continue the search saved in DIR")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = {"Optional[str]": str, "str": str, "int": int, "Optional[int]": int,
                "float": float}.get(str(f.type))
        if f.type in ("bool", "Optional[bool]"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata["help"] + f" (default {shown(f, f.default)})")
        else:
            parser.add_argument(flag, type=kind, default=None,
                                help=f.metadata["help"] + f" (default {shown(f, f.default)})")
    args = parser.parse_args(argv)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name) is not None}
    if args.resume:
        saved_path = Path(args.resume) / "config.json"
        if not saved_path.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there; pass the "
                                    "--out folder of the search to continue")
        saved = json.loads(saved_path.read_text())["config"]
        return config_from_dict({**saved, **flags, "out": args.resume}).validate()
    cfg = config_from_dict(PRESETS[args.preset])
    if args.config:
        loaded = json.loads(Path(args.config).read_text())
        cfg = config_from_dict({k.replace("-", "_"): v for k, v in loaded.items()}, cfg)
    return config_from_dict(flags, cfg).validate()


# ----------------------------------------------------------------------------- files

def atomic_write(path: Path, write):
    """Writes through a temporary file and a rename: a killed run leaves old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj):
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def save_network(path: Path, net: models.PlantNet, meta: dict):
    plain = models.merge(net)
    payload = dict(widths=plain.widths, fc_width=plain.fc_width, arch=plain.arch,
                   num_classes=plain.num_classes, state_dict=plain.state_dict(), meta=meta)
    atomic_write(path, lambda p: torch.save(payload, p))


def load_network(path: Path, device, memory_format=torch.contiguous_format
                 ) -> tuple[models.PlantNet, dict]:
    payload = torch.load(path, map_location=device, weights_only=False)
    net = models.PlantNet(payload["widths"], payload["arch"], payload["num_classes"],
                          payload["fc_width"])
    net.load_state_dict(payload["state_dict"])
    return net.to(device, memory_format=memory_format), payload["meta"]


def layout(cfg: Config, device) -> torch.memory_format:
    """The memory layout the search's networks run in on ``device`` (--channels-last; unset:
    channels-last on a CPU only, where it was measured faster)."""
    on = cfg.channels_last if cfg.channels_last is not None else torch.device(device).type == "cpu"
    return torch.channels_last if on else torch.contiguous_format


class Log:
    """log.jsonl: one record per trained network or candidate. A line cut by a kill is dropped."""

    def __init__(self, path: Path):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        self.records = []
        for line in lines:
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the run was killed while writing this line
        write_json_lines = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(path, lambda p: p.write_text(write_json_lines))

    def add(self, record: dict):
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def code_version() -> str:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short",
                               "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ----------------------------------------------------------------------------- the search

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; "
                         "use --device cpu")
    return device


def prepare_data(cfg: Config, device):
    ds = datasets.load(cfg.dataset, cfg.data, Path(cfg.cache_dir) if cfg.cache_dir else None,
                       cfg.download)
    labels = ds.train_labels
    pool = np.arange(len(labels))
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if cfg.train_subset:
        if cfg.train_subset + cfg.val_size > len(labels):
            raise ValueError(f"--train-subset {cfg.train_subset} + --val-size {cfg.val_size} "
                             f"exceeds the {len(labels)} training images")
        _, pool = datasets.stratified_split(labels, cfg.train_subset + cfg.val_size, split_seed)
    train_rel, val_rel = datasets.stratified_split(labels[pool], cfg.val_size, split_seed + 1)
    train_idx, val_idx = pool[train_rel], pool[val_rel]
    if ds.image_size not in (32, 96):
        raise ValueError(f"images are {ds.image_size}x{ds.image_size}: the paper's networks "
                         "take 32x32 (CIFAR) or 96x96 (STL-10) images")
    arch = "stl" if ds.image_size == 96 else "cifar"
    mean, std = NORMALIZATION.get(cfg.dataset) or _stats(ds.train_images[train_idx])
    make = lambda x, y: datasets.DeviceData(x, y, device, mean, std)
    return (make(ds.train_images[train_idx], labels[train_idx]),
            make(ds.train_images[val_idx], labels[val_idx]),
            make(ds.test_images, ds.test_labels), arch, len(ds.classes))


def _stats(images):
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return tuple(x.mean(0)), tuple(x.std(0))


def line(kind, name, params, metrics, seconds, extra=""):
    return (f"{kind:<9} {name:<24} params {params:>9,}  val loss {metrics['loss']:.4f}  "
            f"val acc {metrics['acc'] * 100:6.2f}%  {seconds:7.1f}s {extra}")


def training_schedule(cfg: Config, epochs: int) -> Schedule:
    """How every network of the search trains, for ``epochs`` epochs."""
    return Schedule(epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size,
                    cfg.lr_decay, precision=cfg.precision)


def run_search(cfg: Config) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates").mkdir(exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    write_json(out / "config.json", dict(config=dataclasses.asdict(cfg),
                                         plantops=plantops.__version__, code=code_version(),
                                         torch=torch.__version__, device=str(device)))
    log = Log(out / "log.jsonl")
    train_data, val_data, test_data, arch, classes = prepare_data(cfg, device)
    print(f"plantops {plantops.__version__}: {cfg.dataset} ({arch}), {len(train_data)} train / "
          f"{len(val_data)} val / {len(test_data)} test images, device {device}, out {out}")

    schedule = functools.partial(training_schedule, cfg)

    def trained(path: Path, kind: str, build, loss: str, epochs: int, teacher=None):
        if path.exists():
            net, meta = load_network(path, device, layout(cfg, device))
            print(line(kind, net.describe(), models.count_params(net), meta["val"], meta["seconds"],
                       "(from checkpoint)"))
            return net, meta
        # Seeded here, so a network's initial weights do not depend on whether the ones
        # before it were trained in this process or loaded by --resume.
        torch.manual_seed(cfg.seed)
        net = build().to(device, memory_format=layout(cfg, device))
        seconds = train(net, net.parameters(), train_data, schedule(epochs), loss,
                        cfg.seed, teacher, cfg.temperature, cfg.label_weight, progress=kind)
        val = evaluate(net, val_data, teacher=teacher, temperature=cfg.temperature)
        meta = dict(kind=kind, loss_fn=loss, val=val, seconds=seconds)
        save_network(path, net, meta)
        log.add(dict(kind=kind, round=0, layer=None, widths=net.widths, fc_width=net.fc_width,
                     params=models.count_params(net), val_loss=meta["val"]["loss"],
                     val_acc=meta["val"]["acc"], seconds=seconds))
        print(line(kind, net.describe(), models.count_params(net), meta["val"], seconds))
        if val["acc"] <= 1.5 / classes:
            print(f"warning: {kind} is at chance level ({val['acc'] * 100:.1f}% validation "
                  f"accuracy): training diverged or its ReLUs died; try a lower --lr "
                  f"(now {cfg.lr}) or --temperature (now {cfg.temperature})", file=sys.stderr)
        return net, meta

    teacher_file = teacher_path(cfg, out)
    if cfg.teacher and not teacher_file.exists():
        raise FileNotFoundError(f"--teacher {teacher_file} does not exist: pass a teacher.pt "
                                "written by an earlier search")
    teacher_net, _ = trained(teacher_file, "teacher",
                             lambda: models.student(cfg.teacher_width, arch, classes), "ce",
                             cfg.teacher_epochs)
    if teacher_net.num_classes != classes or teacher_net.arch != arch:
        raise ValueError(f"the teacher {teacher_file} is a {teacher_net.arch} network with "
                         f"{teacher_net.num_classes} classes, but the data is {arch} with "
                         f"{classes} classes: pass a teacher trained on this dataset")
    teacher_net.eval()
    for p in teacher_net.parameters():
        p.requires_grad_(False)
    # Every candidate sees the same views (data seed = cfg.seed), so the teacher runs once per view.
    teacher_cache = (TeacherCache(teacher_net, CACHE_DTYPES[cfg.cache_dtype])
                     if cfg.cache_teacher else None)
    current, meta = trained(out / "initial.pt", "initial",
                            lambda: models.student(cfg.init_width, arch, classes), cfg.init_loss,
                            cfg.init_epochs, teacher_net)
    accepted, stop_reason = plant_rounds(cfg, out, log, current, meta["val"], teacher_net,
                                         train_data, val_data, device, schedule, teacher_cache)
    if teacher_cache is not None and teacher_cache.misses:
        print(f"teacher cache: {teacher_cache.misses} batches computed once, "
              f"{teacher_cache.hits} reused; {teacher_cache.nbytes / 1e6:.1f} MB of "
              f"{cfg.cache_dtype} logits; {teacher_cache.seconds:.1f}s of teacher passes")
    students = []
    if cfg.table:
        # The paper's comparison rows: Student[k] trained the standard way, CE and KD.
        for width in [int(w) for w in cfg.table_widths.split(",") if w.strip()] + [cfg.init_width]:
            for loss in ("ce", "kd"):
                path = out / f"student_{width}_{loss}.pt"
                if (width == cfg.init_width and loss == cfg.init_loss) or \
                        any(p == path for p, _, _ in students):
                    continue  # the initial network is that row already
                trained(path, f"Student[{width}] {loss.upper()}",
                        lambda width=width: models.student(width, arch, classes), loss,
                        cfg.init_epochs, teacher_net if loss == "kd" else None)
                students.append((path, f"Student[{width}]", loss.upper()))
    return finish(cfg, out, log, device, teacher_net, test_data, accepted, stop_reason, students)


def plant_rounds(cfg, out, log, current, initial_val, teacher_net, train_data, val_data, device,
                 schedule, teacher_cache=None):
    """The planting rounds from ``current``; returns (accepted rounds, why the search stopped).

    Each round's candidates and every accepted network are checkpointed in ``out``.
    """
    current_val = initial_val
    accepted = []
    layers = models.plantable_layers(cfg.plant_fc1)
    stop_reason = f"reached --max-rounds {cfg.max_rounds}"
    for rnd in range(1, cfg.max_rounds + 1):
        round_path = out / f"round_{rnd}.pt"
        if round_path.exists():
            current, meta = load_network(round_path, device, layout(cfg, device))
            current_val = meta["val"]
            accepted.append(dict(round=rnd, **meta["round"]))
            print(line(f"round {rnd}", current.describe(), models.count_params(current),
                       current_val, 0.0, "(from checkpoint)"))
            continue
        results = run_candidates(cfg, out, log, rnd, layers, current, teacher_net, train_data,
                                 val_data, device, schedule, teacher_cache)
        eligible = [r for r in results if r is not None]
        if not eligible:
            stop_reason = f"every candidate is above --max-params {cfg.max_params}"
            break
        best = min(eligible, key=lambda r: (r["val"][cfg.select_on], r["layer"]))
        improved = best["val"][cfg.select_on] < current_val[cfg.select_on]
        name = models.LAYER_NAMES[best["layer"]]
        verdict = "accepted" if improved else "rejected: no lower validation loss, stop"
        print(f"round {rnd:<3} best {name:<6} val {cfg.select_on} {best['val'][cfg.select_on]:.4f} "
              f"vs {current_val[cfg.select_on]:.4f}  {verdict}")
        if not improved:
            stop_reason = (f"round {rnd}: no candidate lowered the validation {cfg.select_on} "
                           f"below {current_val[cfg.select_on]:.4f}")
            break
        current, _ = load_network(candidate_stem(out, rnd, best["layer"]).with_suffix(".pt"),
                                  device, layout(cfg, device))
        current_val = best["val"]
        info = dict(layer=name, widths=current.widths, fc_width=current.fc_width,
                    params=models.count_params(current), val=current_val)
        save_network(round_path, current, dict(val=current_val, round=info, seconds=0.0))
        log.add(dict(kind="round", round=rnd, layer=name, widths=current.widths,
                     fc_width=current.fc_width, params=info["params"], val_loss=current_val["loss"],
                     val_acc=current_val["acc"], seconds=sum(r["seconds"] for r in eligible)))
        accepted.append(dict(round=rnd, **info))
    return accepted, stop_reason


def candidate_seed(cfg, rnd: int, layer: int) -> int:
    """The seed of a candidate's new weights: round and layer only, so resuming or reordering
    changes nothing. (The data order and augmentation depend on cfg.seed only: every
    candidate sees the same views, which compares candidates fairly and lets the teacher's
    logits be cached.)"""
    return cfg.seed * 1000003 + rnd * 101 + layer


def candidate_stem(out: Path, rnd: int, layer: int) -> Path:
    """Where round ``rnd``'s candidate for ``layer`` is saved (add .pt or .json)."""
    return out / "candidates" / f"r{rnd}_l{layer}"


def teacher_path(cfg, out: Path) -> Path:
    return Path(cfg.teacher) if cfg.teacher else out / "teacher.pt"


def run_candidates(cfg, out, log, rnd, layers, current, teacher_net, train_data, val_data,
                   device, schedule, teacher_cache=None) -> list:
    """Trains (or reloads) round ``rnd``'s candidate for each of ``layers``; returns each one's
    result, None for a candidate above --max-params."""
    results, todo = {}, {}
    for layer in layers:
        stem = candidate_stem(out, rnd, layer)
        name = models.LAYER_NAMES[layer]
        if stem.with_suffix(".json").exists() and stem.with_suffix(".pt").exists():
            results[layer] = json.loads(stem.with_suffix(".json").read_text())
            print(line("candidate", f"r{rnd} +{cfg.plant_channels} {name}", results[layer]["params"],
                       results[layer]["val"], results[layer]["seconds"], "(from checkpoint)"))
            continue
        generator = torch.Generator().manual_seed(candidate_seed(cfg, rnd, layer))
        candidate = models.plant(current.cpu(), layer, cfg.plant_channels, cfg.plant_init,
                                 generator).to(device)
        current.to(device)
        params = models.count_params(candidate)
        if cfg.max_params and params > cfg.max_params:
            print(f"candidate r{rnd} +{cfg.plant_channels} {name}: {params:,} params is above "
                  f"--max-params {cfg.max_params:,}, skipped")
            results[layer] = None
            continue
        todo[layer] = candidate
    sched = schedule(cfg.plant_epochs)
    if cfg.train_together and len(todo) > 1:
        together = Round(current, todo, layout(cfg, device))
        seconds = train_round(together, train_data, sched, teacher_net, cfg.temperature,
                              cfg.label_weight, cfg.seed, teacher_cache, progress=f"round {rnd}")
        vals = evaluate_round(together, val_data, teacher_net, cfg.temperature, teacher_cache)
        # One pass trained them all: each is charged an equal share of its time.
        trained = {layer: (val, seconds / len(todo)) for layer, val in zip(todo, vals)}
    else:
        trained = {}
        for layer, candidate in todo.items():
            seconds = train(candidate, models.planted_parameters(candidate), train_data, sched,
                            "kd", candidate_seed(cfg, rnd, layer), teacher_net, cfg.temperature,
                            cfg.label_weight, progress=f"r{rnd} {models.LAYER_NAMES[layer]}",
                            data_seed=cfg.seed, teacher_cache=teacher_cache)
            val = evaluate(candidate, val_data, teacher=teacher_net, temperature=cfg.temperature,
                           teacher_cache=teacher_cache)
            trained[layer] = (val, seconds)
    for layer, candidate in todo.items():
        val, seconds = trained[layer]
        results[layer] = save_candidate(cfg, out, log, rnd, layer, candidate, val, seconds)
    return [results[layer] for layer in layers]


def save_candidate(cfg, out, log, rnd, layer, candidate, val, seconds) -> dict:
    stem = candidate_stem(out, rnd, layer)
    name = models.LAYER_NAMES[layer]
    params = models.count_params(candidate)
    result = dict(round=rnd, layer=layer, layer_name=name, widths=candidate.widths,
                  fc_width=candidate.fc_width, params=params, val=val, seconds=seconds)
    save_network(stem.with_suffix(".pt"), candidate, dict(val=val, seconds=seconds))
    write_json(stem.with_suffix(".json"), result)
    log.add(dict(kind="candidate", round=rnd, layer=name, widths=candidate.widths,
                 fc_width=candidate.fc_width, params=params, val_loss=val["loss"],
                 val_acc=val["acc"], val_kd_loss=val["kd_loss"], seconds=seconds))
    print(line("candidate", f"r{rnd} +{cfg.plant_channels} {name}", params, val, seconds))
    return result


def finish(cfg, out, log, device, teacher_net, test_data, accepted, stop_reason,
           students=()) -> dict:
    """Test-set report of every kept network, result files, plot and exported network."""
    from plantops import report

    def test_entry(path, label, loss_fn):
        net, meta = load_network(path, device, layout(cfg, device))
        test = evaluate(net, test_data)
        return dict(network=label, widths=net.widths, fc_width=net.fc_width,
                    params=models.count_params(net), test_loss=test["loss"], test_acc=test["acc"],
                    val_loss=meta["val"]["loss"], val_acc=meta["val"]["acc"], loss_fn=loss_fn), net

    teacher, _ = test_entry(teacher_path(cfg, out), f"Teacher[{cfg.teacher_width}]", "CE")
    initial, final_net = test_entry(out / "initial.pt", f"Initial = Student[{cfg.init_width}]",
                                    cfg.init_loss.upper())
    rounds = []
    for a in accepted:
        entry, final_net = test_entry(out / f"round_{a['round']}.pt",
                                      f"Planted round {a['round']} (+{a['layer']})", "KD")
        rounds.append(dict(entry, round=a["round"], layer=a["layer"]))
    final = dict(rounds[-1] if rounds else initial, network="Planted (final)")
    student_rows = [test_entry(path, label, loss)[0] for path, label, loss in students]
    compare = cfg.compare_with
    if compare == "auto":
        compare = cfg.dataset if cfg.dataset in report.PAPER else "none"
    result = dict(final=final, initial=initial, teacher=teacher, rounds=rounds,
                  students=student_rows, compare_with=compare, stop_reason=stop_reason,
                  config=dataclasses.asdict(cfg))
    write_json(out / "result.json", result)
    atomic_write(out / "final.pt", lambda p: torch.save(final_net.cpu().to_sequential(), p))
    report.write_results(out, result)
    print(f"done: {final['network']} {models.PlantNet.describe(final_net)} "
          f"{final['params']:,} params, test loss {final['test_loss']:.4f}, test acc "
          f"{final['test_acc'] * 100:.2f}% ({stop_reason}). Results in {out}/results.md")
    return result


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        run_search(cfg)
    except (ValueError, FileNotFoundError, datasets.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
