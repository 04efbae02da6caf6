"""Progress of long work on stderr: done/total, rate and ETA, redrawn in place; silent unless a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call with (done, total) after each unit of work. Prints only when `stream` is a terminal, at most
    every `min_interval_s`, and clears its line at the end."""

    def __init__(self, label: str, unit: str, stream: TextIO | None = None, min_interval_s: float = 0.2):
        self.label, self.unit = label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self._t0 = time.perf_counter()
        self._last_s = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last_s < self.min_interval_s:
            return
        self._last_s = now
        elapsed_s = now - self._t0
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 and done < total else f"{elapsed_s:.1f} s"
        self.stream.write(f"\r{self.label}: {done}/{total} {self.unit}  {rate:.2f} {self.unit}/s  {eta}   ")
        if done >= total:
            self.stream.write("\r" + " " * 72 + "\r")
        self.stream.flush()
