"""Synthetic compute samples (gemm.csv, elementwise.csv, launch.csv rows) made by the simulator's own models, so a
fit must give back the parameters that made them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from moesim.calibration.compute_fit import ComputeSamples
from moesim.calibration.samples import ELEMENTWISE_COLUMNS, GEMM_COLUMNS, LAUNCH_COLUMNS
from moesim.cost import gemm as gg

CPU_SHAPES = tuple(itertools.product((1, 4, 16, 64, 200, 1024), (128, 500, 2048), (32, 128, 512, 2048)))
GPU_SHAPES = tuple(itertools.product((1, 16, 128, 512, 2048, 8192), (1024, 4096, 16384), (256, 1024, 4096, 16384)))
SIZES = tuple(s << 20 for s in (1, 4, 16, 64, 256))


def _noisy(times: np.ndarray, noise: float, rng: np.random.Generator | None) -> np.ndarray:
    if not noise:
        return times
    return times * np.exp(rng.normal(0.0, noise, size=times.shape))


def gemm_samples(rates: gg.GemmRates, launch_s: float, *, dtype: str, shapes=CPU_SHAPES, noise: float = 0.0,
                 rng: np.random.Generator | None = None) -> pd.DataFrame:
    m, n, k = (np.array(c, dtype=np.float64) for c in zip(*shapes))
    t = _noisy(gg.gemm_time_s(m, n, k, rates) + launch_s, noise, rng)
    return pd.DataFrame({"dtype": dtype, "m": m.astype(int), "n": n.astype(int), "k": k.astype(int),
                         "flop": 2.0 * m * n * k, "time_median_s": t, "time_p10_s": 0.95 * t, "time_p90_s": 1.05 * t,
                         "calls": 10, "repeats": 5})[list(GEMM_COLUMNS)]


def elementwise_samples(bandwidth_bytes_per_s: float, launch_s: float, *, dtype: str = "fp32", sizes=SIZES,
                        noise: float = 0.0, rng: np.random.Generator | None = None) -> pd.DataFrame:
    rows = []
    for size in sizes:
        for op, tensors in (("copy", 2), ("add", 3)):
            moved = float(tensors * size)
            t = float(_noisy(np.array([launch_s + moved / bandwidth_bytes_per_s]), noise, rng)[0])
            rows.append((op, dtype, size // 4, moved, t, 0.95 * t, 1.05 * t, moved / t / 1e9, 3, 5))
    return pd.DataFrame(rows, columns=list(ELEMENTWISE_COLUMNS))


def launch_samples(launch_s: float, dtype: str = "fp32") -> pd.DataFrame:
    return pd.DataFrame([("add_scalar", dtype, launch_s, 0.9 * launch_s, 1.2 * launch_s, 1000, 10)],
                        columns=list(LAUNCH_COLUMNS))


def compute_samples(rates: gg.GemmRates, launch_s: float, hbm_bytes_per_s: float, *, dtype: str = "fp32",
                    shapes=CPU_SHAPES, device: str = "synthetic CPU", kind: str = "cpu") -> ComputeSamples:
    """All three files of a device whose GEMMs, element-wise kernels and launches follow `rates` exactly
    (hbm_bytes_per_s: the bandwidth the element-wise kernels achieve)."""
    meta = {"date": "2026-12-01", "device": device, "device_kind": kind, "sm_count": rates.sm_count,
            "threads_per_rank": rates.sm_count if kind == "cpu" else None, "mode": "full", "seconds": 1.0}
    return ComputeSamples(gemm_samples(rates, launch_s, dtype=dtype, shapes=shapes),
                          elementwise_samples(hbm_bytes_per_s, launch_s, dtype=dtype), launch_samples(launch_s, dtype),
                          meta)


def write_compute_samples(directory, samples: ComputeSamples) -> None:
    for frame, name in ((samples.gemm, "gemm.csv"), (samples.elementwise, "elementwise.csv"),
                        (samples.launch, "launch.csv")):
        frame.to_csv(directory / name, index=False)
