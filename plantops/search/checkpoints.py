"""What a search keeps on disk: networks, the log, and where each file of the output folder is.

Every write is atomic (a temporary file and a rename), so a killed run leaves the old file or
the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from plantops import models


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


def save_partial(path: Path, epochs_done: int, states: dict):
    """A training run's state after ``epochs_done`` epochs: ``{rank: state}``, each state the
    parameters and SGD's momentum of what that rank trains (engine.Training.state); the
    views of the next epoch follow from the epoch alone."""
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, lambda p: torch.save(dict(epochs_done=epochs_done, states=states), p))


def read_partial(path: Path):
    """What save_partial wrote, or None."""
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def read_network(path: Path) -> dict:
    """What save_network wrote (on the CPU)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def network_from(payload: dict, device) -> tuple[models.PlantNet, dict]:
    """The network and meta of a read_network payload, on ``device``."""
    net = models.PlantNet(payload["widths"], payload["arch"], payload["num_classes"],
                          payload["fc_width"])
    net.load_state_dict(payload["state_dict"])
    return net.to(device), payload["meta"]


def load_network(path: Path, device, memory_format=torch.contiguous_format
                 ) -> tuple[models.PlantNet, dict]:
    net, meta = network_from(read_network(path), device)
    return net.to(memory_format=memory_format), meta


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


def candidate_stem(out: Path, rnd: int, layer: int) -> Path:
    """Where round ``rnd``'s candidate for ``layer`` is saved (add .pt or .json)."""
    return out / "candidates" / f"r{rnd}_l{layer}"


def teacher_path(cfg, out: Path) -> Path:
    return Path(cfg.teacher) if cfg.teacher else out / "teacher.pt"
