"""What a calibration run measured, as fitted models and size tables a profile carries (hw_profiles/*.yaml,
section `calibration`). The simulator prefers these to the datasheet numbers when they are present."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import field_validator

from moesim import units
from moesim.spec.base import LISTS_AS_TUPLES, Count, NonEmptyStr, SpecModel, spec_field
from moesim.spec.bounds import (BANDWIDTH, FRACTION, INT32_MAX, LATENCY, MAX_BYTES_PER_S, MAX_FFN, MAX_HIDDEN,
                                MAX_MEMORY_BYTES, MAX_RANKS, MAX_TILE_ROWS, MIN_TABLE_BYTES_PER_S)
from moesim.spec.dtype import Dtype
from moesim.spec.errors import require

Tier = Literal["intra_node", "inter_node"]
CollectiveOp = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_skewed"]
Table = Annotated[tuple[tuple[float, float], ...], LISTS_AS_TUPLES]


def _increasing_within(table: tuple, max_size: float, low: float, high: float) -> tuple:
    """Sizes in (0, max_size] strictly increasing (a shuffled or duplicated table means a broken calibration
    file), values in [low, high] and > 0 (the field's `expected` says both in the written unit)."""
    ok = all(0 < a <= max_size and 0 < b and low <= b <= high for a, b in table) and \
        all(y[0] > x[0] for x, y in zip(table, table[1:]))
    require(ok, "", table, f"sizes in (0, {max_size:g}] strictly increasing, values > 0 in [{low:g}, {high:g}]")
    return table


class ExpertKernelCalibration(SpecModel):
    """time(rows of one expert) = t0_s + ceil(rows / tile_rows) * tile_rows * flop_per_row / (peak * eff_max)."""

    impl: NonEmptyStr = spec_field(help="the measured implementation: triton, torch_loop")
    dtype: Dtype = spec_field(help="the measured dtype")
    hidden: Count = spec_field(help="hidden size of the measured shape", ge=1, le=MAX_HIDDEN)
    ffn: Count = spec_field(help="expert FFN size of the measured shape", ge=1, le=MAX_FFN)
    t0_s: float = spec_field(help="fixed cost per expert", yaml="t0_us", unit="us", scale=units.US, **LATENCY)
    eff_max: float = spec_field(help="asymptotic fraction of peak", unit="(fraction)", **FRACTION)
    tile_rows: Count = spec_field(help="row tile each expert is padded to", ge=1, le=MAX_TILE_ROWS)
    fit_rel_error: float = spec_field(0.0, help="mean relative error of the fit (a report, not used)", ge=0)
    table: Table = spec_field(
        help="(rows per expert, efficiency) as measured, for reports", yaml="table_rows", min_length=1,
        expected=f"[[rows per expert, efficiency], ...] with rows in (0, {INT32_MAX}] strictly increasing and "
                 f"efficiency in (0, 1]")

    @field_validator("table")
    @classmethod
    def _table(cls, table: tuple) -> tuple:
        return _increasing_within(table, INT32_MAX, 0.0, 1.0)


class ExpertFfnCalibration(SpecModel):
    """The routed experts' whole SwiGLU FFN as `moesim execute` runs it (GEMMs, activation, autograd), one pass at a
    time: time(rows of one expert) = t0_s + ceil(rows / tile_rows) * tile_rows * flop_per_row / (peak * eff_max),
    with the backward's flop twice the forward's."""

    impl: NonEmptyStr = spec_field(help="the measured implementation: triton, torch_loop")
    dtype: Dtype = spec_field(help="the measured dtype")
    hidden: Count = spec_field(help="hidden size of the measured shape", ge=1, le=MAX_HIDDEN)
    ffn: Count = spec_field(help="expert FFN size of the measured shape", ge=1, le=MAX_FFN)
    tile_rows: Count = spec_field(help="row tile each expert is padded to", ge=1, le=MAX_TILE_ROWS)
    forward_t0_s: float = spec_field(help="fixed cost per expert, forward", yaml="forward_t0_us", unit="us",
                                     scale=units.US, **LATENCY)
    forward_eff_max: float = spec_field(help="asymptotic fraction of peak, forward", unit="(fraction)", **FRACTION)
    backward_t0_s: float = spec_field(help="fixed cost per expert, backward", yaml="backward_t0_us", unit="us",
                                      scale=units.US, **LATENCY)
    backward_eff_max: float = spec_field(help="asymptotic fraction of peak, backward", unit="(fraction)",
                                         **FRACTION)
    fit_rel_error: float = spec_field(0.0, help="mean relative error of the two fits (a report, not used)", ge=0)


class CollectiveCalibration(SpecModel):
    """One collective on one tier: alpha-beta fit plus the measured busbw per size (nccl-tests conventions)."""

    ranks: Count = spec_field(help="ranks in the measured group", ge=2, le=MAX_RANKS)
    alpha_s: float = spec_field(help="fitted latency", yaml="alpha_us", unit="us", scale=units.US, **LATENCY)
    bandwidth_bytes_per_s: float = spec_field(help="fitted asymptotic algbw", yaml="bandwidth_GBps", unit="GB/s",
                                              scale=units.GB_PER_S, **BANDWIDTH)
    fit_rel_error: float = spec_field(0.0, help="mean relative error of the fit (a report, not used)", ge=0)
    table: Table = spec_field(
        help="(bytes per rank, busbw) as measured", scale=(1.0, units.GB_PER_S), min_length=1,
        expected=f"[[bytes per rank, busbw GB/s], ...] with bytes in (0, {MAX_MEMORY_BYTES:g}] strictly "
                 f"increasing and busbw in [{MIN_TABLE_BYTES_PER_S / units.GB_PER_S:g}, "
                 f"{MAX_BYTES_PER_S / units.GB_PER_S:g}] GB/s")

    @field_validator("table")
    @classmethod
    def _table(cls, table: tuple) -> tuple:
        return _increasing_within(table, MAX_MEMORY_BYTES, MIN_TABLE_BYTES_PER_S, MAX_BYTES_PER_S)

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


class Calibration(SpecModel):
    provenance: dict[str, Any] = spec_field(help="date, device, versions, hosts, ranks, environment", min_length=1,
                                            expected="a mapping: date, device, versions, hosts, ranks")
    samples: str = spec_field("", help="the raw samples' directory, relative to the profile")
    expert_kernels: Annotated[tuple[ExpertKernelCalibration, ...], LISTS_AS_TUPLES] = spec_field(
        (), help="fitted expert GEMM shapes", expected="a list of fitted expert GEMM shapes")
    expert_ffns: Annotated[tuple[ExpertFfnCalibration, ...], LISTS_AS_TUPLES] = spec_field(
        (), help="fitted expert FFN shapes, forward and backward",
        expected="a list of fitted expert FFN shapes")
    collectives: dict[Tier, dict[CollectiveOp, CollectiveCalibration]] = spec_field(
        default_factory=dict, help="fitted collectives per tier and operation")

    def collective(self, op: str, tier: str) -> CollectiveCalibration | None:
        """The measurement of (op, tier), or None."""
        return self.collectives.get(tier, {}).get(op)

    def expert_kernel(self, dtype: Dtype, hidden: int, ffn: int) -> ExpertKernelCalibration | None:
        """The measured GEMM shape of this dtype nearest in log(hidden x ffn), or None."""
        return _nearest_shape(self.expert_kernels, dtype, hidden, ffn)

    def expert_ffn(self, dtype: Dtype, hidden: int, ffn: int) -> ExpertFfnCalibration | None:
        """The measured FFN shape of this dtype nearest in log(hidden x ffn), or None."""
        return _nearest_shape(self.expert_ffns, dtype, hidden, ffn)


def _nearest_shape(fits: tuple, dtype: Dtype, hidden: int, ffn: int):
    found = [k for k in fits if k.dtype is dtype]
    if not found:
        return None
    return min(found, key=lambda k: abs(np.log(k.hidden * k.ffn) - np.log(hidden * ffn)))
