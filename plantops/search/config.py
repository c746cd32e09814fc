"""The search's options: the Config dataclass, its presets, and the command line.

``Config`` holds every option (the flags are its field names with dashes) with its help text;
``--preset`` gives the starting values, ``--config FILE`` (JSON) overrides them, and flags
override both. ``--resume DIR`` takes the options saved in DIR/config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional

from plantops import data as datasets
from plantops.engine import CACHE_DTYPES, PRECISIONS

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
        help="run the plain networks (teacher, initial network, --table students) in "
             "channels-last memory layout; auto: on a CPU (training steps 1.3-1.6x faster with "
             "oneDNN on 2 cores), not on a GPU (0.84-0.94x in float32 on an H100); sums in "
             "another order, so a long run ends at slightly different numbers. Planting rounds "
             "run in the planted kernels' own layout"))
    cuda_graphs: str = dataclasses.field(default="auto", metadata=dict(
        help="capture each training and evaluation step as a CUDA graph and replay it (one "
             "launch per step): auto (on with CUDA), on, or off"))
    cache_teacher: bool = dataclasses.field(default=True, metadata=dict(
        help="keep the teacher's logits of every augmented view for the whole search: one "
             "teacher pass per view for all the rounds (off: one per view and round; same "
             "results, less memory)"))
    cache_dtype: str = dataclasses.field(default="float32", metadata=dict(
        help="dtype of the cached teacher logits: float32 (results identical to no cache), "
             "or float16/bfloat16 (half the memory; rounded logits can change results "
             "slightly)"))
    train_together: bool = dataclasses.field(default=True, metadata=dict(
        help="train a round's candidates together in one pass over the data, sharing the "
             "parent's forward and their frozen layers' calls (same results up to float "
             "rounding; faster); off: one candidate after another"))
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
                       cache_dtype=tuple(CACHE_DTYPES), precision=PRECISIONS,
                       cuda_graphs=("auto", "on", "off"))
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


def parse_args(argv=None, description: str = "") -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m plantops.search", description=description,
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
