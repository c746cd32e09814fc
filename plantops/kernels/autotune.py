"""``backend="auto"`` on a CPU, chosen by measurement on the machine at hand.

The C++ kernels and oneDNN (the ``torch`` backend) win at different shapes, and where the
line falls depends on the machine: its instruction set (AVX2 or AVX-512), its cores and
caches, the threads. So, as ``torch.backends.cudnn.benchmark`` and Triton's autotuner do, the
first time a convolution of a shape runs (its batch rounded up to a power of two and capped
at 128: ``measured_shape``), each backend that can run it is timed on random tensors of that
shape, for the work that call does (``work``: the forward alone, as in
inference; the forward and the input gradient, as for a round's frozen layers; the forward
and every gradient, as in training), and the faster is kept: in memory, and on disk
(``$PLANTOPS_CACHE/autotune/``, one file per machine: its CPU model, the instruction set the
kernels were built for, the threads, the versions of torch and plantops, and the build of the
kernels), so that a second run measures nothing and makes the same choices.

``PLANTOPS_AUTOTUNE=0`` turns measuring off: the fixed rule (``plantops.kernels
.cpu_kernels_win``) decides, as it does under ``torch.compile`` and in the tests that must
pin a backend. ``PLANTOPS_AUTOTUNE_FILE=PATH`` takes the choices from a file of them (what
``choices()`` returns, as a search's result.json keeps it under ``backends``) instead of
measuring, to rerun a search bit for bit on another machine; a shape the file does not hold
falls back to the fixed rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

ENV_SWITCH = "PLANTOPS_AUTOTUNE"
ENV_FILE = "PLANTOPS_AUTOTUNE_FILE"
WORKS = ("forward", "input", "train")  # what a call computes; see the module's docstring
ROUNDS = 3  # timed runs per backend, interleaved, after one warm-up: the fastest counts ...
ENOUGH_S = 0.05  # ... or fewer, once a backend has been timed this long: a slow call times
# itself (one run of a training step at 128 channels is 0.3 s), and a fast one is cheap
MARGIN = 0.05  # another backend than the fixed rule's must be this much faster to be taken


_paused = 0  # paused() depth


def enabled() -> bool:
    return (os.environ.get(ENV_SWITCH, "1") != "0" and not _paused
            and not torch.compiler.is_compiling())


@contextlib.contextmanager
def paused():
    """Within it, the fixed rule decides what is not yet chosen, and nothing is measured: for
    passes that only find shapes (one image through a network), whose choices do not
    matter."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


def work_of(grad_input: bool, grad_weight: bool) -> str:
    if grad_weight:
        return "train"
    return "input" if grad_input else "forward"


BATCH_CAP = 128  # batches from here on share one choice, measured at this batch


def measured_shape(shape_key):
    """The shape a choice is measured on and kept under: the batch rounded up to a power of
    two from 8 (below 8 the Winograd kernels do not apply: as it is), and capped at
    BATCH_CAP, where both backends' time per image has stopped changing. A search meets its
    training batch, the epoch's last, smaller one, and evaluation passes of 500-1,500
    images: without it each of those was measured again, at up to 12x the cost."""
    batch, *rest = shape_key
    if batch >= 8:
        batch = min(BATCH_CAP, 1 << (int(batch) - 1).bit_length())
    return (batch, *rest)


def _key(work: str, dtype: torch.dtype, shape_key) -> str:
    batch, channels, outputs, height, width, kh, kw, stride, padding = shape_key
    return (f"{work} {str(dtype).removeprefix('torch.')} N{batch} C{channels} O{outputs} "
            f"{height}x{width} k{kh}x{kw} s{stride[0]}x{stride[1]} p{padding[0]}x{padding[1]}")


def machine() -> dict:
    """What a choice depends on besides the shape: the machine, its threads, the versions,
    and the build of the kernels (a rebuilt kernel can be faster than what was measured)."""
    from plantops import __version__
    from plantops.kernels import _native
    module = _native.load("plantops._C")[0]
    return dict(cpu=_cpu_model(), simd=getattr(module, "simd", "unknown"),
                threads=torch.get_num_threads(), torch=torch.__version__, plantops=__version__,
                build=_build(module))


def _build(module) -> str:
    """A fingerprint of the compiled kernels: the hash of the module's file."""
    try:
        return hashlib.sha1(Path(module.__file__).read_bytes()).hexdigest()[:12]
    except (AttributeError, OSError, TypeError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Tuner:
    """The choices of this process (``choose``), and where they are kept."""

    def __init__(self):
        self.choices: dict[str, str] = {}   # key -> backend, kept or measured
        self.in_place: set[str] = set()      # keys measured where they run (choose_in_place)
        self.used: dict[str, str] = {}       # those this process ran
        self.measured = 0                    # shapes measured in this process
        self.seconds = 0.0                   # and the time it took
        self._path: Path | None = None
        self._machine: dict | None = None
        self._loaded = False

    def machine(self) -> dict:
        """``machine()``, once per tuner (it reads /proc/cpuinfo and hashes the kernels)."""
        if self._machine is None:
            self._machine = machine()
        return self._machine

    def path(self) -> Path:
        if self._path is None:
            from plantops.data import default_cache_dir
            tag = hashlib.sha1(json.dumps(self.machine(), sort_keys=True).encode()).hexdigest()
            self._path = default_cache_dir() / "autotune" / f"{tag[:12]}.json"
        return self._path

    def _load(self):
        self._loaded = True
        pinned = os.environ.get(ENV_FILE)
        source = Path(pinned) if pinned else self.path()
        try:
            saved = json.loads(source.read_text())
            self.choices.update(saved.get("choices", saved))
            self.in_place.update(saved.get("in_place", ()) if "choices" in saved else ())
        except FileNotFoundError:
            if pinned:
                raise ValueError(f"{ENV_FILE}={pinned}: no such file; unset it to measure "
                                 "the backends on this machine") from None
        except (OSError, ValueError, AttributeError):
            pass  # a cache that does not read is measured anew, and rewritten

    def choose(self, work: str, dtype, shape_key, candidates: list[str], measure,
               fallback: str) -> str:
        """The backend for ``work`` on ``shape_key``: the one kept, or, the first time, the
        fastest of ``candidates`` by ``measure(candidates, work, shape)`` (seconds by name, on
        ``measured_shape(shape_key)``, which is also what the choice is kept under), unless
        ``fallback`` (the fixed rule's choice) is within ``MARGIN`` of it. With a file of
        pinned choices, a shape it does not hold takes ``fallback``."""
        if not self._loaded:
            self._load()
        shape_key = measured_shape(shape_key)
        key = _key(work, dtype, shape_key)
        choice = self.choices.get(key)
        if choice in candidates:
            self.used[key] = choice
            return choice
        if os.environ.get(ENV_FILE):
            self.used[key] = fallback
            return fallback
        start = time.perf_counter()
        times = measure(candidates, work, shape_key)
        self.seconds += time.perf_counter() - start
        self.measured += 1
        choice = min(times, key=times.get)
        if fallback in times and times[choice] > (1 - MARGIN) * times[fallback]:
            choice = fallback  # within noise of the fixed rule's choice: the rule stands
        self.choices[key] = self.used[key] = choice
        self._save()
        return choice

    def choose_in_place(self, work: str, dtype, shape_key, candidates: list[str], run_with,
                        fallback: str) -> str:
        """As ``choose``, for a layer of a computation that runs many times the same way (a
        frozen network's inference in chunks: plantops.inference), measured where it runs:
        ``run_with(name)`` runs the whole computation once with this layer on backend
        ``name`` and returns the seconds the layer took in it. The backends take turns
        (ROUNDS, after a warm-up each); the fastest decides, with the fixed rule's
        ``fallback`` kept within MARGIN (of the layer's time: of the whole run's, a layer's
        gain hid in the margin). Its inputs are
        then where the layer before left them, in cache, and the caches hold what the rest
        of the computation leaves there: timed alone on random tensors, in turns with the
        other backend, a layer of 3 input channels measured oneDNN as fast as the C++
        kernels, and ran 3x slower than them in the network. The choice is kept under
        ``choose``'s key, marked measured in place (a choice of ``choose`` for the key is
        measured again here); a file of pinned choices is honoured as there."""
        if not self._loaded:
            self._load()
        shape_key = measured_shape(shape_key)
        key = _key(work, dtype, shape_key)
        choice = self.choices.get(key)
        pinned = os.environ.get(ENV_FILE)
        if choice in candidates and (key in self.in_place or pinned):
            self.used[key] = choice
            return choice
        if pinned:
            self.used[key] = fallback
            return fallback
        start = time.perf_counter()
        best = measure_in_place(candidates, run_with)
        self.seconds += time.perf_counter() - start
        self.measured += 1
        choice = min(best, key=best.get)
        if fallback in best and best[choice] > (1 - MARGIN) * best[fallback]:
            choice = fallback
        self.choices[key] = self.used[key] = choice
        self.in_place.add(key)
        self._save()
        return choice

    def _save(self):
        path = self.path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(machine=self.machine(), choices=self.choices,
                                           in_place=sorted(self.in_place)),
                                      indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written: measured again next time, nothing lost


TUNER = Tuner()


def measure(names: list[str], work: str, dtype: torch.dtype, shape_key) -> dict[str, float]:
    """Seconds of one call of each backend of ``names`` doing ``work`` on random tensors of
    ``shape_key``: the fastest of up to ROUNDS runs after a warm-up. The backends take turns,
    so that a moment when the machine is slow (it is shared, or busy with something else)
    falls on both rather than deciding for one."""
    calls = {name: _call(name, work, dtype, shape_key) for name in names}
    for call in calls.values():
        call()
    best = dict.fromkeys(names, float("inf"))
    spent = dict.fromkeys(names, 0.0)
    for turn in range(ROUNDS):
        if turn and max(spent.values()) >= ENOUGH_S:
            break
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
            best[name], spent[name] = min(best[name], seconds), spent[name] + seconds
    return best


def measure_in_place(names: list[str], run_with) -> dict[str, float]:
    """The seconds ``run_with(name)`` returns for each backend of ``names``: the least of
    ROUNDS runs after a warm-up each, the backends in turns (see ``measure``)."""
    best = dict.fromkeys(names, float("inf"))
    for name in names:
        run_with(name)
    for _ in range(ROUNDS):
        for name in names:
            best[name] = min(best[name], run_with(name))
    return best


def _call(name: str, work: str, dtype: torch.dtype, shape_key):
    """One call of backend ``name`` doing ``work`` on random tensors of ``shape_key``."""
    from plantops.planted_conv import planted_conv2d
    batch, channels, outputs, height, width, kh, kw, stride, padding = shape_key
    generator = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype)
    x = randn(batch, channels, height, width).requires_grad_(work != "forward")
    weight = randn(outputs, channels, kh, kw) * (kh * kw * channels) ** -0.5
    bias = randn(outputs)
    if work == "train":  # every filter trains: the weight is planted, the frozen block empty
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        args = dict(frozen_weight=weight[:0].detach(), out_weight=weight, out_bias=bias)
    else:
        args = dict(frozen_weight=weight, frozen_bias=bias)

    def call():
        with torch.set_grad_enabled(work != "forward"):
            out = planted_conv2d(x, **args, stride=stride, padding=padding, backend=name)
            if work != "forward":
                out.backward(torch.ones_like(out))

    return call


def choices() -> dict[str, str]:
    """The choices this process ran, by work and shape (to pin them with
    PLANTOPS_AUTOTUNE_FILE)."""
    return dict(sorted(TUNER.used.items()))
