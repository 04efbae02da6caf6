"""What a calibration run measured, as fitted models and size tables a profile carries (hw_profiles/*.yaml,
section `calibration`). The simulator prefers these to the datasheet numbers when they are present."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.spec.hardware import Dtype


@dataclass(frozen=True)
class ExpertKernelCalibration:
    """time(rows of one expert) = t0_s + ceil(rows / tile_rows) * tile_rows * flop_per_row / (peak * eff_max)."""

    impl: str
    dtype: Dtype
    hidden: int
    ffn: int
    t0_s: float
    eff_max: float
    tile_rows: int
    table: tuple[tuple[float, float], ...]  # (rows per expert, efficiency) as measured, for reports


@dataclass(frozen=True)
class CollectiveCalibration:
    """One collective on one tier: alpha-beta fit plus the measured busbw per size (nccl-tests conventions)."""

    op: str  # all_reduce | all_gather | reduce_scatter | all_to_all | all_to_all_skewed
    tier: str  # intra_node | inter_node
    ranks: int
    alpha_s: float
    bandwidth_bytes_per_s: float
    table: tuple[tuple[float, float], ...]  # (bytes per rank, busbw bytes/s), bytes strictly increasing

    def time_s(self, nbytes: float, factor: float) -> float:
        """Seconds for a per-rank size of nbytes: size x factor / busbw(size) inside the measured range. Below
        the smallest size the time measured there (latency-bound: smaller is not faster); above the largest,
        the largest size's busbw."""
        smallest = self.table[0][0]
        size = max(nbytes, smallest)
        return size * factor / self.busbw_bytes_per_s(size)

    def busbw_bytes_per_s(self, nbytes: float) -> float:
        """Log-size linear interpolation of the measured busbw, clamped at the measured ends."""
        sizes = np.log([b for b, _ in self.table])
        bw = np.array([v for _, v in self.table])
        return float(np.interp(np.log(max(nbytes, 1.0)), sizes, bw))


@dataclass(frozen=True)
class Calibration:
    provenance: dict = field(default_factory=dict)  # date, device, versions, hosts, ranks, environment
    samples: str = ""  # the raw samples' directory, relative to the profile
    expert_kernels: tuple[ExpertKernelCalibration, ...] = ()
    collectives: tuple[CollectiveCalibration, ...] = ()

    def collective(self, op: str, tier: str) -> CollectiveCalibration | None:
        """The measurement with the most ranks for (op, tier), or None."""
        found = [c for c in self.collectives if c.op == op and c.tier == tier]
        return max(found, key=lambda c: c.ranks) if found else None

    def expert_kernel(self, dtype: Dtype, hidden: int, ffn: int) -> ExpertKernelCalibration | None:
        """The measured shape of this dtype nearest in log(hidden x ffn), or None."""
        found = [k for k in self.expert_kernels if k.dtype is dtype]
        if not found:
            return None
        return min(found, key=lambda k: abs(np.log(k.hidden * k.ffn) - np.log(hidden * ffn)))
