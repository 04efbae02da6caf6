"""A routing trace held in memory (io/traces.py reads and writes it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.spec.errors import SpecError


@dataclass(frozen=True)
class RoutingTrace:
    counts: np.ndarray  # [steps, layers, micro_batches, src_ranks, experts], non-negative integers
    steps: np.ndarray  # [steps] the training step (iteration) of each snapshot, increasing
    top_k: int | None  # experts per token when known (each row then sums to tokens * top_k)
    source: str  # where the trace comes from

    def __post_init__(self) -> None:
        if self.counts.ndim != 5:
            raise SpecError("counts", self.counts.shape, "5 axes: step, layer, micro_batch, src_rank, expert")
        if self.steps.shape != (self.counts.shape[0],):
            raise SpecError("steps", self.steps.shape, f"one step label per snapshot ({self.counts.shape[0]})")
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
