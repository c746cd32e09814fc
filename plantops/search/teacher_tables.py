"""The teacher's logits of the training views, each view's computed once per search.

Every network of a search that distils sees the views of ``Trainer.views(E)``: E epochs drawn
from --seed, and a run of E epochs sees the first E epochs of a longer run's. So one table
serves every phase: a phase that needs fewer epochs than the table holds takes its first
rows, and one that needs more computes only the epochs that are missing and extends it. The
table is kept in memory (--cache-teacher) and in the output folder
(``teacher_logits/epochs_E.pt``, one file: a longer table replaces a shorter one), so a
resumed search does not run the teacher again for views it has seen.

A stored table is a cache: one that does not load, or holds the logits of other views (another
seed, batch size or data: ``ViewSchedule.fingerprint``), other shapes or another dtype, is
computed anew with a one-line warning that names it. Before a table is written the folder's
free space is checked against its size (checkpoints.check_free_space).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from plantops import engine
from plantops.data import ViewSchedule
from plantops.engine import CACHE_DTYPES
from plantops.progress import Progress
from plantops.search.checkpoints import atomic_write, check_free_space, make_folder


def prefix(tables: dict, views: ViewSchedule) -> dict:
    """The rows of a teacher table (of as many epochs, or more) that belong to ``views``."""
    return {shape: tables[shape][:len(steps)] for shape, steps in views.shapes.items()}


def table_path(folder: Path, epochs: int) -> Path:
    return folder / f"epochs_{epochs}.pt"


def stored_epochs(folder: Path) -> list[int]:
    """The epochs of the tables in ``folder``, fewest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("epochs_*.pt"):
        try:
            found.append(int(path.stem.split("_")[1]))
        except ValueError:
            continue  # not one of ours
    return sorted(found)


class TeacherTables:
    """The logits of ``teacher`` (which gives ``classes`` of them) of the views of one
    search: ``get(views)``.

    ``folder``: where tables are stored (rank 0 alone reads and writes it; ``ranks``
    broadcasts what it holds). ``dtype``: a name of engine.CACHE_DTYPES. ``keep``: hold the
    longest table in memory between calls (--cache-teacher); otherwise it is read back from
    the folder. Over several ranks each computes an equal share of the missing steps and all
    gather them: the teacher's passes are the bulk of the work, and every rank needs every
    view."""

    def __init__(self, folder: Path, ranks, teacher: torch.nn.Module, classes: int,
                 dtype: str = "float32", precision: str = "float32", keep: bool = True):
        self.folder, self.ranks, self.keep = folder, ranks, keep
        self.teacher, self.classes = teacher, classes
        self.dtype_name, self.dtype, self.precision = dtype, CACHE_DTYPES[dtype], precision
        self.memory: tuple[int, dict] | None = None   # (epochs, tables) of the longest table
        self.passes = 0                                # teacher passes made (steps computed)

    def get(self, views: ViewSchedule) -> dict:
        """The teacher's logits of every view of ``views``: ``{shape: [steps, batch,
        classes]}``. Says in one line what it computed or read, unless the table was in
        memory already."""
        epochs = views.epochs
        if self.memory is not None and self.memory[0] >= epochs:
            return prefix(self.memory[1], views)
        start = time.perf_counter()
        have, tables, source = 0, None, None
        if self.memory is not None:
            have, tables, source = self.memory[0], self.memory[1], "memory"
        stored = self._read_stored(views, epochs)
        if stored is not None and stored[0] > have:
            have, tables, source = stored[0], stored[1], str(table_path(self.folder, stored[0]))
        if have >= epochs:
            how = f"loaded from {source} ({have} epochs kept)"
        else:
            if self.ranks.main:  # before the teacher's passes, not after: say what it needs
                check_free_space(self.folder, self._nbytes(views), "the teacher's logits")
            tables = self._extend(views, have, tables)
            how = ("computed" if not have else
                   f"epochs {have + 1}-{epochs} computed, 1-{have} from {source}")
            self._store(views, epochs, tables)
            have = epochs
        seconds = time.perf_counter() - start
        print(f"teacher logits: {epochs} epochs of views, "
              f"{engine.table_nbytes(prefix(tables, views)) / 1e6:.1f} MB of {self.dtype_name}, "
              f"{how} in {seconds:.1f}s")
        if self.keep:
            self.memory = (have, tables)
        return prefix(tables, views)

    # ------------------------------------------------------------------------- computing

    def _extend(self, views: ViewSchedule, have: int, tables: dict | None) -> dict:
        """``tables`` (the first ``have`` epochs of views, or None) with the rest computed."""
        rank, size = self.ranks.rank, self.ranks.size
        missing = {shape: len(steps) - views.positions(shape, have).start
                   for shape, steps in views.shapes.items()}
        mine = sum(engine.part_rows(rows, rank, size)[1] - engine.part_rows(rows, rank, size)[0]
                   for rows in missing.values())
        epochs_left = views.epochs - have
        progress = Progress("teacher logits", epochs_left, -(-mine // epochs_left))
        try:
            part = engine.teacher_logits(self.teacher, views, self.dtype, self.precision,
                                         part=(rank, size), from_epoch=have,
                                         on_step=progress.step, classes=self.classes)
        finally:
            progress.close()
        self.passes += mine
        new = {shape: self.ranks.gather_rows(part[shape], missing[shape])
               for shape in views.shapes}
        if tables is None:
            return new
        return {shape: torch.cat([tables[shape][:views.positions(shape, have).start]
                                  .to(new[shape]), new[shape]]) for shape in views.shapes}

    # ------------------------------------------------------------------------- the folder

    def _nbytes(self, views: ViewSchedule) -> int:
        """The size of the file of ``views``' table, with room for its container."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return sum(len(steps) * steps.index.shape[1] * self.classes * size
                   for steps in views.shapes.values()) + (1 << 20)

    def _read_stored(self, views: ViewSchedule, epochs: int):
        """(epochs, tables on the device) of the stored table that serves ``views`` best (the
        shortest of ``epochs`` or more, else the longest), or None; a table that does not
        load or is of other views is removed, with a warning."""
        def read(folder):
            found = stored_epochs(folder)
            if not found:
                return None
            longer = [e for e in found if e >= epochs]
            best = min(longer) if longer else max(found)
            path = table_path(folder, best)
            problem = None
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # truncated, zero bytes, random bytes: any reader error
                problem = f"does not load ({type(err).__name__})"
            else:
                problem = self._mismatch(payload, views, best)
            if problem is not None:
                print(f"warning: the teacher-logits cache {path} {problem}; it is a cache: "
                      f"removed, and its logits are computed anew", file=sys.stderr)
                path.unlink(missing_ok=True)
                return None
            return best, payload["tables"]

        stored = self.ranks.broadcast(read(self.folder) if self.ranks.main else None)
        if stored is None:
            return None
        device = views.data.device
        return stored[0], {shape: t.to(device) for shape, t in stored[1].items()}

    def _mismatch(self, payload, views: ViewSchedule, epochs: int) -> str | None:
        """Why a loaded table cannot serve ``views`` (None: it can)."""
        if not isinstance(payload, dict) or not {"fingerprint", "tables"} <= set(payload):
            return "is not a table of this version of plantops"
        if payload["fingerprint"] != views.fingerprint():
            return ("holds the logits of other views (another --seed, --batch-size or "
                    "training set)")
        tables = payload["tables"]
        if not isinstance(tables, dict) or set(tables) != set(views.shapes):
            return "holds other shapes of steps than these views"
        for shape, steps in views.shapes.items():
            rows = views.positions(shape, epochs).start
            table = tables[shape]
            if not isinstance(table, torch.Tensor) or table.dim() != 3 \
                    or tuple(table.shape[:2]) != (rows, steps.index.shape[1]):
                return (f"holds a {shape} table of shape {tuple(getattr(table, 'shape', ()))}, "
                        f"not [{rows}, {steps.index.shape[1]}, classes]")
            if table.shape[2] != self.classes:
                return f"holds {table.shape[2]} classes, the teacher has {self.classes}"
            if table.dtype != self.dtype:
                return f"is of {table.dtype}, not --cache-dtype {self.dtype_name}"
        return None

    def _store(self, views: ViewSchedule, epochs: int, tables: dict):
        """Writes the table of ``epochs`` epochs and removes the shorter ones it holds."""
        if not self.ranks.main:
            return
        make_folder(self.folder, "the teacher's logits", parents=False)
        path = table_path(self.folder, epochs)
        payload = dict(fingerprint=views.fingerprint(), epochs=epochs,
                       tables={shape: t.cpu() for shape, t in tables.items()})
        atomic_write(path, lambda p: torch.save(payload, p), "the teacher's logits")
        for shorter in stored_epochs(self.folder):
            if shorter < epochs:
                table_path(self.folder, shorter).unlink(missing_ok=True)
