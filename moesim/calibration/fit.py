"""Fit the simulator's cost models to raw calibration samples (layouts in moesim.calibration.samples), and
validate the fitted tables when a profile is loaded. Pure numpy/pandas: no torch, no scipy.

Expert kernels (one (impl, dtype, hidden, ffn) shape at a time):

    time_s(m, E) = E * (t0_s + padded(m) * flop_per_row / (peak_flop_per_s * eff_max)),
    padded(m)    = ceil(m / tile_rows) * tile_rows

i.e. a per-expert launch/latency overhead plus tile-quantised work at a saturated efficiency. The model is
linear in (t0_s, 1 / eff_max), so the fit is a bounded linear least squares in relative error (rows weighted
by 1 / measured time, so small kernels count as much as big ones) with t0_s >= 0 and eff_max <= 1.
The achieved efficiency useful_flop / (time * peak) that this predicts collapses at small m (t0 dominates)
and drops just past each tile multiple (padding), which is what `efficiency_table` shows.

Expert FFNs (expert_ffn.csv, one shape at a time): the same model fitted twice, to the forward and to the
backward (forward_backward's time minus forward's, twice the forward's FLOP per row).

Collectives (per (op, tier)): an alpha-beta fit T = alpha_s + bytes / bandwidth (relative error again), plus
the measured busbw by size, interpolated linearly in log(bytes) and clamped at the ends (the SimAI ratio
tables, keyed on bytes instead of a ratio to an analytic bandwidth).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import pandas as pd

from moesim.calibration.samples import BUSBW_FACTOR, COLLECTIVE_COLUMNS, EXPERT_FFN_COLUMNS, KERNEL_COLUMNS
from moesim.spec.errors import SpecError

SHAPE_COLUMNS = ("impl", "dtype", "hidden", "ffn")  # one expert-kernel fit per distinct value of these
FLOP_PER_ROW_TOLERANCE = 0.01  # even rows must agree on flop / (E x m) to 1 %: else they are not one shape


# ---------------------------------------------------------------------------------------------- least squares

def _bounded_lstsq(a: np.ndarray, y: np.ndarray, lower: Sequence[float], upper: Sequence[float]) -> np.ndarray:
    """argmin ||a x - y||^2 subject to lower <= x <= upper, for a few parameters (a: [n, p], y: [n]).

    Exact by enumeration of active sets: the optimum of a convex quadratic over a box lies in the relative
    interior of one face, where it is the unconstrained minimiser over that face's free parameters. 3^p
    faces; p is 2 here. Columns are scaled to unit norm first because they differ by ~1e6 (seconds vs 1)."""
    a = np.asarray(a, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a_s = a / scale
    lo = np.asarray(lower, dtype=np.float64) * scale
    hi = np.asarray(upper, dtype=np.float64) * scale
    p = a.shape[1]
    best, best_cost = None, math.inf
    for state in itertools.product(("free", "lo", "hi"), repeat=p):
        x = np.empty(p)
        fixed = [i for i, s in enumerate(state) if s != "free"]
        if any(not np.isfinite(lo[i] if state[i] == "lo" else hi[i]) for i in fixed):
            continue
        for i in fixed:
            x[i] = lo[i] if state[i] == "lo" else hi[i]
        free = [i for i, s in enumerate(state) if s == "free"]
        rest = y - a_s[:, fixed] @ x[fixed] if fixed else y
        if free:
            x[free] = np.linalg.lstsq(a_s[:, free], rest, rcond=None)[0]
        if np.any(x < lo - 1e-12 * np.abs(lo)) or np.any(x > hi + 1e-12 * np.abs(hi)):
            continue
        cost = float(np.sum((a_s @ x - y) ** 2))
        if cost < best_cost:
            best, best_cost = np.clip(x, lo, hi), cost
    assert best is not None, "the all-at-bounds corner is always feasible when the bounds are finite"
    return best / scale


def _mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error as a fraction (0.05 = 5 %)."""
    return float(np.mean(np.abs(predicted - measured) / measured))


def _require_columns(samples: pd.DataFrame, columns: Sequence[str], key: str) -> None:
    missing = [c for c in columns if c not in samples.columns]
    if missing:
        raise SpecError(key, missing, f"the columns {', '.join(columns)}")


# --------------------------------------------------------------------------------------------- expert kernels

def _padded(rows: np.ndarray, tile_rows: int) -> np.ndarray:
    """Rows padded up to a multiple of tile_rows (0 stays 0). Float, so a mean count of a skewed sample works."""
    return np.ceil(np.asarray(rows, dtype=np.float64) / tile_rows) * tile_rows


@dataclass(frozen=True)
class ExpertKernelFit:
    """Fitted expert-GEMM model for one (impl, dtype, hidden, ffn) shape; see the module docstring.

    flop_per_row: useful FLOP per token row of one expert (all its GEMMs), from the samples' flop column.
    rel_error: MAPE of the model on the "even" samples it was fitted on.
    skewed_rel_error: MAPE on the "skewed" samples (None if there were none). These are NOT fitted: the sample
      stores only the mean tokens_per_expert, so they are predicted as if evenly split (E experts of the mean);
      the error is what ignoring the skew costs, i.e. how much the per-expert imbalance/padding matters."""

    impl: str
    dtype: str
    hidden: int
    ffn: int
    t0_s: float  # per-expert launch/latency overhead, seconds
    eff_max: float  # saturated fraction of peak on padded work, (0, 1]
    tile_rows: int  # GEMM row tile (BLOCK_M)
    flop_per_row: float  # FLOP per row of one expert
    peak_flop_per_s: float
    rel_error: float
    skewed_rel_error: float | None
    num_even: int
    num_skewed: int

    def expert_time_s(self, rows: np.ndarray) -> np.ndarray:
        """Seconds for single experts of `rows` rows (any shape); an expert with 0 rows is skipped (0 s)."""
        rows = np.asarray(rows, dtype=np.float64)
        work_s = _padded(rows, self.tile_rows) * self.flop_per_row / (self.peak_flop_per_s * self.eff_max)
        return np.where(rows > 0, self.t0_s + work_s, 0.0)

    def predict_s(self, rows_per_expert: np.ndarray) -> np.ndarray:
        """Kernel seconds for rows_per_expert [..., E] (rows of each expert, may be uneven) -> [...]."""
        return self.expert_time_s(rows_per_expert).sum(axis=-1)

    def efficiency_table(self, rows_grid: Sequence[int]) -> list[tuple[int, float]]:
        """[(rows, efficiency)] with efficiency = useful flop / (predicted time x peak) of one expert of that
        many rows (independent of E). Shows the collapse at small m and the dip just past a tile multiple."""
        rows = np.asarray(rows_grid, dtype=np.int64)
        if rows.ndim != 1 or rows.size == 0 or np.any(rows < 1):
            raise SpecError("rows_grid", list(rows_grid), "a non-empty list of row counts >= 1")
        eff = rows * self.flop_per_row / (self.expert_time_s(rows) * self.peak_flop_per_s)
        return [(int(m), float(e)) for m, e in zip(rows, eff)]


@dataclass(frozen=True)
class ExpertFfnFit:
    """One shape's expert FFN: the forward and the backward, each an ExpertKernelFit (its flop_per_row: the
    pass's FLOP per row, the backward's twice the forward's)."""

    forward: ExpertKernelFit
    backward: ExpertKernelFit


def fit_expert_ffn(samples: pd.DataFrame, peak_flop_per_s: float, tile_rows: int) -> ExpertFfnFit:
    """Fit the forward and the backward of ONE (impl, dtype, hidden, ffn) shape's EXPERT_FFN_COLUMNS rows. The
    backward of a size is its forward_backward time minus its forward time; a size measured in one pass only is
    left out of the backward."""
    _require_columns(samples, EXPERT_FFN_COLUMNS, "expert_ffn.csv")
    key = [*SHAPE_COLUMNS, "num_experts", "tokens_per_expert"]
    forward = samples[samples["pass"] == "forward"]
    both = forward.merge(samples[samples["pass"] == "forward_backward"], on=key, suffixes=("", "_fb"))
    backward_s = (both["time_median_s_fb"] - both["time_median_s"]).to_numpy(dtype=np.float64)
    shape = " ".join(str(samples[c].iloc[0]) for c in SHAPE_COLUMNS) if len(samples) else "no rows"
    if len(both) == 0 or not np.all(backward_s > 0):
        raise SpecError(f"expert_ffn.csv ({shape})", backward_s.tolist(),
                        "forward and forward_backward rows of the same sizes, forward_backward the slower")
    backward = both[key].assign(flop=both["flop_fb"] - both["flop"], time_median_s=backward_s)

    def as_kernel(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(distribution="even", time_p10_s=np.nan, time_p90_s=np.nan, repeats=0)[
            list(KERNEL_COLUMNS)]

    return ExpertFfnFit(fit_expert_kernel(as_kernel(forward), peak_flop_per_s, tile_rows),
                        fit_expert_kernel(as_kernel(backward), peak_flop_per_s, tile_rows))


def measured_efficiency(samples: pd.DataFrame, peak_flop_per_s: float) -> pd.Series:
    """Per sample row: achieved fraction of peak, flop / (time_median_s x peak). Same index as `samples`."""
    _require_columns(samples, ("flop", "time_median_s"), "samples")
    if not peak_flop_per_s > 0:
        raise SpecError("peak_flop_per_s", peak_flop_per_s, "> 0 FLOP/s")
    eff = samples["flop"].astype(float) / (samples["time_median_s"].astype(float) * peak_flop_per_s)
    return eff.rename("efficiency")


def fit_expert_kernel(samples: pd.DataFrame, peak_flop_per_s: float, tile_rows: int) -> ExpertKernelFit:
    """Fit t0_s >= 0 and 0 < eff_max <= 1 to the KERNEL_COLUMNS rows of ONE (impl, dtype, hidden, ffn) shape.

    Only distribution == "even" rows are fitted (their per-expert count is exactly tokens_per_expert); "skewed"
    rows are predicted at their mean and reported as skewed_rel_error. Needs even rows at >= 2 distinct
    padded sizes (one size cannot separate the overhead from the throughput)."""
    _require_columns(samples, KERNEL_COLUMNS, "samples")
    if not peak_flop_per_s > 0:
        raise SpecError("peak_flop_per_s", peak_flop_per_s, "> 0 FLOP/s")
    if not (isinstance(tile_rows, (int, np.integer)) and tile_rows >= 1):
        raise SpecError("tile_rows", tile_rows, "an integer >= 1 (rows)")
    shapes = samples[list(SHAPE_COLUMNS)].drop_duplicates()
    if len(shapes) != 1:
        raise SpecError("samples", shapes.to_dict("records"), "rows of exactly one (impl, dtype, hidden, ffn)")
    time_s = samples["time_median_s"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(time_s) & (time_s > 0)):
        raise SpecError("samples.time_median_s", time_s.tolist(), "finite times > 0 s")

    even = samples[samples["distribution"] == "even"]
    skewed = samples[samples["distribution"] == "skewed"]
    m = even["tokens_per_expert"].to_numpy(dtype=np.float64)
    experts = even["num_experts"].to_numpy(dtype=np.float64)
    y = even["time_median_s"].to_numpy(dtype=np.float64)
    if len(even) == 0 or np.any(m < 1) or np.any(experts < 1):
        raise SpecError("samples.tokens_per_expert", m.tolist(), "even rows with >= 1 token and >= 1 expert")
    per_row = even["flop"].to_numpy(dtype=np.float64) / (experts * m)
    flop_per_row = float(np.median(per_row))
    if not (flop_per_row > 0 and np.all(np.abs(per_row / flop_per_row - 1) <= FLOP_PER_ROW_TOLERANCE)):
        raise SpecError("samples.flop", per_row.tolist(),
                        "flop / (num_experts x tokens_per_expert) equal on all even rows (one shape)")
    padded = _padded(m, tile_rows)
    if len(np.unique(padded)) < 2:
        raise SpecError("samples.tokens_per_expert", sorted(set(m.tolist())),
                        f"even rows at >= 2 distinct sizes after padding to {tile_rows} rows")

    # time = t0 * E + (1/eff_max) * E * padded * flop_per_row / peak: linear in (t0, 1/eff_max).
    # Dividing each row by its measured time makes the residuals relative errors.
    design = np.column_stack([experts, experts * padded * flop_per_row / peak_flop_per_s])
    t0_s, inv_eff = _bounded_lstsq(design / y[:, None], np.ones_like(y), lower=(0.0, 1.0),
                                   upper=(math.inf, math.inf))
    shape = shapes.iloc[0]
    fit = ExpertKernelFit(impl=str(shape["impl"]), dtype=str(shape["dtype"]), hidden=int(shape["hidden"]),
                          ffn=int(shape["ffn"]), t0_s=float(t0_s), eff_max=float(1.0 / inv_eff),
                          tile_rows=int(tile_rows), flop_per_row=flop_per_row,
                          peak_flop_per_s=float(peak_flop_per_s), rel_error=0.0, skewed_rel_error=None,
                          num_even=len(even), num_skewed=len(skewed))
    rel_error = _mape(fit.expert_time_s(m) * experts, y)
    skewed_rel_error = None
    if len(skewed):
        sm = skewed["tokens_per_expert"].to_numpy(dtype=np.float64)
        se = skewed["num_experts"].to_numpy(dtype=np.float64)
        # Only the mean is stored: predict E experts of the mean (the even-split assumption).
        skewed_rel_error = _mape(fit.expert_time_s(sm) * se, skewed["time_median_s"].to_numpy(dtype=np.float64))
    return dataclasses.replace(fit, rel_error=rel_error, skewed_rel_error=skewed_rel_error)


# ------------------------------------------------------------------------------------------------ collectives

@dataclass(frozen=True)
class AlphaBeta:
    """T(bytes) = alpha_s + bytes / bandwidth_bytes_per_s. rel_error: MAPE of the fit on its samples."""

    alpha_s: float
    bandwidth_bytes_per_s: float
    rel_error: float

    def time_s(self, nbytes: float | np.ndarray) -> float | np.ndarray:
        return self.alpha_s + np.asarray(nbytes, dtype=np.float64) / self.bandwidth_bytes_per_s


def fit_alpha_beta(bytes: np.ndarray, time_s: np.ndarray) -> AlphaBeta:
    """Fit T = alpha + bytes / bandwidth by least squares in relative error (weights 1 / T), alpha >= 0,
    bandwidth > 0. bytes [n] >= 0 (nccl-tests "size"), time_s [n] > 0; needs >= 2 distinct sizes."""
    nbytes = np.asarray(bytes, dtype=np.float64).ravel()
    t = np.asarray(time_s, dtype=np.float64).ravel()
    if nbytes.shape != t.shape or nbytes.size == 0:
        raise SpecError("bytes", nbytes.size, f"as many sizes as times ({t.size}), at least one")
    if not np.all(np.isfinite(nbytes) & (nbytes >= 0)):
        raise SpecError("bytes", nbytes.tolist(), "finite sizes >= 0 bytes")
    if not np.all(np.isfinite(t) & (t > 0)):
        raise SpecError("time_s", t.tolist(), "finite times > 0 s")
    if len(np.unique(nbytes)) < 2:
        raise SpecError("bytes", np.unique(nbytes).tolist(), ">= 2 distinct sizes (to separate alpha and beta)")
    design = np.column_stack([np.ones_like(nbytes), nbytes])  # unknowns: alpha_s, seconds per byte
    alpha_s, s_per_byte = _bounded_lstsq(design / t[:, None], np.ones_like(t), lower=(0.0, 0.0),
                                         upper=(math.inf, math.inf))
    if not s_per_byte > 0:
        raise SpecError("time_s", t.tolist(), "times that grow with bytes (a finite bandwidth)")
    fit = AlphaBeta(float(alpha_s), float(1.0 / s_per_byte), 0.0)
    return dataclasses.replace(fit, rel_error=_mape(fit.time_s(nbytes), t))


def interpolate_busbw(table: Sequence[tuple[float, float]], nbytes: float | np.ndarray) -> float | np.ndarray:
    """busbw (the table's unit, GB/s) at nbytes: linear in log(bytes) between points, clamped at the ends.
    table: [(bytes, busbw_GBps)] with strictly increasing bytes > 0 (see check_monotone_sizes)."""
    xs = np.log([float(p[0]) for p in table])
    ys = np.array([float(p[1]) for p in table])
    n = np.asarray(nbytes, dtype=np.float64)
    # Sizes <= 0 have no log; they clamp to the smallest size, like any size below the table.
    logn = np.log(np.maximum(n, float(table[0][0])))
    out = np.interp(logn, xs, ys)
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class CollectiveFit:
    """One (op, tier): alpha-beta on time vs bytes, plus the measured busbw table.

    ranks: the group size the fit describes. alpha_beta.bandwidth_bytes_per_s is the asymptotic algbw
    (bytes / time); bus_bandwidth_bytes_per_s converts it with the nccl-tests factor.
    table: ((bytes, busbw_GBps), ...) sorted by bytes, median busbw over repeated sizes."""

    op: str
    tier: str
    ranks: int
    alpha_beta: AlphaBeta
    table: tuple[tuple[float, float], ...]

    @property
    def bus_bandwidth_bytes_per_s(self) -> float:
        return self.alpha_beta.bandwidth_bytes_per_s * BUSBW_FACTOR[self.op](self.ranks)

    def busbw_GBps(self, nbytes: float | np.ndarray) -> float | np.ndarray:
        return interpolate_busbw(self.table, nbytes)


def collective_tables(samples: pd.DataFrame) -> dict[tuple[str, str], CollectiveFit]:
    """Fit every (op, tier) in COLLECTIVE_COLUMNS samples.

    If one (op, tier) was measured at several group sizes, the largest group is kept (busbw tables of different
    group sizes do not mix; the simulator's tiers describe full groups) and `ranks` says which. Rows with
    bytes == 0 pin alpha in the alpha-beta fit but are left out of the busbw table (busbw is 0 there and
    log(bytes) undefined). Each table is checked with check_monotone_sizes (key "collectives.<op>.<tier>")."""
    _require_columns(samples, COLLECTIVE_COLUMNS, "samples")
    fits: dict[tuple[str, str], CollectiveFit] = {}
    for (op, tier), group in samples.groupby(["op", "tier"], sort=True):
        key = f"collectives.{op}.{tier}"
        if op not in BUSBW_FACTOR:
            raise SpecError(f"{key}.op", op, f"one of {', '.join(BUSBW_FACTOR)}")
        ranks = int(group["ranks"].max())
        group = group[group["ranks"] == ranks]
        try:
            ab = fit_alpha_beta(group["bytes"].to_numpy(), group["time_mean_s"].to_numpy())
        except SpecError as err:
            raise SpecError(f"{key}.{err.key}", err.value, err.expected) from None
        sized = group[group["bytes"] > 0]
        medians = sized.groupby("bytes", sort=True)["busbw_GBps"].median()
        table = tuple((float(b), float(v)) for b, v in medians.items())
        check_monotone_sizes(table, key)
        fits[(str(op), str(tier))] = CollectiveFit(str(op), str(tier), ranks, ab, table)
    return fits


# ------------------------------------------------------------------------------------------------- validation

def _pairs(table: object, key: str, what: str) -> list[tuple[float, float]]:
    try:
        pairs = [(float(a), float(b)) for a, b in table]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise SpecError(key, table, f"a list of [{what}] pairs") from None
    if not pairs:
        raise SpecError(key, table, f"a non-empty list of [{what}] pairs")
    return pairs


def check_monotone_sizes(table: Sequence[tuple[float, float]], key: str) -> None:
    """Raise SpecError(key, ...) unless table is a non-empty list of (size_bytes, value) pairs with finite sizes
    > 0, strictly increasing, and finite values (bandwidth or time) > 0."""
    pairs = _pairs(table, key, "bytes, value")
    sizes = [s for s, _ in pairs]
    values = [v for _, v in pairs]
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        raise SpecError(key, sizes, "finite sizes > 0 bytes")
    if not all(b > a for a, b in zip(sizes, sizes[1:])):
        raise SpecError(key, sizes, "strictly increasing sizes (bytes)")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise SpecError(key, values, "finite bandwidths/times > 0")


def check_efficiency_table(points: Sequence[tuple[float, float]], key: str) -> None:
    """Raise SpecError(key, ...) unless points is a non-empty list of (rows, efficiency) pairs with finite rows
    > 0, strictly increasing, and efficiency in (0, 1]."""
    pairs = _pairs(points, key, "rows, efficiency")
    rows = [r for r, _ in pairs]
    effs = [e for _, e in pairs]
    if not all(math.isfinite(r) and r > 0 for r in rows):
        raise SpecError(key, rows, "finite row counts > 0")
    if not all(b > a for a, b in zip(rows, rows[1:])):
        raise SpecError(key, rows, "strictly increasing row counts")
    if not all(math.isfinite(e) and 0 < e <= 1 for e in effs):
        raise SpecError(key, effs, "efficiency in (0, 1]")
