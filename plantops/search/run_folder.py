"""The output folder of one search, as every rank of it sees it.

Rank 0 alone reads and writes the folder and sends what it read to the other ranks, so
every rank makes the same decisions from the same files. The folder holds config.json,
log.jsonl (one record per trained network or candidate), the networks' checkpoints, the
epoch checkpoints of the training run in progress (``partial/``) and the teacher's logits;
the formats are plantops/search/checkpoints.py's. What the user was warned of is kept here too, for
result.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

import plantops
from plantops.search.checkpoints import (Log, atomic_write, candidate_stem, code_version,
                                         make_folder, network_from, read_network, read_partials,
                                         remove_partial, save_network, save_partial, teacher_path,
                                         write_json)
from plantops.search.distributed import Ranks


class RunFolder:
    """``out`` as ``ranks`` see it (see the module's docstring)."""

    def __init__(self, out: Path, ranks: Ranks):
        self.out, self.ranks = Path(out), ranks
        self.log: Log | None = None
        self.created = False        # whether this run made the folder
        self.warnings: list[str] = []

    def open(self, cfg, device: torch.device):
        """Makes the folder (a removed one is not made anew half-empty later: subfolders are
        made without parents), writes config.json and opens the log."""
        self.created = self.ranks.broadcast(not self.out.exists() if self.ranks.main else None)
        if self.ranks.main:
            make_folder(self.out / "candidates", "the output folder")
            write_json(self.out / "config.json", dict(
                config=dataclasses.asdict(cfg), plantops=plantops.__version__,
                code=code_version(), torch=torch.__version__, device=str(device),
                world_size=self.ranks.size))
            self.log = Log(self.out / "log.jsonl")

    def remove_if_nothing_trained(self):
        """A run refused before it trained anything removes the folder it made, rather than
        leave one that holds nothing to resume."""
        if self.ranks.main and self.created and not any(self.out.glob("*.pt")):
            shutil.rmtree(self.out, ignore_errors=True)

    # ------------------------------------------------------------------------- where

    def teacher(self, cfg) -> Path:
        return teacher_path(cfg, self.out)

    @property
    def initial(self) -> Path:
        return self.out / "initial.pt"

    def round(self, rnd: int) -> Path:
        return self.out / f"round_{rnd}.pt"

    def student(self, name, loss: str, epochs: int) -> Path:
        """A --table network: Student[``name``] (or the user's initial network, "initial")
        trained with ``loss`` for ``epochs``."""
        return self.out / f"student_{name}_{loss}_{epochs}ep.pt"

    def retrained(self, epochs: int) -> Path:
        return self.out / f"retrained_{epochs}ep.pt"

    def candidate(self, rnd: int, layer: int) -> Path:
        """Round ``rnd``'s candidate for ``layer`` (.pt; its record: .json)."""
        return candidate_stem(self.out, rnd, layer).with_suffix(".pt")

    def partial(self, name: str) -> Path:
        return self.out / "partial" / f"{name}.pt"

    @property
    def teacher_logits(self) -> Path:
        return self.out / "teacher_logits"

    # ------------------------------------------------------------------------- reading

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists, as rank 0 sees it."""
        return self.ranks.broadcast(path.exists() if self.ranks.main else None)

    def read(self, read, path: Path):
        """``read(path)`` on rank 0, sent to every rank."""
        return self.ranks.broadcast(read(path) if self.ranks.main else None)

    def load(self, path: Path, device) -> tuple:
        """(the network on ``device``, its meta) of a network checkpoint."""
        return network_from(self.read(read_network, path), device, path)

    def candidate_record(self, rnd: int, layer: int) -> dict | None:
        """What a candidate saved before an interruption recorded (None: not saved)."""
        pt = self.candidate(rnd, layer)
        return self.read(lambda p: json.loads(p.with_suffix(".json").read_text())
                         if p.exists() and p.with_suffix(".json").exists() else None, pt)

    def epoch_checkpoints(self, name: str) -> list:
        """The epoch checkpoints of training run ``name`` that load, newest first."""
        return self.read(read_partials, self.partial(name))

    # ------------------------------------------------------------------------- writing

    def save(self, path: Path, net, meta: dict):
        if self.ranks.main:
            save_network(path, net, meta)

    def save_candidate(self, rnd: int, layer: int, net, meta: dict, record: dict):
        """A candidate's network and its record beside it."""
        path = self.candidate(rnd, layer)
        self.save(path, net, meta)
        if self.ranks.main:
            write_json(path.with_suffix(".json"), record)

    def save_epoch(self, name: str, epochs_done: int, states: dict):
        if self.ranks.main:
            save_partial(self.partial(name), epochs_done, states)

    def finished(self, name: str):
        """Training run ``name`` is over and what it trained is saved: its epoch checkpoints
        go."""
        if self.ranks.main:
            remove_partial(self.partial(name))

    def add_log(self, record: dict):
        if self.ranks.main:
            self.log.add(record)

    def warn(self, text: str, into: list | None = None):
        """A warning: one line on stderr (rank 0's), kept for result.json (in ``into``, or
        this run's warnings)."""
        (self.warnings if into is None else into).append(text)
        if self.ranks.main:
            print(f"warning: {text}", file=sys.stderr)

    def write_json(self, name: str, obj):
        if self.ranks.main:
            write_json(self.out / name, obj)

    def write(self, name: str, write):
        """``write(path)`` of file ``name``, atomically, on rank 0."""
        if self.ranks.main:
            atomic_write(self.out / name, write)
