"""Synthetic compute samples (gemm.csv, elementwise.csv, launch.csv, attention.csv rows) made by the simulator's own
models, so a fit must give back the parameters that made them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from moesim.calibration.compute_fit import ComputeSamples
from moesim.calibration.samples import ATTENTION_COLUMNS, ELEMENTWISE_COLUMNS, GEMM_COLUMNS, LAUNCH_COLUMNS
from moesim.cost import gemm as gg
from moesim.spec.attention_efficiency import AttentionEfficiencyTable

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


# a CPU-like attention table: every point different, so a transposed or shifted fit shows
CPU_ATTENTION = AttentionEfficiencyTable(
    seq_lens=(128, 256, 512, 1024), head_dims=(32, 64, 128),
    forward_causal=((0.11, 0.17, 0.23, 0.29), (0.13, 0.19, 0.31, 0.37), (0.16, 0.24, 0.41, 0.53)),
    backward_causal=((0.07, 0.12, 0.2, 0.26), (0.09, 0.15, 0.27, 0.33), (0.1, 0.21, 0.36, 0.47)))


def attention_samples(table: AttentionEfficiencyTable, peak_flop_per_s: float, *, dtype: str = "fp32",
                      tokens: int = 1024, hidden: int = 256, backend: str = "flash_attention", noise: float = 0.0,
                      rng: np.random.Generator | None = None) -> pd.DataFrame:
    """attention.csv rows of a device whose causal attention core runs at the table's efficiencies of
    peak_flop_per_s, written out with FlashAttention's FLOP convention (not moesim's functions): forward
    4·b·h·d·s²/2 FLOPs, backward 2.5x, the forward_backward row timing both."""
    rows = []
    for d, fwd_row, bwd_row in zip(table.head_dims, table.forward_causal, table.backward_causal):
        for s, e_f, e_b in zip(table.seq_lens, fwd_row, bwd_row):
            b, h = tokens // s, hidden // d
            flop = 4.0 * b * h * d * s * s / 2.0
            t_f = flop / (peak_flop_per_s * e_f)
            t_fb = t_f + 2.5 * flop / (peak_flop_per_s * e_b)
            for name, f, t in (("forward", flop, t_f), ("forward_backward", 3.5 * flop, t_fb)):
                t = float(_noisy(np.array([t]), noise, rng)[0])
                rows.append((dtype, name, b, h, s, d, f, t, 0.95 * t, 1.05 * t, 1, 5, backend))
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def compute_samples(rates: gg.GemmRates, launch_s: float, hbm_bytes_per_s: float, *, dtype: str = "fp32",
                    shapes=CPU_SHAPES, device: str = "synthetic CPU", kind: str = "cpu",
                    attention: AttentionEfficiencyTable | None = CPU_ATTENTION,
                    attention_peak_flop_per_s: float = 50e9) -> ComputeSamples:
    """All four files of a device whose GEMMs, element-wise kernels and launches follow `rates` exactly
    (hbm_bytes_per_s: the bandwidth the element-wise kernels achieve) and whose attention core runs at `attention`'s
    efficiencies of attention_peak_flop_per_s (None: no attention.csv)."""
    meta = {"date": "2026-12-01", "device": device, "device_kind": kind, "sm_count": rates.sm_count,
            "threads_per_rank": rates.sm_count if kind == "cpu" else None, "mode": "full", "seconds": 1.0}
    return ComputeSamples(gemm_samples(rates, launch_s, dtype=dtype, shapes=shapes),
                          elementwise_samples(hbm_bytes_per_s, launch_s, dtype=dtype), launch_samples(launch_s, dtype),
                          meta, None if attention is None else
                          attention_samples(attention, attention_peak_flop_per_s, dtype=dtype))


def write_compute_samples(directory, samples: ComputeSamples) -> None:
    for frame, name in ((samples.gemm, "gemm.csv"), (samples.elementwise, "elementwise.csv"),
                        (samples.launch, "launch.csv"), (samples.attention, "attention.csv")):
        if frame is not None:
            frame.to_csv(directory / name, index=False)
