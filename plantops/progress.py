"""Progress of the search's phases, a tqdm bar on a terminal and plain lines in a log, and
the wall time of each phase.

On a terminal (stderr is a TTY) each phase shows a bar with its elapsed time and ETA, and the
latest training loss. Elsewhere (a log file, CI) it writes one line per finished epoch, and
a line every ``PROGRESS_SECONDS`` within a long epoch, so a log shows a run that is alive.
Lines go to stdout, with the search's other lines, in order.
"""

from __future__ import annotations

import sys
import time

PROGRESS_SECONDS = 30.0


class Progress:
    """A phase called ``label``: ``epochs`` epochs of ``steps_per_epoch`` steps, the first
    ``start_epoch`` of them done (a resumed run)."""

    def __init__(self, label: str, epochs: int, steps_per_epoch: int, start_epoch: int = 0,
                 stream=None):
        self.label, self.epochs, self.per = label, epochs, max(1, steps_per_epoch)
        self.done = self.first = start_epoch * self.per
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and stream is None:
            from tqdm import tqdm
            self.bar = tqdm(total=epochs * self.per, initial=self.done, desc=f"  {label}",
                            unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)
        self.stream = stream or sys.stdout
        if start_epoch:
            self._line(f"{label}: resuming after epoch {start_epoch}/{epochs}")

    def step(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif time.perf_counter() - self.last_line >= PROGRESS_SECONDS:
            epoch, step = divmod(self.done - 1, self.per)
            self._line(f"{self.label}: epoch {epoch + 1}/{self.epochs}, step {step + 1}/"
                       f"{self.per}, {self._times()}")

    def epoch_done(self, epoch: int, losses: list[float]):
        loss = ", ".join(f"{v:.4f}" for v in losses)
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch + 1}/{self.epochs} loss {loss}", refresh=False)
        else:
            self._line(f"{self.label}: epoch {epoch + 1}/{self.epochs} done, training loss "
                       f"{loss}, {self._times()}")

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def end(self, message: str):
        """Closes the display with one line: ``label: message, elapsed``."""
        self.close()
        self._line(f"{self.label}: {message}, {time.perf_counter() - self.start:.1f}s")

    def _times(self) -> str:
        elapsed = time.perf_counter() - self.start
        left = self.epochs * self.per - self.done
        ran = self.done - self.first
        eta = f", ETA {elapsed / ran * left:.0f}s" if ran > 0 and left > 0 else ""
        return f"{elapsed:.1f}s{eta}"

    def _line(self, text: str):
        self.last_line = time.perf_counter()
        print(f"  {text}", file=self.stream, flush=True)


class PhaseTimes(dict):
    """The wall time of each phase of a run, in seconds, summed over its parts."""

    def add(self, phase: str, start: float) -> float:
        """Adds the time since ``start`` (a ``time.perf_counter()``) to ``phase``; returns it."""
        seconds = time.perf_counter() - start
        self[phase] = self.get(phase, 0.0) + seconds
        return seconds
