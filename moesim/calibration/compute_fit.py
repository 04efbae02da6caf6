"""Fit the profile's compute keys to the samples moesim/calibration/compute.py measured. Pure numpy/pandas; the
GEMM model is moesim/cost/gemm.py's own functions, called with the candidate parameters.

- `gemm_efficiency` (and `gemm_tiles` where they are fitted): each gemm.csv row is predicted as
  gemm_time_s(m, n, k) + kernel_launch_s, what the simulator charges for one GEMM, and the efficiency is the one
  that minimises the MAPE over all rows (a dense 1-D search: the MAPE is not convex in it). Tile candidates are
  fitted one set at a time and the set with the least MAPE wins.
- `hbm_efficiency`: each elementwise.csv row is predicted as kernel_launch_s + bytes / (hbm bandwidth x
  efficiency), as the simulator charges a memory-bound kernel; the same search.
- `kernel_launch_us`: launch.csv's per-call median (no fit: the error reported is its p10-p90 spread).
- `attention_efficiency`: per attention.csv grid point (seq_len, head_dim), the FlashAttention-convention FLOPs of
  the pass (cost/attention.py: forward 4·batch·heads·head_dim·seq²/2 causal, backward 2.5x that) over (time x
  peak); the backward's time is forward_backward's minus forward's. No model is fitted: the table is the
  measurement, which the simulator reproduces at the grid points (FLOP / (peak x efficiency) is the time).

Efficiencies are searched in [MIN_EFFICIENCY, 10] (attention's are computed) and then clipped to the profile's
bounds [MIN_EFFICIENCY, 1]; `raw` keeps the unclipped optimum, so a source can say when the bound was hit (a CPU's
copy bandwidth measured on another day than its element-wise kernels can come out above it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd

from moesim.calibration.fit import _mape, _require_columns
from moesim.calibration.samples import (ATTENTION_COLUMNS, ATTENTION_PASSES, ELEMENTWISE_COLUMNS, GEMM_COLUMNS,
                                        LAUNCH_COLUMNS)
from moesim.cost import gemm as gg
from moesim.cost.attention import BACKWARD_FLOP_RATIO
from moesim.cost.compute import keys_per_query
from moesim.spec.bounds import MIN_EFFICIENCY
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError

# one CPU thread's GEMM blocking is not a GPU's output tile: square tiles from none (1 x 1) to a cache block, the one
# that predicts the measured shapes best wins (a single tile each: a second one rarely lowers the error)
CPU_TILE_CANDIDATES: tuple[tuple[tuple[int, int], ...], ...] = (((1, 1),), ((8, 8),), ((16, 16),), ((32, 32),),
                                                                ((64, 64),))
SEARCH_MAX = 10.0  # efficiencies above 1 are searched too, to report how far past the bound the optimum lies
LAUNCH_OP = "add_scalar"


@dataclass(frozen=True)
class EfficiencyFit:
    efficiency: float  # clipped to [MIN_EFFICIENCY, 1]
    raw: float  # the optimum before clipping
    mape: float  # at `efficiency`, fraction
    samples: int

    @property
    def clipped(self) -> bool:
        """The optimum lies past the bounds (by more than the search's resolution)."""
        return abs(self.raw - self.efficiency) > 1e-3 * self.efficiency


@dataclass(frozen=True)
class GemmFit(EfficiencyFit):
    tiles: tuple[tuple[int, int], ...] = ((1, 1),)
    candidates: tuple[tuple[tuple[tuple[int, int], ...], float, float], ...] = ()  # (tiles, efficiency, mape)


@dataclass(frozen=True)
class LaunchFit:
    launch_s: float
    p10_s: float
    p90_s: float
    calls: int
    repeats: int


def minimise_1d(cost, lo: float, hi: float, points: int = 241, rounds: int = 3) -> float:
    """argmin of cost(x) over [lo, hi] (x > 0): a geometric grid, then finer grids around the best point."""
    grid = np.geomspace(lo, hi, points)
    for r in range(rounds + 1):
        values = np.array([cost(x) for x in grid])
        i = int(np.argmin(values))
        if r == rounds:
            return float(grid[i])
        grid = np.linspace(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)], 41)
    raise AssertionError("unreachable")


def gemm_rates(*, dtype: str, peak_flop_per_s: float, sm_count: int, hbm_bytes_per_s: float,
               hbm_efficiency: float, gemm_efficiency: float, tiles) -> gg.GemmRates:
    """cost/gemm.py's gemm_rates for these numbers: it reads only these fields of a profile, so a stand-in with
    them (no fp8 ratio: the calibrated dtype is what was measured) gives exactly what a profile with them gives."""
    dt = Dtype(dtype)
    profile = SimpleNamespace(
        efficiency=SimpleNamespace(gemm=gemm_efficiency, fp8_matmul_ratio=1.0, gemm_tiles=tuple(map(tuple, tiles)),
                                   hbm=hbm_efficiency),
        gpu=SimpleNamespace(peak=lambda d: peak_flop_per_s, sm_count=int(sm_count),
                            hbm_bandwidth_bytes_per_s=hbm_bytes_per_s))
    return gg.gemm_rates(profile, dt, linear=dt is not Dtype.FP8)  # type: ignore[arg-type]


def predict_gemm_s(samples: pd.DataFrame, rates: gg.GemmRates, launch_s: float) -> np.ndarray:
    """Seconds the simulator charges for each gemm.csv row: the shape model's time plus one launch."""
    m, n, k = (samples[c].to_numpy(dtype=np.float64) for c in ("m", "n", "k"))
    return gg.gemm_time_s(m, n, k, rates) + launch_s


TEXT_COLUMNS = ("op", "dtype", "pass", "backend")


def _check(samples: pd.DataFrame, columns, name: str) -> None:
    """The columns are there, there are rows, and every number is a finite number (times > 0)."""
    _require_columns(samples, columns, name)
    if samples.empty:
        raise SpecError(name, "no rows", "at least one measured sample")
    for column in columns:
        if column in TEXT_COLUMNS:
            continue
        values = pd.to_numeric(samples[column], errors="coerce").to_numpy(dtype=np.float64)
        positive = column == "time_median_s"
        if not np.all(np.isfinite(values) & ((values > 0) if positive else True)):
            raise SpecError(f"{name}.{column}", samples[column].tolist(),
                            "finite times > 0 s" if positive else "finite numbers")


def fit_gemm(samples: pd.DataFrame, *, dtype: str, peak_flop_per_s: float, sm_count: int, hbm_bytes_per_s: float,
             hbm_efficiency: float, launch_s: float, tile_candidates) -> GemmFit:
    """gemm_efficiency (and the tile set among tile_candidates) that minimise the MAPE over the gemm.csv rows
    of `dtype`."""
    _check(samples, GEMM_COLUMNS, "gemm.csv")
    rows = samples[samples["dtype"] == dtype]
    if rows.empty:
        raise SpecError("gemm.csv.dtype", sorted(set(samples["dtype"])), f"samples of the calibrated dtype {dtype}")
    measured = rows["time_median_s"].to_numpy(dtype=np.float64)

    def rates(tiles, eff):
        return gemm_rates(dtype=dtype, peak_flop_per_s=peak_flop_per_s, sm_count=sm_count,
                          hbm_bytes_per_s=hbm_bytes_per_s, hbm_efficiency=hbm_efficiency, gemm_efficiency=eff,
                          tiles=tiles)

    fits = []
    for tiles in tile_candidates:
        tiles = tuple((int(r), int(c)) for r, c in tiles)
        raw = minimise_1d(lambda e: _mape(predict_gemm_s(rows, rates(tiles, e), launch_s), measured),  # noqa: B023
                          MIN_EFFICIENCY, SEARCH_MAX)
        eff = float(np.clip(raw, MIN_EFFICIENCY, 1.0))
        fits.append((tiles, eff, raw, _mape(predict_gemm_s(rows, rates(tiles, eff), launch_s), measured)))
    tiles, eff, raw, mape = min(fits, key=lambda f: f[3])
    return GemmFit(efficiency=eff, raw=raw, mape=mape, samples=len(rows), tiles=tiles,
                   candidates=tuple((t, e, err) for t, e, _, err in fits))


def predict_elementwise_s(samples: pd.DataFrame, hbm_bytes_per_s: float, efficiency: float,
                          launch_s: float) -> np.ndarray:
    return launch_s + samples["bytes"].to_numpy(dtype=np.float64) / (hbm_bytes_per_s * efficiency)


def fit_hbm_efficiency(samples: pd.DataFrame, *, hbm_bytes_per_s: float, launch_s: float) -> EfficiencyFit:
    """The fraction of hbm_bytes_per_s that best predicts the element-wise rows (MAPE)."""
    _check(samples, ELEMENTWISE_COLUMNS, "elementwise.csv")
    if not hbm_bytes_per_s > 0:
        raise SpecError("hbm_bandwidth_GBps", hbm_bytes_per_s, "a bandwidth > 0 to take the efficiency against")
    measured = samples["time_median_s"].to_numpy(dtype=np.float64)
    raw = minimise_1d(lambda e: _mape(predict_elementwise_s(samples, hbm_bytes_per_s, e, launch_s), measured),
                      MIN_EFFICIENCY, SEARCH_MAX)
    eff = float(np.clip(raw, MIN_EFFICIENCY, 1.0))
    return EfficiencyFit(efficiency=eff, raw=raw, samples=len(samples),
                         mape=_mape(predict_elementwise_s(samples, hbm_bytes_per_s, eff, launch_s), measured))


def fit_launch(samples: pd.DataFrame) -> LaunchFit:
    """The per-call time of the tiny op (the median of its rows' medians when it was measured more than once)."""
    _check(samples, LAUNCH_COLUMNS, "launch.csv")
    rows = samples[samples["op"] == LAUNCH_OP]
    if rows.empty:
        raise SpecError("launch.csv.op", sorted(set(samples["op"])), f"a row of op {LAUNCH_OP}")
    return LaunchFit(launch_s=float(rows["time_median_s"].median()), p10_s=float(rows["time_p10_s"].median()),
                     p90_s=float(rows["time_p90_s"].median()), calls=int(rows["calls"].max()),
                     repeats=int(rows["repeats"].max()))


def attention_forward_flop(batch, heads, seq_len, head_dim):
    """FLOPs of one causal attention core forward, as moesim.cost.compute.attention_flop counts them (and
    FlashAttention's benchmark): 2·(d_qk + d_v) per query head and unmasked (query, key) pair, seq_len/2 keys per
    query (keys_per_query), i.e. 4·batch·heads·head_dim·seq_len²/2. Vectorised."""
    seq = np.asarray(seq_len, dtype=np.float64)
    tokens = np.asarray(batch, dtype=np.float64) * seq
    return 2.0 * tokens * np.asarray(heads, dtype=np.float64) * (2.0 * np.asarray(head_dim, dtype=np.float64)) * \
        keys_per_query(seq, None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AttentionFit:
    """The attention efficiency table measured (rows per head_dim, columns per seq_len), clamped into
    [MIN_EFFICIENCY, 1]; raw_* before clamping (inf: forward_backward was not slower than forward)."""

    seq_lens: tuple[int, ...]
    head_dims: tuple[int, ...]
    forward: tuple[tuple[float, ...], ...]
    backward: tuple[tuple[float, ...], ...]
    raw_forward: tuple[tuple[float, ...], ...]
    raw_backward: tuple[tuple[float, ...], ...]
    forward_flop_per_s: tuple[tuple[float, ...], ...]  # achieved, the same layout
    backward_flop_per_s: tuple[tuple[float, ...], ...]
    samples: int  # rows of attention.csv used
    backends: tuple[str, ...]  # the SDPA implementations the rows name

    @property
    def clamped(self) -> tuple[tuple[str, int, int, float], ...]:
        """(pass, head_dim, seq_len, raw efficiency) of every point clamped into [MIN_EFFICIENCY, 1]."""
        out = []
        for name, raw, kept in (("forward", self.raw_forward, self.forward),
                                ("backward", self.raw_backward, self.backward)):
            for d, raw_row, row in zip(self.head_dims, raw, kept):
                for s, r, e in zip(self.seq_lens, raw_row, row):
                    if not abs(r - e) <= 1e-9 * e:
                        out.append((name, d, s, r))
        return tuple(out)


def fit_attention(samples: pd.DataFrame, *, dtype: str, peak_flop_per_s: float) -> AttentionFit:
    """The efficiency table of the attention.csv rows of `dtype`: per (head_dim, seq_len), the forward's
    convention FLOPs over (forward time x peak) and the backward's (2.5x) over ((forward_backward - forward) time x
    peak). A point measured more than once (several rows, or several batch x heads) takes the median efficiency.
    Every seq_len x head_dim of the grid must have both passes."""
    _check(samples, ATTENTION_COLUMNS, "attention.csv")
    if not peak_flop_per_s > 0:
        raise SpecError("peak_dense_TFLOPs", peak_flop_per_s, "a peak > 0 to take the efficiency against")
    rows = samples[samples["dtype"] == dtype]
    if rows.empty:
        raise SpecError("attention.csv.dtype", sorted(set(samples["dtype"])),
                        f"samples of the calibrated dtype {dtype}")
    unknown = sorted(set(rows["pass"]) - set(ATTENTION_PASSES))
    if unknown:
        raise SpecError("attention.csv.pass", unknown, f"one of {', '.join(ATTENTION_PASSES)}")
    shape = ["head_dim", "seq_len", "batch", "heads"]
    flop = attention_forward_flop(*(rows[c].to_numpy(dtype=np.float64) for c in ("batch", "heads", "seq_len",
                                                                                     "head_dim")))
    expected = flop * np.where(rows["pass"] == "forward", 1.0, 1.0 + BACKWARD_FLOP_RATIO)
    wrong = ~np.isclose(rows["flop"].to_numpy(dtype=np.float64), expected, rtol=1e-6, atol=0.0)
    if wrong.any():
        bad = rows[wrong].iloc[0]
        raise SpecError("attention.csv.flop", float(bad["flop"]),
                        f"FlashAttention's convention for {bad['pass']} at batch {bad['batch']}, heads "
                        f"{bad['heads']}, seq_len {bad['seq_len']}, head_dim {bad['head_dim']}: "
                        f"{float(expected[wrong][0]):.9g} (forward 4*b*h*d*s^2/2, forward_backward 3.5x)")
    times = rows.groupby([*shape, "pass"], sort=True)["time_median_s"].median().unstack("pass")
    points = rows.groupby(shape, sort=True).size().index
    seq_lens = tuple(int(s) for s in sorted(set(rows["seq_len"])))
    head_dims = tuple(int(d) for d in sorted(set(rows["head_dim"])))
    eff: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}
    for d, s, b, h in points:
        t_f = times.at[(d, s, b, h), "forward"] if "forward" in times else np.nan
        t_fb = times.at[(d, s, b, h), "forward_backward"] if "forward_backward" in times else np.nan
        if not (np.isfinite(t_f) and np.isfinite(t_fb)):
            continue
        f = float(attention_forward_flop(b, h, s, d))
        t_b = t_fb - t_f
        back = BACKWARD_FLOP_RATIO * f / t_b if t_b > 0 else np.inf
        eff.setdefault((int(d), int(s)), []).append((f / t_f / peak_flop_per_s, back / peak_flop_per_s,
                                                     f / t_f, back))
    missing = [f"head_dim {d} seq_len {s}" for d in head_dims for s in seq_lens if (d, s) not in eff]
    if missing:
        raise SpecError("attention.csv", missing, "a full grid: both passes (forward, forward_backward) at every "
                                                  "seq_len x head_dim measured")

    def table(i: int, clamp: bool) -> tuple[tuple[float, ...], ...]:
        out = []
        for d in head_dims:
            row = [float(np.median([p[i] for p in eff[(d, s)]])) for s in seq_lens]
            out.append(tuple(float(np.clip(v, MIN_EFFICIENCY, 1.0)) if clamp else v for v in row))
        return tuple(out)
    return AttentionFit(seq_lens=seq_lens, head_dims=head_dims, forward=table(0, True), backward=table(1, True),
                        raw_forward=table(0, False), raw_backward=table(1, False),
                        forward_flop_per_s=table(2, False), backward_flop_per_s=table(3, False), samples=len(rows),
                        backends=tuple(sorted(set(rows["backend"].astype(str)))))


@dataclass(frozen=True)
class ComputeSamples:
    """The compute CSVs of one samples directory and how they were taken: meta holds date, device, sm_count,
    threads_per_rank (CPU), mode, seconds (what host.json's "compute" records) and, under "attention", the
    attention measurement's own date, device, mode and seconds where it was taken apart from the rest. attention:
    attention.csv, or None where the directory has none (a base profile's table stays then)."""

    gemm: pd.DataFrame
    elementwise: pd.DataFrame
    launch: pd.DataFrame
    meta: dict
    attention: pd.DataFrame | None = None
