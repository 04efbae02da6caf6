"""Fit the profile's compute keys to the samples moesim/calibration/compute.py measured. Pure numpy/pandas; the
GEMM model is moesim/cost/gemm.py's own functions, called with the candidate parameters.

- `gemm_efficiency` (and `gemm_tiles` where they are fitted): each gemm.csv row is predicted as
  gemm_time_s(m, n, k) + kernel_launch_s, what the simulator charges for one GEMM, and the efficiency is the one
  that minimises the MAPE over all rows (a dense 1-D search: the MAPE is not convex in it). Tile candidates are
  fitted one set at a time and the set with the least MAPE wins.
- `hbm_efficiency`: each elementwise.csv row is predicted as kernel_launch_s + bytes / (hbm bandwidth x
  efficiency), as the simulator charges a memory-bound kernel; the same search.
- `kernel_launch_us`: launch.csv's per-call median (no fit: the error reported is its p10-p90 spread).

Efficiencies are searched in [MIN_EFFICIENCY, 10] and then clipped to the profile's bounds [MIN_EFFICIENCY, 1];
`raw` keeps the unclipped optimum, so a source can say when the bound was hit (a CPU's copy bandwidth measured
on another day than its element-wise kernels can come out above it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd

from moesim.calibration.fit import _mape, _require_columns
from moesim.calibration.samples import ELEMENTWISE_COLUMNS, GEMM_COLUMNS, LAUNCH_COLUMNS
from moesim.cost import gemm as gg
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


def _check(samples: pd.DataFrame, columns, name: str) -> None:
    """The columns are there, there are rows, and every number is a finite number (times > 0)."""
    _require_columns(samples, columns, name)
    if samples.empty:
        raise SpecError(name, "no rows", "at least one measured sample")
    for column in columns:
        if column in ("op", "dtype"):
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


@dataclass(frozen=True)
class ComputeSamples:
    """The three compute CSVs of one samples directory and how they were taken: meta holds date, device,
    sm_count, threads_per_rank (CPU), mode, seconds (what host.json's "compute" records)."""

    gemm: pd.DataFrame
    elementwise: pd.DataFrame
    launch: pd.DataFrame
    meta: dict
