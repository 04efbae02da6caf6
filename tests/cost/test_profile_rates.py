"""Achieved rates of a profile's compute keys: they are the simulator's own cost functions read backwards."""

import numpy as np
import pytest

from moesim.cost.attention import attention_core_time_s
from moesim.cost.compute import attention_peak
from moesim.cost.gemm import gemm_rates, gemm_time_s
from moesim.cost.profile_rates import (attention_flop_per_s, elementwise_bytes_per_s, elementwise_bytes_per_s_limit,
                                       gemm_flop_per_s, gemm_flop_per_s_limit)
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError

H100 = load_profile(PROFILE_DIR / "dgx-h100.yaml")


def test_gemm_rate_is_its_flops_over_the_modelled_time_and_grows_to_the_ceiling():
    m = 2 ** np.arange(0, 17)
    rate = gemm_flop_per_s(H100, Dtype.BF16, m, 4096, 4096)
    time_s = gemm_time_s(m, 4096, 4096, gemm_rates(H100, Dtype.BF16))
    assert rate == pytest.approx(2.0 * m * 4096 * 4096 / time_s)
    assert np.all(np.diff(rate) >= 0)
    limit = gemm_flop_per_s_limit(H100, Dtype.BF16)
    assert limit == pytest.approx(989.4e12 * H100.efficiency.gemm)
    assert rate.max() <= limit * (1 + 1e-12) and rate.max() > 0.8 * limit
    launched = gemm_flop_per_s(H100, Dtype.BF16, m, 4096, 4096, with_launch=True)
    assert np.all(launched < rate)
    small = gemm_flop_per_s(H100, Dtype.BF16, 1, 256, 256, with_launch=True)  # a tiny GEMM is launch-bound
    assert small < 0.5 * gemm_flop_per_s(H100, Dtype.BF16, 1, 256, 256)
    assert gemm_flop_per_s(H100, Dtype.BF16, 0, 4096, 4096) == 0.0


def test_fp8_gemms_run_faster_and_a_missing_peak_is_one_line():
    assert gemm_flop_per_s(H100, Dtype.FP8, 8192, 8192, 8192) > gemm_flop_per_s(H100, Dtype.BF16, 8192, 8192, 8192)
    with pytest.raises(SpecError, match="a dtype the GPU"):
        gemm_flop_per_s(H100, Dtype.FP32, 8192, 8192, 8192)


def test_elementwise_bandwidth_approaches_the_achieved_hbm_bandwidth():
    moved = 2.0 ** np.arange(10, 34)
    rate = elementwise_bytes_per_s(H100, moved)
    limit = elementwise_bytes_per_s_limit(H100)
    assert limit == pytest.approx(3350e9 * 0.9)
    assert np.all(np.diff(rate) > 0) and rate[-1] == pytest.approx(limit, rel=2e-3) and rate[0] < 0.01 * limit
    assert elementwise_bytes_per_s(H100, moved, with_launch=False) == pytest.approx(np.full(moved.shape, limit))


def test_attention_rate_is_the_tables_efficiency_at_the_cores_peak():
    seq = np.array([512, 2048, 16384])
    for backward in (False, True):
        rate = attention_flop_per_s(H100, Dtype.BF16, seq, 128, backward)
        assert rate == pytest.approx(989.4e12 * H100.efficiency.attention.efficiency(seq, 128, backward))
        flop = 1e12
        time_s = attention_core_time_s(flop, seq, 128, H100.efficiency.attention, 989.4e12, backward)
        assert rate == pytest.approx(flop * (2.5 if backward else 1.0) / time_s)
    # the core stays bf16 under an fp8 recipe
    assert attention_peak(H100, Dtype.FP8) == 989.4e12
    assert attention_flop_per_s(H100, Dtype.FP8, 4096, 128) == pytest.approx(attention_flop_per_s(H100, Dtype.BF16,
                                                                                                 4096, 128))
