"""Expert GEMM timing on the CPU (torch implementations; the Triton kernel is timed only on a GPU)."""

import numpy as np
import pytest

from moesim.calibration.kernels import KernelShape, measure_kernels, measure_memory_bandwidth, token_counts
from moesim.calibration.samples import KERNEL_COLUMNS


@pytest.mark.parametrize("dist", ["even", "skewed"])
def test_token_counts_keep_the_total(dist):
    counts = token_counts(8, 37, dist)
    assert counts.sum() == 8 * 37 and (counts >= 0).all()
    assert (len(set(counts)) == 1) == (dist == "even")


def test_measure_kernels_on_cpu():
    df = measure_kernels([KernelShape(64, 128, 4)], [1, 16], "fp32", "cpu", repeats=2, warmup=1)
    assert tuple(df.columns) == KERNEL_COLUMNS
    assert set(df["impl"]) == {"torch_loop", "torch_matmul"}
    assert len(df) == 2 * (2 + 1)  # per size: loop even + loop skewed + one dense ceiling
    assert (df["time_median_s"] > 0).all() and (df["time_p10_s"] <= df["time_p90_s"]).all()
    assert np.allclose(df["flop"], 2.0 * 4 * df["tokens_per_expert"] * 64 * 128)
    assert measure_memory_bandwidth("cpu", nbytes=1 << 20, repeats=2) > 0
