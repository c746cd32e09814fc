"""Channel planting search (Mitsuno, Nomura, Kurita, ICPR 2020), end to end.

    python -m plantops.search --out runs/quick             # CIFAR-10, downloaded the first time
    python -m plantops.search --dataset folder --data cifar10-jpeg.tar.gz --out runs/quick
    python -m plantops.search --preset paper --dataset cifar10 --data DIR --out runs/paper --device cuda
    python -m plantops.search --resume runs/quick          # continue an interrupted search

Steps (docs/method.md): train a teacher with cross-entropy; train a narrow initial network;
then in each round plant ``--plant-channels`` channels into each plantable layer in turn (one
candidate per layer), train only the planted parameters by distillation from the teacher,
keep the candidate that lowers the validation loss most per added parameter (``--select-rule
lowest``: the lowest loss, the poster's rule) and train it whole for ``--finetune-epochs``
(0: every old parameter stays fixed, as in the poster; ``--preset paper`` does both as the
poster), and stop when no candidate lowers the loss (or at ``--max-rounds`` /
``--max-params``). The test set is evaluated only for the report, never for a choice.

Writes to ``--out``: config.json, log.jsonl, result.json, results.md, accuracy_vs_params.png,
checkpoints (teacher.pt, initial.pt, round_K.pt), and final.pt, the chosen network as plain torch
modules (an ``nn.Sequential``, or a network of your own class, wider;
``torch.load(path, weights_only=False)``; no plantops needed).

The ``quick`` preset (default) runs a reduced protocol meant for a CPU: about 4 minutes on
2 cores (plus about 10 s to decode CIFAR-10's JPEGs the first time); ``paper`` is the
poster's procedure with the full protocol of the first author's code (100 epochs, SGD 0.01),
for a GPU. Under ``torchrun`` one search, or the runs of ``--seeds``/``--sweep``, spread over
the ranks.

In Python: ``run_search(Config(...))``. The package's modules, in the order a search uses
them: ``config`` (options, presets, command line), ``splits`` (the data on the device),
``networks`` (the user's networks, the input convention, the checks), ``loop`` (the phases,
in the poster's order), ``trainer`` (training and evaluation), ``teacher_tables`` (the
teacher's logits of the views), ``rounds`` (a round's candidates and fine-tuning), ``rules``
(schedules, the choice, seeds, warnings), ``run_folder`` and ``checkpoints`` (the output
folder and its files), ``result`` and ``report`` (result.json, results.md and the plot),
``distributed`` (torchrun ranks) and ``runs`` (``--seeds`` and ``--sweep``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from plantops import data as datasets
from plantops.search.checkpoints import (DiskError, Log, atomic_write, candidate_stem,
                                         load_network, save_network, teacher_path, write_json)
from plantops.search import distributed, runs
from plantops.search.config import (PRESETS, Config, config_from_dict, options_table,
                                    parse_args as _parse_args, parse_command)
from plantops.search.distributed import resolve_device
from plantops.search.loop import Search, run_search
from plantops.search.rules import candidate_seed, training_schedule
from plantops.search.splits import SearchData, prepare_data
from plantops.search.trainer import layout


def parse_args(argv=None) -> Config:
    """The Config of a command line (``python -m plantops.search ARGS``)."""
    return _parse_args(argv, description=__doc__)


def main(argv=None) -> int:
    # One line at a time, also into a log file: a long phase's progress shows as it happens.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    code = 0
    try:
        cfg, seeds, sweep, resume = parse_command(argv, description=__doc__)
        many = runs.resumed_runs(Path(resume)) if resume else None
        if many is None and (seeds is not None or sweep is not None):
            many = runs.plan(cfg, runs.parse_seeds(seeds), runs.parse_sweep(sweep))
        if many is not None:
            runs.run_many(many, Path(cfg.out), lambda c, ranks: Search(c, ranks=ranks).run())
        else:
            run_search(cfg)
    except (ValueError, FileNotFoundError, datasets.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except DiskError as err:  # the disk, not the command: --resume once it is fixed
        print(f"error: {err}", file=sys.stderr)
        code = 1
    # Under torchrun, every rank that ends here (done, or refused like the others) leaves the
    # job cleanly; a crash propagates as it is.
    distributed.shutdown()
    return code


__all__ = ["PRESETS", "Config", "DiskError", "Log", "Search", "SearchData", "atomic_write", "candidate_seed",
           "candidate_stem", "config_from_dict", "layout", "load_network", "main",
           "options_table", "parse_args", "prepare_data", "resolve_device", "run_search",
           "save_network", "teacher_path", "training_schedule", "write_json"]
