"""Progress lines for long work: items done, rate, time left.

A line is only as true as the counts it is given: callers count an item when its work has finished (not when it
was handed to an asynchronous device), and the first line comes `every` seconds after the start, so no rate is
ever read off an instant."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Prints `label: done/total unit (pct), rate unit/s, elapsed, left` at most every `every` seconds (the first
    line too: none at once), and when the total is reached or a caller forces it (the run's end)."""

    def __init__(self, label: str, total: float | None, unit: str = "", scale: float = 1.0,
                 every: float = 2.0, stream=None, enabled: bool = True, initial: float = 0.0):
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.every, self.stream, self.enabled = every, stream or sys.stderr, enabled
        self.done = self.initial = initial  # `initial`: done before this run (a resume), not in the rate
        self.start = time.monotonic()
        self._last = self.start

    def update(self, amount: float = 1.0, force: bool = False) -> None:
        """Count `amount` more items done; print a line when due."""
        self.done += amount
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if self.enabled and (force or now - self._last >= self.every or finished):
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """The current progress line."""
        elapsed = (now or time.monotonic()) - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        s, digits = self.scale, 0 if self.scale == 1 else 1
        head = f"{self.label}: {self.done / s:,.{digits}f}"
        rate_digits = max(digits, 2 if 0 < rate / s < 10 else 0)  # a slow rate (layers/s) stays readable
        tail = f"{rate / s:,.{rate_digits}f}{self.unit}/s, elapsed {_duration(elapsed)}"
        if self.total is None:
            return f"{head}{self.unit}, {tail}"
        left = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        # A run may pass its total (collection and its passes keep the batch that crosses --max_tokens whole):
        # finished, not 102% done.
        pct = min(100.0 * self.done / self.total, 100.0) if self.total else 100.0
        return f"{head}/{self.total / s:,.{digits}f}{self.unit} ({pct:.0f}%), {tail}, left {left}"
