"""Has this machine changed speed since its profile was calibrated? Re-time some of the profile's own expert FFN
samples now, the same way (moesim.calibration.kernels.measure_expert_ffn), and compare.

A profile is a measurement of one machine at one time. A shared virtual machine's speed drifts by tens of percent
over an hour (its neighbours' load); an error against a measurement taken in another such hour is partly the
drift, not the model. `moesim accuracy --execute` runs this before and after its matrix and prints the ratios
beside its errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.calibration.compute import CPU_MIN_CACHE_BYTES
from moesim.calibration.kernels import KernelShape, measure_expert_ffn
from moesim.calibration.samples import EXPERT_FFN_COLUMNS, EXPERT_FFN_FILE
from moesim.spec.errors import SpecError

DRIFT_TOKENS = (16, 64)  # tokens per expert: rows of a few milliseconds, what the executed matrix's experts see


@dataclass(frozen=True)
class SpeedCheck:
    ratio: float  # median over the re-timed samples of time now / time at calibration (> 1: slower now)
    samples: int


def profile_samples(profile_path: Path, samples_dir: str) -> pd.DataFrame:
    """The profile's expert_ffn.csv (its samples directory is relative to the profile file)."""
    path = profile_path.parent / samples_dir / EXPERT_FFN_FILE
    if not samples_dir or not path.is_file():
        raise SpecError(str(path), "no such file", "a profile calibrated with the expert FFN samples "
                                                   "(`moesim calibrate`), to check the machine's speed against")
    frame = pd.read_csv(path)
    missing = [c for c in EXPERT_FFN_COLUMNS if c not in frame.columns]
    if missing:
        raise SpecError(str(path), missing, f"columns {', '.join(EXPERT_FFN_COLUMNS)}")
    return frame


def calibrated_cache_bytes(profile_path: Path, samples_dir: str) -> int:
    """What the calibration's operands rotated through and its FFN timings flushed (host.json's compute
    "cache_bytes"), so that the re-timing flushes the same; 64 MiB for calibrations that did not record it."""
    path = profile_path.parent / samples_dir / "host.json"
    try:
        value = json.loads(path.read_text()).get("compute", {}).get("cache_bytes")
    except (OSError, ValueError, AttributeError):
        value = None
    return int(value) if isinstance(value, int) and value > 0 else CPU_MIN_CACHE_BYTES


def speed_against(samples: pd.DataFrame, shapes: list[tuple[int, int]], flush_bytes: int,
                  tokens: tuple[int, ...] = DRIFT_TOKENS, repeats: int = 10, warmup: int = 3) -> SpeedCheck:
    """Re-time the CPU samples of `samples` at (hidden, ffn) `shapes` x `tokens` on this process (one thread, as
    calibrated) and compare each with its calibrated median."""
    import torch  # noqa: PLC0415

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = samples[(samples["impl"] == "torch_loop") & (samples["dtype"] == "fp32")]
        wanted = cpu[cpu[["hidden", "ffn"]].apply(tuple, axis=1).isin(shapes) & cpu["tokens_per_expert"].isin(tokens)]
        if wanted.empty:
            raise SpecError(EXPERT_FFN_FILE, sorted(shapes), "fp32 torch_loop samples of these shapes at "
                                                            f"{', '.join(map(str, tokens))} tokens per expert")
        kernel_shapes = tuple(KernelShape(int(h), int(f), int(e)) for h, f, e in
                              wanted[["hidden", "ffn", "num_experts"]].drop_duplicates().itertuples(index=False))
        now = measure_expert_ffn(kernel_shapes, tokens, "fp32", "cpu", repeats, warmup, flush_bytes=flush_bytes)
    finally:
        torch.set_num_threads(threads)
    key = ["hidden", "ffn", "num_experts", "tokens_per_expert", "pass"]
    both = wanted.merge(now, on=key, suffixes=("_then", "_now"))
    ratios = both["time_median_s_now"].to_numpy() / both["time_median_s_then"].to_numpy()
    return SpeedCheck(float(np.median(ratios)), len(ratios))
