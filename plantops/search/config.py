"""The search's options: the Config dataclass, its presets, and the command line.

``Config`` holds every option (the flags are its field names with dashes) with its help text,
its group in ``--help`` and, for the options that take a word, its choices. Its defaults are
the ``quick`` preset's, the one that applies when no ``--preset`` is given; ``--preset paper``
changes the values in ``PRESETS["paper"]``. ``--config FILE`` (JSON) overrides the preset,
and flags override both. ``--resume DIR`` takes the options saved in DIR/config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Optional

from plantops import data as datasets
from plantops.planting import PLANT_INITS
from plantops.engine import CACHE_DTYPES, PRECISIONS

GROUPS = {
    "data": "data and output",
    "networks": "teacher and initial network",
    "planting": "planting",
    "training": "training (every network)",
    "speed": "speed (same results up to float rounding, unless said)",
    "table": "the comparison: networks trained the standard way, as long",
}


def option(default, help: str, group: str, choices=None):
    return dataclasses.field(default=default, metadata=dict(help=help, group=group,
                                                            choices=choices))


@dataclasses.dataclass
class Config:
    """Every option of the search; the command-line flags are these names with dashes.
    The defaults are the ``quick`` preset (a reduced protocol for a 2-core CPU)."""

    dataset: str = option("cifar10", "the dataset's format: cifar10, cifar100, stl10 (the "
                          "official versions) or folder (train/<class>/*, test/<class>/*)",
                          "data", tuple(datasets.FORMATS))
    data: Optional[str] = option(None, "where the dataset is: its folder, archive, or the "
                                 "folder holding it", "data")
    out: str = option("runs/search", "output folder", "data")
    device: str = option("auto", "where to train: cpu, cuda, cuda:N, or auto (cuda if there "
                         "is one)", "data")
    seed: int = option(0, "seed of every random choice", "data")
    split_seed: Optional[int] = option(
        None, "seed of the train/validation split and of --train-subset (unset: --seed's); "
        "fix it to rerun with other seeds on the same validation set, e.g. reusing a "
        "teacher.pt and initial.pt", "data")
    download: bool = option(True, "download an official dataset that is missing (checksum "
                            "verified)", "data")
    train_subset: int = option(8000, "use this many training images (stratified, seeded); "
                               "0 = all", "data")
    val_size: int = option(2000, "validation images held out of the training set", "data")
    cache_dir: Optional[str] = option(None, "where decoded datasets are cached (unset: "
                                      "$PLANTOPS_CACHE or ~/.cache/plantops)", "data")
    teacher_width: int = option(64, "Teacher[k] conv width", "networks")
    teacher_epochs: int = option(15, "teacher epochs", "networks")
    teacher: Optional[str] = option(None, "a trained teacher, used as it is: a teacher.pt "
                                    "from an earlier --out, a saved nn.Module "
                                    "(torch.save(model)) or FILE.py:FUNCTION that returns "
                                    "one. A module of your own takes float [0, 1] images "
                                    "[N, 3, H, W] (its normalisation inside it) and returns "
                                    "the classes' logits", "networks")
    student: Optional[str] = option(None, "plant a network of your own: a saved module "
                                    "(torch.save(model)) or FILE.py:FUNCTION that returns "
                                    "one. An nn.Sequential of Conv2d and Linear layers (batch "
                                    "norm, activations, pooling, flatten, dropout between "
                                    "them) grows layer by layer; any other CNN torch.fx "
                                    "traces (residual, depthwise, concatenating) by its "
                                    "width groups. It takes float [0, 1] images; the search "
                                    "trains it --init-epochs from its own weights (0: takes "
                                    "it as it is). Unset: Student[--init-width]", "networks")
    init_width: int = option(8, "initial Student[k] width", "networks")
    init_epochs: int = option(15, "initial network epochs; 0 "
                              "with --student: its weights as they are", "networks")
    init_loss: str = option("kd", "initial network loss: kd (distillation) or ce (labels)",
                            "networks", ("kd", "ce"))
    plant_channels: int = option(4, "channels planted per candidate (p)", "planting")
    plant_epochs: int = option(12, "epochs of training the planted channels of each "
                               "candidate", "planting")
    plant_fc1: bool = option(False, "let the linear layers before the classifier be planted "
                             "too (fc1 of the paper's networks: adds fc1 outputs and fc2 "
                             "inputs)", "planting")
    plant_init: str = option("preserve", "preserve: new outgoing weights start at zero (a "
                             "candidate starts exactly at its parent); small: at a tenth of "
                             "the default init (near its parent, and the new filters get a "
                             "gradient from the first step); random: default init for them "
                             "too; steepest: at zero, the new filters chosen of 8 times as "
                             "many random draws as those whose outgoing weights get the "
                             "largest gradient on the round's first 4 batches (GradMax's "
                             "criterion)", "planting", tuple(PLANT_INITS))
    plant_lr: Optional[float] = option(None, "SGD learning rate of the planted parameters "
                                       "(unset: --lr)", "planting")
    plant_lr_decay: Optional[float] = option(None, "lr multiplier after each third of a "
                                             "candidate's training (unset: --lr-decay; 1 = "
                                             "constant)", "planting")
    plant_weight_decay: Optional[float] = option(None, "SGD weight decay of the planted "
                                                 "parameters (unset: --weight-decay)",
                                                 "planting")
    max_rounds: int = option(3, "planting rounds at most", "planting")
    max_params: int = option(0, "skip candidates above this many parameters; 0 = no budget",
                             "planting")
    select_on: str = option("loss", "validation criterion: loss (cross-entropy) or kd_loss "
                            "(distillation loss)", "planting", ("loss", "kd_loss"))
    select_rule: str = option("per_param", "which candidate a round keeps: per_param (the "
                              "largest fall of the validation --select-on per added "
                              "parameter, among those that lower it), per_flop (per added "
                              "forward FLOP per image) or lowest (the lowest validation "
                              "--select-on, the poster's rule)", "planting",
                              ("per_param", "per_flop", "lowest"))
    finetune_epochs: int = option(4, "after each accepted round, train the whole network "
                                  "this many epochs by distillation (a departure from the "
                                  "poster, which keeps every old parameter fixed; 0 = off, "
                                  "as the poster)", "planting")
    finetune_lr: Optional[float] = option(0.01, "SGD learning rate of --finetune-epochs "
                                          "(unset: --lr)", "planting")
    batch_size: int = option(128, "images per step", "training")
    lr: float = option(0.05, "SGD learning rate", "training")
    momentum: float = option(0.9, "SGD momentum", "training")
    weight_decay: float = option(5e-4, "SGD weight decay", "training")
    lr_decay: float = option(0.2, "lr multiplier after each third of every training run",
                             "training")
    temperature: float = option(1.0, "distillation temperature (the poster's L_KL has none, "
                                "i.e. 1; the loss is scaled by T^2, so larger T needs a "
                                "smaller --lr)", "training")
    label_weight: float = option(0.0, "weight of the label cross-entropy mixed into "
                                 "distillation (0 = pure KD)", "training")
    precision: str = option("float32", "training precision: float32, or bfloat16 (forward "
                            "passes and losses under torch.autocast; weights, gradients, "
                            "optimizer and evaluation stay float32; for GPUs with bfloat16 "
                            "units; changes results slightly)", "training", PRECISIONS)
    channels_last: Optional[bool] = option(
        None, "run the plain networks (teacher, initial network, --table students) in "
        "channels-last memory layout; unset: off for the networks whose convs run on the "
        "planted kernels, which read NCHW (those the search builds and plants, and a --teacher "
        "module that torch.fx traces), on for any other --teacher module on a CPU (oneDNN's "
        "channels-last kernels, 1.6x faster for a ResNet), never on a GPU (0.84-0.94x on an "
        "H100). Planting rounds run in the planted kernels' own layout",
        "speed")
    cuda_graphs: str = option("auto", "capture each training and evaluation step as a CUDA "
                              "graph and replay it (one launch per step): auto (on with "
                              "CUDA), on, or off", "speed", ("auto", "on", "off"))
    cache_teacher: bool = option(True, "keep the teacher's logits of every augmented view in "
                                 "memory for the whole search (they are computed once and "
                                 "saved in the output folder; off: reloaded from there for "
                                 "each round, less memory)", "speed")
    cache_dtype: str = option("float32", "dtype of the cached teacher logits: float32, or "
                              "float16/bfloat16 (half the memory; the rounded logits change "
                              "results slightly)", "speed", tuple(CACHE_DTYPES))
    train_together: bool = option(True, "train a round's candidates together in one pass "
                                  "over the data, sharing the parent's forward and their "
                                  "frozen layers' calls; off: one candidate after another",
                                  "speed")
    table: bool = option(False, "also train networks the standard way, as long as the "
                         "planted network's oldest weights (--table-epochs), and compare: "
                         "Student[k] for each --table-widths and the initial width, with "
                         "cross-entropy and with distillation (with --student: your initial "
                         "network, by --init-loss); in the results table, result.json and "
                         "the plot, with the paper's numbers", "table")
    table_widths: str = option("16,32,64", "comma-separated Student[k] widths for --table",
                               "table")
    table_epochs: Optional[int] = option(
        None, "epochs of the --table networks and of --retrain; unset: as long as the planted "
        "network's oldest weights trained (--init-epochs plus --finetune-epochs for each "
        "accepted round)", "table")
    retrain: bool = option(True, "after the search, train the final network's widths from "
                           "scratch by distillation, as long as the --table networks: a row "
                           "of its own and final_retrained.pt (the network to take where its "
                           "validation accuracy is higher: planting's widths, trained whole; "
                           "off: the poster's procedure)", "table")
    compare_with: str = option("auto", "whose paper table to print beside ours: cifar10, "
                               "cifar100, stl10, none, or auto (the dataset's own; none for "
                               "an image folder)", "table",
                               ("auto", "cifar10", "cifar100", "stl10", "none"))

    def validate(self):
        for f in dataclasses.fields(self):
            allowed = f.metadata["choices"]
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"{flag(f.name)} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, f.name)!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("teacher_width", "init_width", "plant_channels", "batch_size", "val_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        # Every phase that trains needs an epoch: 0 would run for minutes and change nothing.
        needs_epochs = ("plant_epochs",) + (() if self.student else ("init_epochs",)) + \
            (() if self.teacher else ("teacher_epochs",))
        for name in needs_epochs:
            if getattr(self, name) < 1:
                hint = " (or --teacher FILE to reuse a trained one)" if name == "teacher_epochs" else ""
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}: a "
                                 f"network trained for 0 epochs does not change{hint}")
        for name in ("max_rounds", "init_epochs", "train_subset", "max_params", "seed", "split_seed",
                     "finetune_epochs", "plant_weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:  # split_seed None: --seed's
                raise ValueError(f"{flag(name)} must be >= 0, got {value}")
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
        if self.table and not self.init_epochs and self.table_epochs is None:
            raise ValueError("--table trains as long as the initial network's training and "
                             "the fine-tuning, but --init-epochs 0 takes your network as it "
                             "is: say how long with --table-epochs N")
        if self.table_epochs is not None and self.table_epochs < 1:
            raise ValueError(f"--table-epochs must be >= 1, got {self.table_epochs}")
        for name in ("plant_lr", "plant_lr_decay", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{flag(name)} must be > 0, got {value}")
        return self


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_type(f: dataclasses.Field):
    """The Python type of an option's values (str for words and paths, bool for on/off)."""
    return {"int": int, "Optional[int]": int, "float": float, "Optional[float]": float,
            "bool": bool, "Optional[bool]": bool}.get(str(f.type), str)


PRESETS = {
    # Config's own defaults: a reduced protocol for a 2-core CPU.
    "quick": {},
    # The poster's procedure (every old parameter fixed, the lowest validation loss wins)
    # with the first author's training recipe of the period (docs/method.md): all the
    # training images, Teacher[128], 100 epochs, SGD 0.01, 30 epochs per candidate, up to
    # 20 rounds.
    "paper": dict(train_subset=0, val_size=5000, teacher_width=128, teacher_epochs=100,
                  init_epochs=100, plant_epochs=30, max_rounds=20, lr=0.01,
                  select_rule="lowest", finetune_epochs=0, retrain=False),
}


def config_from_dict(values: dict, base: Config | None = None, source: str = "") -> Config:
    """A Config from a mapping of option names; unknown names are rejected with the closest
    known one. ``source`` names where the mapping came from, for the error."""
    known = [f.name for f in dataclasses.fields(Config)]
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; known options: {', '.join(known)}"
            raise ValueError(f"{source + ': ' if source else ''}unknown option {name!r}{hint}")
    return dataclasses.replace(base or Config(), **values)


def shown(f: dataclasses.Field, value):
    """An option's value as --help and the README show it: an unset on/off option is auto."""
    return "auto" if value is None and f.type == "Optional[bool]" else value


def options_table() -> str:
    """The README's tables of options, one per group, from Config (tests/test_config.py
    keeps the README equal to it)."""
    quick, paper = Config(), config_from_dict(PRESETS["paper"])
    lines = []
    for group, title in GROUPS.items():
        lines += ["", f"*{title.capitalize()}*", "", "| option | default | `--preset paper` | meaning |",
                  "|---|---|---|---|"]
        for f in dataclasses.fields(Config):
            if f.metadata["group"] != group:
                continue
            default, other = shown(f, getattr(quick, f.name)), shown(f, getattr(paper, f.name))
            lines.append(f"| `{flag(f.name)}` | {default} | {other if other != default else ''}"
                         f" | {f.metadata['help']} |")
    return "\n".join(lines[1:])


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (what was wrong, and --help) and exit code 2."""

    def error(self, message):
        print(f"error: {message}; see python -m plantops.search --help", file=sys.stderr)
        sys.exit(2)


def _help(f: dataclasses.Field) -> str:
    paper = getattr(config_from_dict(PRESETS["paper"]), f.name)
    text = f.metadata["help"]
    if f.default is not None:
        text += f" (default {shown(f, f.default)}"
        text += f"; --preset paper: {paper})" if paper != f.default else ")"
    return text.replace("%", "%%")


def parse_args(argv=None, description: str = "") -> Config:
    """The Config of a command line."""
    return parse_command(argv, description)[0]


def parse_command(argv=None, description: str = ""):
    """(Config, the --seeds text or None, the --sweep text or None, --resume's folder or None)
    of a command line."""
    parser = _Parser(prog="python -m plantops.search", description=description,
                     usage="python -m plantops.search [--preset quick|paper] [options]",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("the run")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                     help="starting values of every option: quick (the defaults shown below, a "
                     "reduced protocol for a 2-core CPU) or paper (the paper's protocol, for "
                     "a GPU; the values it changes are marked below)")
    run.add_argument("--config", metavar="FILE", help="JSON file of options (the same names, "
                     "with dashes or underscores); flags override it")
    run.add_argument("--resume", metavar="DIR", help="continue the search (or the runs of "
                     "--seeds/--sweep) saved in DIR")
    run.add_argument("--seeds", metavar="S,S,...", help="independent searches, one per seed "
                     "(in DIR/seed_S), with a combined report (summary.md: mean +- std); under "
                     "torchrun spread over the ranks")
    run.add_argument("--sweep", metavar="OPTION=V,V,...", help="independent searches, one per "
                     "value of one option (with --seeds: per value and seed), combined in "
                     "summary.md, e.g. --sweep plant_epochs=12,30")
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for f in dataclasses.fields(Config):
        kind = value_type(f)
        group = groups[f.metadata["group"]]
        if kind is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                               default=None, help=_help(f))
        else:
            metavar = {int: "N", float: "X"}.get(
                kind, "PATH" if f.name in ("data", "out", "cache_dir", "teacher", "student")
                else f.name.upper())
            group.add_argument(flag(f.name), type=kind, default=None, help=_help(f),
                               choices=f.metadata["choices"],
                               metavar=None if f.metadata["choices"] else metavar)
    args = parser.parse_args(argv)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name) is not None}
    if args.resume and (Path(args.resume) / "runs.json").is_file():
        return Config(out=args.resume), None, None, args.resume  # the runs of --seeds/--sweep
    if args.resume:
        saved_path = Path(args.resume) / "config.json"
        if not saved_path.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there; pass the "
                                    "--out folder of the search to continue")
        saved = json.loads(saved_path.read_text())["config"]
        cfg = config_from_dict({**saved, **flags, "out": args.resume}, source=str(saved_path))
        return cfg.validate(), args.seeds, args.sweep, args.resume
    cfg = config_from_dict(PRESETS[args.preset])
    if args.config:
        cfg = config_from_dict(read_config_file(Path(args.config)), cfg, source=args.config)
    return config_from_dict(flags, cfg).validate(), args.seeds, args.sweep, None


def read_config_file(path: Path) -> dict:
    """The options of a --config JSON file, with underscores; errors name the file."""
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {path}: not valid JSON (line {err.lineno} column "
                         f"{err.colno}: {err.msg})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path}: expected a JSON object of options, got "
                         f"{type(loaded).__name__}")
    return {k.replace("-", "_"): v for k, v in loaded.items()}
