"""The processes of a search and its device: one process, or the ranks of a ``torchrun`` job
(torch.distributed: NCCL on GPUs, gloo on CPUs).

``Ranks.start(device)`` joins the job that torchrun set up (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``...) or, without torchrun, stands for the one process. The
search talks to the other ranks only through this class: collectives of Python objects
(small: metrics, options, a network's state) and of gradients (one flat buffer per step).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist

# How long a collective waits for a rank that does not arrive (a dead or stuck process):
# then it fails, and the job with it. torchrun also ends the job at once when a rank dies.
TIMEOUT_S = float(os.environ.get("PLANTOPS_DIST_TIMEOUT", 600))


class Ranks:
    """This process's rank among ``size`` (rank 0 writes the files), and the collectives."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.seconds = 0.0  # spent in collectives (waiting for the others included)

    @classmethod
    def start(cls, device_type: str) -> "Ranks":
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=TIMEOUT_S))
        return cls(rank, size, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        start = time.perf_counter()
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        self.seconds += time.perf_counter() - start
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (what the others pass is ignored)."""
        if self.size == 1:
            return obj
        start = time.perf_counter()
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        self.seconds += time.perf_counter() - start
        return box[0]

    def sum_(self, tensors: Sequence[torch.Tensor]):
        """Sums ``tensors`` over the ranks, in place, in one collective."""
        if self.size == 1 or not tensors:
            return
        start = time.perf_counter()
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        self.seconds += time.perf_counter() - start

    def gather_rows(self, part: torch.Tensor, rows: int) -> torch.Tensor:
        """The whole of a tensor whose ``rows`` rows the ranks computed in equal blocks (rank
        r the r-th, ``engine.part_rows``), on every rank: one all_gather of equal shapes."""
        if self.size == 1:
            return part
        start = time.perf_counter()
        per = -(-rows // self.size)
        padded = part.new_zeros((per, *part.shape[1:]))
        padded[:len(part)] = part
        blocks = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(blocks, padded)
        self.seconds += time.perf_counter() - start
        return torch.cat(blocks)[:rows]

    def same(self, what: str, value: Any,
             hint: str = "every rank of a torchrun job must run the same command"):
        """Refuses to go on unless every rank has the same ``value`` (their options, say)."""
        values = self.gather(value)
        for rank, other in enumerate(values):
            if other != values[0]:
                raise ValueError(f"rank {rank}'s {what} differ from rank 0's: {hint} "
                                 f"({_first_difference(values[0], other)})")

    @contextlib.contextmanager
    def one_voice(self):
        """Rank 0's lines alone on stdout while it lasts (every rank's errors still reach
        stderr)."""
        if self.main:
            yield
            return
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield

    def share(self, items: Sequence) -> list:
        """This rank's share of ``items`` (every size-th, from its rank on)."""
        return list(items)[self.rank::self.size]

    def close(self):
        if self.size > 1:
            shutdown()


def resolve_device(name: str) -> torch.device:
    """The device of --device: "auto" is CUDA where there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; "
                         "use --device cpu")
    return device


def shutdown():
    """Destroys this process's process group, if it has one. A process that exits with it
    still alive can abort in its C++ destructors ("terminate called without an active
    exception", exit code -6): 4 of 60 processes of 2-rank gloo jobs that exited right after
    a collective, none of 80 with this first."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _first_difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{key}: {a.get(key)!r} against {b.get(key)!r}"
    return f"{a!r} against {b!r}"
