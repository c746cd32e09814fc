"""The files a search keeps on disk: networks, epoch checkpoints, the log, JSON, and where
each file of the output folder is; DiskError for a write that fails.

Every write is atomic (a temporary file and a rename), so a killed run leaves the old file or
the new one, never half of one. Which rank writes, and when, is plantops/search/run_folder.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from plantops import models
from plantops.planting import merge


class DiskError(OSError):
    """A file of the search could not be written (a full disk, a read-only or removed
    folder): the message is one line that names the folder, what was being written and the
    bytes free there. The command line exits with code 1; what was written before is intact,
    and ``--resume`` continues once the disk is fixed."""


def free_bytes(folder: Path) -> int | None:
    """Bytes free for a new file in ``folder`` (or the nearest folder above it that exists)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_error(folder: Path, what: str, reason: str) -> DiskError:
    free = free_bytes(folder)
    room = "" if free is None else f", {free:,} bytes free there"
    return DiskError(f"cannot write {what} to {folder} ({reason}{room}): free some space or "
                     "make the folder writable, then continue with --resume "
                     "(nothing written before is lost)")


def check_free_space(folder: Path, nbytes: int, what: str):
    """DiskError before a phase that will write ``nbytes`` to ``folder`` if they do not fit."""
    free = free_bytes(folder)
    if free is not None and free < nbytes:
        raise _disk_error(folder, what, f"it needs {nbytes:,} bytes")


def make_folder(folder: Path, what: str, parents: bool = True):
    """``folder`` (and, with ``parents``, the folders above it) made if missing; DiskError
    naming ``what`` if it cannot be (a read-only or full disk; without ``parents``, a removed
    output folder, which is not made anew half-empty)."""
    try:
        folder.mkdir(parents=parents, exist_ok=True)
    except OSError as err:
        raise _disk_error(folder, what, err.strerror or str(err)) from err


def atomic_write(path: Path, write, what: str | None = None, previous: Path | None = None):
    """Writes through a temporary file and a rename: a killed run leaves old or new, never half.
    A write that fails (a full disk, a folder that cannot be written) leaves no temporary file
    and raises DiskError naming ``what`` (default: the file's name). ``previous``: where the
    old file is moved, rather than replaced."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ...").
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        # (torch's message names its own source line, not the file: say it plainly)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else \
            "the write failed"
        if not path.parent.is_dir():
            reason = "the folder was removed"
        raise _disk_error(path.parent, what or path.name, reason) from err


def write_json(path: Path, obj):
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def save_network(path: Path, net, meta: dict):
    """A network, merged (models.to_checkpoint), and what is known of it (``meta``)."""
    payload = dict(models.to_checkpoint(merge(net).cpu()), meta=meta)
    atomic_write(path, lambda p: torch.save(payload, p))


class CheckpointError(ValueError):
    """A network checkpoint of the output folder does not load: the message names the file
    and what it held (the command line exits with code 2). The file is left where it is."""


def previous_partial(path: Path) -> Path:
    """Where the epoch checkpoint before ``path``'s is kept until the next one is written."""
    return path.with_name(path.stem + ".previous.pt")


def save_partial(path: Path, epochs_done: int, states: dict):
    """A training run's state after ``epochs_done`` epochs: ``{rank: state}``, each state the
    parameters and SGD's momentum of what that rank trains (engine.Training.state); the
    views of the next epoch follow from the epoch alone. The state of the epoch before is
    kept beside it (previous_partial), so that a checkpoint that turns out unreadable costs
    one epoch, not the run."""
    make_folder(path.parent, f"an epoch checkpoint ({path.name})", parents=False)
    atomic_write(path, lambda p: torch.save(dict(epochs_done=epochs_done, states=states), p),
                 f"an epoch checkpoint ({path.name})", previous=previous_partial(path))


def read_partials(path: Path) -> list[tuple[Path, dict]]:
    """The epoch checkpoints of a training run that load, newest first: save_partial's file,
    then the one before it. One that does not load is named in a warning and passed over."""
    found = []
    for where in (path, previous_partial(path)):
        if not where.is_file():
            continue
        try:
            saved = torch.load(where, map_location="cpu", weights_only=True)
            ok = isinstance(saved, dict) and isinstance(saved.get("epochs_done"), int) \
                and isinstance(saved.get("states"), dict)
            problem = None if ok else "does not hold an epoch checkpoint"
        except Exception as err:  # truncated, zero bytes, random bytes: any reader error
            problem = f"does not load ({type(err).__name__})"
        if problem is None:
            found.append((where, saved))
        else:
            print(f"warning: the epoch checkpoint {where} {problem}; passed over (the training "
                  "run goes on from the checkpoint before it, or from its start)",
                  file=sys.stderr)
    return found


def remove_partial(path: Path):
    """A finished training run's epoch checkpoints."""
    for where in (path, previous_partial(path)):
        where.unlink(missing_ok=True)


def what_it_holds(path: Path) -> str:
    """What a network checkpoint of the output folder holds, by its name, for messages."""
    name = path.stem
    if name == "teacher":
        return "the teacher"
    if name == "initial":
        return "the initial network"
    if name.startswith("round_"):
        return f"round {name[6:]}'s accepted network"
    if name.startswith("student_"):
        _, width, loss, *epochs = name.split("_")
        network = "your network at its initial widths" if width == "initial" else \
            f"Student[{width}]"
        trained = f" trained {epochs[0][:-2]} epochs" if epochs else ""
        return f"the --table network {network} {loss.upper()}{trained}"
    if name.startswith("retrained_"):
        return f"the --retrain network, trained {name.split('_')[1][:-2]} epochs"
    if path.parent.name == "candidates" and name.startswith("r") and "_l" in name:
        rnd, layer = name[1:].split("_l")
        if layer.isdigit():
            return f"round {rnd}'s candidate for {_candidate_layer(path, int(layer))}"
    return "a network"


def _candidate_layer(path: Path, layer: int) -> str:
    """The name of the layer a candidate grew, from the record saved beside it (its index
    where the record is missing or unreadable)."""
    try:
        return json.loads(path.with_suffix(".json").read_text())["layer_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"layer {layer} (counting from 0)"


def read_network(path: Path) -> dict:
    """What save_network wrote (on the CPU); CheckpointError if it does not load."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, zero bytes, random bytes: any reader error
        raise _bad_checkpoint(path, f"does not load ({type(err).__name__})") from None
    if not models.holds_network(payload) or "meta" not in payload:
        raise _bad_checkpoint(path, "is not a network checkpoint of plantops")
    return payload


def is_network_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a network checkpoint that plantops wrote (a teacher.pt), rather
    than a module of the user's own."""
    try:
        read_network(path)
    except CheckpointError:
        return False
    return True


def _bad_checkpoint(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {problem}; it held {what_it_holds(path)}. It is left as it is: restore it, "
        f"or move it aside (e.g. to {path.name}.bad) and --resume trains it again")


def network_from(payload: dict, device, path: Path | None = None) -> tuple:
    """The network and meta of a read_network payload, on ``device``; CheckpointError naming
    ``path`` if its weights do not fit its architecture."""
    try:
        net = models.from_checkpoint(payload)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        if path is None:
            raise
        raise _bad_checkpoint(path, f"holds weights that do not fit its network "
                              f"({str(err).splitlines()[0][:100]})") from None
    return net.to(device), payload["meta"]


def load_network(path: Path, device, memory_format=torch.contiguous_format) -> tuple:
    net, meta = network_from(read_network(path), device, path)
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
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            # A line cut by a full disk is dropped on reading; cut it here so the next
            # record starts on a line of its own.
            try:
                os.truncate(self.path, size)
            except OSError:
                pass
            raise _disk_error(self.path.parent, "the log (log.jsonl)",
                              err.strerror or str(err)) from err


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
