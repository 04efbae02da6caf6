"""Calibration fits: recover known parameters from synthetic samples made by the models themselves (+2 % noise),
log-size interpolation, and the validators used when a profile is loaded."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from moesim.calibration.fit import (AlphaBeta, ExpertKernelFit, check_efficiency_table, check_monotone_sizes,
                                    collective_tables, fit_alpha_beta, fit_expert_kernel, interpolate_busbw,
                                    measured_efficiency)
from moesim.calibration.samples import BUSBW_FACTOR, COLLECTIVE_COLUMNS, KERNEL_COLUMNS
from moesim.spec.errors import SpecError

PEAK = 989e12  # H100 bf16 dense, FLOP/s
TILE = 128
T0_S = 6e-6
EFF_MAX = 0.72
HIDDEN, FFN = 2048, 1408
FLOP_PER_ROW = 2.0 * HIDDEN * FFN * 3  # gated FFN: three GEMMs
NOISE = 0.02


def model_time_s(counts: np.ndarray) -> float:
    """The fitted model's own formula, written out: per expert t0 + padded work at eff_max."""
    counts = np.asarray(counts)
    padded = np.ceil(counts / TILE) * TILE
    return float(np.sum(np.where(counts > 0, T0_S + padded * FLOP_PER_ROW / (PEAK * EFF_MAX), 0.0)))


def kernel_samples(rng: np.random.Generator, skewed: bool = False) -> pd.DataFrame:
    rows = []
    sizes = [1, 3, 8, 16, 32, 64, 100, 128, 129, 200, 256, 384, 500, 512, 1000, 1024, 2048, 3000, 4096, 8192]
    for experts in (1, 4, 8, 32):
        for m in sizes:
            for dist in ("even", "skewed") if skewed else ("even",):
                if dist == "even":
                    counts = np.full(experts, m)
                else:  # half the experts get 1.5x the mean, half 0.5x: same mean, different padding
                    counts = np.where(np.arange(experts) % 2 == 0, math.ceil(1.5 * m), m // 2)
                t = model_time_s(counts) * rng.normal(1.0, NOISE)
                rows.append(dict(impl="triton", dtype="bf16", hidden=HIDDEN, ffn=FFN, num_experts=experts,
                                 distribution=dist, tokens_per_expert=float(counts.mean()),
                                 flop=FLOP_PER_ROW * counts.sum(), time_median_s=t, time_p10_s=0.98 * t,
                                 time_p90_s=1.02 * t, repeats=20))
    return pd.DataFrame(rows, columns=list(KERNEL_COLUMNS))


@pytest.fixture(scope="module")
def kernel_fit() -> ExpertKernelFit:
    return fit_expert_kernel(kernel_samples(np.random.default_rng(1234)), PEAK, TILE)


# ------------------------------------------------------------------------------------------------ expert kernels

def test_fit_recovers_overhead_and_saturated_efficiency(kernel_fit):
    assert kernel_fit.t0_s == pytest.approx(T0_S, rel=0.10)
    assert kernel_fit.eff_max == pytest.approx(EFF_MAX, rel=0.03)
    assert kernel_fit.flop_per_row == pytest.approx(FLOP_PER_ROW)
    assert (kernel_fit.impl, kernel_fit.dtype, kernel_fit.hidden, kernel_fit.ffn) == ("triton", "bf16", HIDDEN, FFN)
    assert kernel_fit.rel_error < 0.03  # ~ the 2 % noise: the model fits its own data
    assert kernel_fit.skewed_rel_error is None and kernel_fit.num_skewed == 0


@pytest.mark.parametrize("seed", [0, 7, 99])
def test_fit_recovery_is_not_one_lucky_seed(seed):
    fit = fit_expert_kernel(kernel_samples(np.random.default_rng(seed)), PEAK, TILE)
    assert fit.t0_s == pytest.approx(T0_S, rel=0.10)
    assert fit.eff_max == pytest.approx(EFF_MAX, rel=0.03)


def test_noise_free_samples_are_fitted_exactly():
    samples = kernel_samples(np.random.default_rng(0))
    exact = samples.copy()
    exact["time_median_s"] = [model_time_s(np.full(e, int(m)))
                              for e, m in zip(exact["num_experts"], exact["tokens_per_expert"])]
    fit = fit_expert_kernel(exact, PEAK, TILE)
    assert fit.t0_s == pytest.approx(T0_S, rel=1e-9)
    assert fit.eff_max == pytest.approx(EFF_MAX, rel=1e-9)
    assert fit.rel_error < 1e-9


def test_predict_handles_uneven_counts_and_batch_shapes(kernel_fit):
    counts = np.array([[0, 1, 128, 129], [256, 256, 256, 256]])  # [2 batches, E=4]
    t = kernel_fit.predict_s(counts)
    assert t.shape == (2,)
    per_row_s = kernel_fit.flop_per_row / (PEAK * kernel_fit.eff_max)
    # the empty expert costs nothing; 1 and 128 rows cost one tile, 129 rows two
    assert t[0] == pytest.approx(3 * kernel_fit.t0_s + (128 + 128 + 256) * per_row_s)
    assert t[1] == pytest.approx(4 * (kernel_fit.t0_s + 256 * per_row_s))


def test_skewed_rows_are_reported_not_fitted():
    rng = np.random.default_rng(5)
    samples = kernel_samples(rng, skewed=True)
    fit = fit_expert_kernel(samples, PEAK, TILE)
    even_only = fit_expert_kernel(samples[samples["distribution"] == "even"], PEAK, TILE)
    assert (fit.t0_s, fit.eff_max) == pytest.approx((even_only.t0_s, even_only.eff_max))
    assert fit.num_even == fit.num_skewed == len(samples) // 2
    # the mean-only prediction misses the extra padding of the skewed experts, so it errs more than the noise
    assert fit.skewed_rel_error is not None and fit.skewed_rel_error > fit.rel_error


def test_efficiency_table_collapses_at_small_m_and_past_a_tile(kernel_fit):
    table = dict(kernel_fit.efficiency_table([1, 16, TILE, TILE + 1, 4096]))
    assert table[1] < 0.05 * table[4096]  # overhead plus a whole tile of padding for one row
    assert table[TILE + 1] < 0.8 * table[TILE]  # 129 rows pay for 256
    assert table[1] < table[16] < table[TILE]
    assert 0.9 * kernel_fit.eff_max < table[4096] < kernel_fit.eff_max  # t0 nearly amortised, never beaten
    check_efficiency_table(kernel_fit.efficiency_table([1, 16, TILE, TILE + 1, 4096]), "t")


def test_measured_efficiency_is_flop_over_time_times_peak():
    samples = kernel_samples(np.random.default_rng(3)).iloc[:5]
    eff = measured_efficiency(samples, PEAK)
    assert list(eff.index) == list(samples.index)
    np.testing.assert_allclose(eff, samples["flop"] / (samples["time_median_s"] * PEAK))


def test_fit_rejects_bad_inputs():
    samples = kernel_samples(np.random.default_rng(0))
    mixed = samples.copy()
    mixed.loc[mixed.index[:3], "impl"] = "torch_loop"
    with pytest.raises(SpecError) as err:
        fit_expert_kernel(mixed, PEAK, TILE)
    assert err.value.key == "samples"
    one_size = samples[samples["tokens_per_expert"] == 64]
    with pytest.raises(SpecError, match="distinct sizes"):
        fit_expert_kernel(one_size, PEAK, TILE)
    with pytest.raises(SpecError):
        fit_expert_kernel(samples.drop(columns=["flop"]), PEAK, TILE)
    with pytest.raises(SpecError):
        fit_expert_kernel(samples, -1.0, TILE)


def test_eff_max_is_capped_at_one():
    samples = kernel_samples(np.random.default_rng(0))
    faster = samples.assign(time_median_s=samples["time_median_s"] * EFF_MAX / 1.5)  # "150 % of peak"
    fit = fit_expert_kernel(faster, PEAK, TILE)
    assert 0 < fit.eff_max <= 1.0 and fit.t0_s >= 0


# --------------------------------------------------------------------------------------------------- collectives

ALPHA_S = 25e-6
BW = 370e9  # bytes/s


def test_alpha_beta_recovers_alpha_and_bandwidth():
    rng = np.random.default_rng(42)
    nbytes = np.repeat(2.0 ** np.arange(10, 33), 3)  # 1 KiB .. 4 GiB, three repeats
    t = (ALPHA_S + nbytes / BW) * rng.normal(1.0, NOISE, nbytes.size)
    fit = fit_alpha_beta(nbytes, t)
    assert isinstance(fit, AlphaBeta)
    assert fit.alpha_s == pytest.approx(ALPHA_S, rel=0.05)
    assert fit.bandwidth_bytes_per_s == pytest.approx(BW, rel=0.05)
    assert fit.rel_error < 0.03


def test_alpha_beta_keeps_alpha_non_negative_and_rejects_degenerate_input():
    nbytes = 2.0 ** np.arange(16, 26)
    fit = fit_alpha_beta(nbytes, nbytes / BW - 1e-7)  # the unconstrained intercept is negative
    assert fit.alpha_s == 0.0 and fit.bandwidth_bytes_per_s > 0
    with pytest.raises(SpecError):
        fit_alpha_beta(np.array([1024.0, 1024.0]), np.array([1e-5, 1e-5]))  # one size
    with pytest.raises(SpecError):
        fit_alpha_beta(nbytes, np.full(nbytes.size, 1e-5)[::-1] * np.linspace(2, 1, nbytes.size))  # shrinking
    with pytest.raises(SpecError):
        fit_alpha_beta(nbytes, -np.ones(nbytes.size))


def collective_samples(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for op, tier, ranks, alpha, bw in (("all_to_all", "intra_node", 8, 20e-6, 300e9),
                                       ("all_reduce", "inter_node", 4, 40e-6, 40e9)):
        for nbytes in 2 ** np.arange(12, 31):
            for _ in range(3):  # repeats of one size: the table keeps their median
                # the mean is the time (a stalled call counts); the median, half of it here, must not be fitted
                t = (alpha + nbytes / bw) * rng.normal(1.0, NOISE)
                algbw = nbytes / t / 1e9
                rows.append(dict(op=op, tier=tier, ranks=ranks, bytes=int(nbytes), time_mean_s=t, time_median_s=0.5 * t,
                                 time_p10_s=t, time_p90_s=t, algbw_GBps=algbw,
                                 busbw_GBps=algbw * BUSBW_FACTOR[op](ranks), repeats=20, src=-1, dst=-1))
    return pd.DataFrame(rows, columns=list(COLLECTIVE_COLUMNS))


def test_collective_tables_fit_each_op_and_tier():
    samples = collective_samples(np.random.default_rng(11))
    fits = collective_tables(samples)
    assert set(fits) == {("all_to_all", "intra_node"), ("all_reduce", "inter_node")}
    a2a = fits[("all_to_all", "intra_node")]
    assert a2a.ranks == 8
    assert a2a.alpha_beta.alpha_s == pytest.approx(20e-6, rel=0.05)
    assert a2a.alpha_beta.bandwidth_bytes_per_s == pytest.approx(300e9, rel=0.05)
    assert a2a.bus_bandwidth_bytes_per_s == pytest.approx(a2a.alpha_beta.bandwidth_bytes_per_s * 7 / 8)
    sizes = [b for b, _ in a2a.table]
    assert sizes == sorted(set(sizes)) and len(sizes) == 19  # duplicates merged
    one = samples[(samples["op"] == "all_to_all") & (samples["bytes"] == 2 ** 20)]
    assert a2a.busbw_GBps(2 ** 20) == pytest.approx(one["busbw_GBps"].median())
    ar = fits[("all_reduce", "inter_node")]
    assert ar.alpha_beta.bandwidth_bytes_per_s == pytest.approx(40e9, rel=0.05)
    assert ar.table[-1][1] == pytest.approx(40 * 2 * 3 / 4, rel=0.05)  # busbw -> bw x 2(n-1)/n at large sizes


def test_collective_tables_keep_the_largest_group_and_name_bad_tables():
    samples = collective_samples(np.random.default_rng(2))
    smaller = samples[samples["op"] == "all_to_all"].assign(ranks=2, busbw_GBps=1.0)
    fits = collective_tables(pd.concat([samples, smaller], ignore_index=True))
    assert fits[("all_to_all", "intra_node")].ranks == 8
    assert all(v > 1.0 for _, v in fits[("all_to_all", "intra_node")].table[5:])
    broken = samples.copy()
    broken.loc[broken["op"] == "all_reduce", "busbw_GBps"] = -1.0
    with pytest.raises(SpecError) as err:
        collective_tables(broken)
    assert err.value.key == "collectives.all_reduce.inter_node"


def test_interpolation_exact_at_points_log_linear_between_clamped_outside():
    table = [(1e3, 1.0), (1e5, 11.0), (1e6, 20.0)]
    for nbytes, busbw in table:
        assert interpolate_busbw(table, nbytes) == pytest.approx(busbw)
    assert interpolate_busbw(table, 1e4) == pytest.approx(6.0)  # halfway in log between 1e3 and 1e5
    assert interpolate_busbw(table, math.sqrt(1e5 * 1e6)) == pytest.approx(15.5)
    assert interpolate_busbw(table, 1.0) == 1.0 and interpolate_busbw(table, 0.0) == 1.0
    assert interpolate_busbw(table, 1e12) == 20.0
    np.testing.assert_allclose(interpolate_busbw(table, np.array([1e3, 1e4, 1e9])), [1.0, 6.0, 20.0])


# ---------------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("table", [
    [],
    [(1024, 10.0), (512, 20.0)],  # decreasing sizes
    [(1024, 10.0), (1024, 20.0)],  # repeated size
    [(1024, -1.0), (2048, 20.0)],  # negative bandwidth
    [(1024, 0.0)],
    [(1024, float("nan"))],
    [(1024, float("inf"))],
    [(0, 1.0), (1024, 2.0)],  # no log of 0 bytes
    [(-5, 1.0)],
    [(1024,)],  # not a pair
    None,
])
def test_check_monotone_sizes_rejects(table):
    with pytest.raises(SpecError) as err:
        check_monotone_sizes(table, "network.collectives.all_to_all.intra_node")
    assert err.value.key == "network.collectives.all_to_all.intra_node"


def test_check_monotone_sizes_accepts_a_good_table():
    check_monotone_sizes([(1024, 1.5), (4096, 10.0), (1 << 30, 370.0)], "k")
    check_monotone_sizes(((8.0, 2e-5),), "k")


@pytest.mark.parametrize("points", [
    [],
    [(128, 0.5), (64, 0.6)],
    [(128, 0.5), (128, 0.6)],
    [(128, 0.0)],
    [(128, 1.2)],
    [(128, -0.1)],
    [(0, 0.5)],
    [(128, float("nan"))],
])
def test_check_efficiency_table_rejects(points):
    with pytest.raises(SpecError) as err:
        check_efficiency_table(points, "compute.grouped_gemm.efficiency")
    assert err.value.key == "compute.grouped_gemm.efficiency"


def test_check_efficiency_table_accepts_a_good_table():
    check_efficiency_table([(1, 0.01), (128, 0.4), (4096, 1.0)], "k")
