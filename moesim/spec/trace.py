"""A routing trace held in memory (io/traces.py reads and writes it), and the bounds every trace obeys.

Bounds (why): a count is (token, expert) assignments of one source rank in one micro-batch of one layer, so it
fits int32 (MAX_COUNT), the dtype replay hands the simulator. A trace holds at most MAX_TRACE_CELLS counts
(2 GiB as int32) so that a hostile or mistaken file cannot exhaust memory, and because
MAX_TRACE_CELLS * MAX_COUNT < 2**61 no int64 sum over any axes of a trace can overflow. Steps are training
iterations: integers in [0, 2**63 - 1], strictly increasing.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import pandas as pd

from moesim.spec.errors import SpecError

MAX_COUNT = int(np.iinfo(np.int32).max)  # assignments per (step, layer, micro-batch, source, expert)
MAX_TRACE_CELLS = 2**29  # dense counts per trace: 536,870,912 = 2 GiB as int32
MAX_STEP = int(np.iinfo(np.int64).max)
AXES = ("step", "layer", "micro_batch", "src_rank", "expert")


@dataclass(frozen=True)
class RoutingTrace:
    counts: np.ndarray  # [steps, layers, micro_batches, src_ranks, experts], integers in [0, MAX_COUNT]
    steps: np.ndarray  # [steps] the training step (iteration) of each snapshot, strictly increasing
    top_k: int | None  # experts per token when known (each row then sums to tokens * top_k)
    source: str  # where the trace comes from
    path: str | None = None  # the file or log directory it was read from (errors about the trace name it)

    @functools.cached_property
    def counts_sha256(self) -> str:
        """SHA-256 of the counts (shape, dtype, bytes): how a result's provenance names the trace. Cached: the
        trace is frozen, and every point of a sweep over one trace asks for it (55 ms for SmartMoE's)."""
        counts = np.ascontiguousarray(self.counts)
        digest = hashlib.sha256(repr((counts.shape, counts.dtype.str)).encode())
        digest.update(counts.tobytes())
        return digest.hexdigest()

    def __post_init__(self) -> None:
        if not isinstance(self.counts, np.ndarray) or self.counts.ndim != 5:
            raise SpecError("counts", getattr(self.counts, "shape", type(self.counts).__name__),
                            "5 axes: step, layer, micro_batch, src_rank, expert")
        check_cells(self.counts.shape, "counts")
        check_counts(self.counts, "counts")
        if not isinstance(self.steps, np.ndarray) or self.steps.shape != (self.counts.shape[0],):
            raise SpecError("steps", getattr(self.steps, "shape", type(self.steps).__name__),
                            f"one step label per snapshot ({self.counts.shape[0]})")
        check_steps(self.steps, "steps")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise SpecError("top_k", self.top_k, f"an integer in [1, {self.num_experts}]")

    @property
    def num_layers(self) -> int:
        return self.counts.shape[1]

    @property
    def num_micro_batches(self) -> int:
        return self.counts.shape[2]

    @property
    def num_sources(self) -> int:
        return self.counts.shape[3]

    @property
    def num_experts(self) -> int:
        return self.counts.shape[4]

    def to_frame(self) -> pd.DataFrame:
        """Long form with only the non-zero counts."""
        idx = np.nonzero(self.counts)
        return pd.DataFrame({
            "step": self.steps[idx[0]].astype(np.int64), "layer": idx[1].astype(np.int64),
            "micro_batch": idx[2].astype(np.int64), "src_rank": idx[3].astype(np.int64),
            "expert": idx[4].astype(np.int64), "tokens": self.counts[idx].astype(np.int64)})


def check_cells(shape: Sequence[int], key: str) -> None:
    """Raise unless a dense trace of `shape` (step, layer, micro_batch, src_rank, expert sizes) holds at most
    MAX_TRACE_CELLS counts. Exact integer arithmetic: call it with declared sizes BEFORE allocating anything."""
    max_cells = MAX_TRACE_CELLS  # read at call time: tests lower it
    cells = math.prod(int(n) for n in shape)
    if cells > max_cells:
        raise SpecError(key, tuple(int(n) for n in shape),
                        f"a trace of at most {max_cells:,} counts (step x layer x micro_batch x src_rank x expert; "
                        f"this one has {cells:,})")


def check_counts(counts: np.ndarray, key: str) -> None:
    """Raise unless `counts` is an integer array with every value in [0, MAX_COUNT]."""
    if counts.dtype == np.bool_ or not np.issubdtype(counts.dtype, np.integer):
        raise SpecError(key, str(counts.dtype), "an integer array of (token, expert) assignment counts")
    if counts.size == 0:
        return
    low, high = counts.min(), counts.max()
    if low < 0 or high > MAX_COUNT:
        bad = low if low < 0 else high
        where = np.unravel_index(int(np.argmax(counts == bad)), counts.shape)
        raise SpecError(f"{key}[{', '.join(str(int(i)) for i in where)}]", int(bad),
                        f"a count in [0, {MAX_COUNT:,}] (assignments; int32)")


def check_steps(steps: np.ndarray, key: str) -> None:
    """Raise unless `steps` is 1-D, integer, in [0, MAX_STEP] and strictly increasing; the error names the first
    offending position."""
    if steps.dtype == np.bool_ or not np.issubdtype(steps.dtype, np.integer) or steps.ndim != 1:
        raise SpecError(key, f"{steps.dtype} array of shape {steps.shape}", "a 1-D array of integer steps")
    if steps.size == 0:
        return
    if steps.min() < 0 or steps.max() > MAX_STEP:  # numpy compares uint64 with Python ints exactly
        bad = int(np.argmax((steps < 0) | (steps > MAX_STEP)))
        raise SpecError(f"{key}[{bad}]", int(steps[bad]), f"a step in [0, {MAX_STEP}]")
    increasing = steps[1:] > steps[:-1]
    if not increasing.all():
        bad = int(np.argmin(increasing)) + 1
        raise SpecError(f"{key}[{bad}]", int(steps[bad]),
                        f"strictly increasing steps (> {key}[{bad - 1}] = {int(steps[bad - 1])})")
