"""The GEMM shape model (moesim.cost.gemm) against published microbenchmarks and its own closed forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moesim.cost import gemm as gg
from moesim.cost.compute import expert_time_s
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.spec.dtype import Dtype
from moesim.spec.presets import MODEL_PRESETS

H100 = load_profile(PROFILE_DIR / "dgx-h100.yaml")
BF16, FP8 = gg.gemm_rates(H100, Dtype.BF16), gg.gemm_rates(H100, Dtype.FP8)


def _tflops(m, n, k, rates) -> float:
    return 2.0 * m * n * k / float(gg.gemm_time_s(m, n, k, rates)) / 1e12


def test_the_h100_profile_reproduces_its_bf16_mamf():
    # hardware.md 1.2: 794.5 TFLOP/s at the best shape found, 2048 x 2048 x 13312
    assert _tflops(2048, 2048, 13312, BF16) == pytest.approx(794.5, abs=1.0)


@pytest.mark.parametrize("m, n, k, measured, documented", [
    (4096, 32768, 512, 775, 750),  # small K: the output write is not hidden
    (4096, 4096, 7168, 1410, 1341),
    (4096, 7168, 2048, 1168, 1156),
    (4096, 7168, 16384, 1520, 1391),
])
def test_deepgemm_fp8_rows_as_the_module_docstring_says(m, n, k, measured, documented):
    got = _tflops(m, n, k, FP8)
    assert got == pytest.approx(documented, abs=1.0)  # the numbers cost/gemm.py's docstring and the profile quote
    assert got == pytest.approx(measured, rel=0.1)  # DeepGEMM README (fidelity.md 3), H800 = H100 compute


def test_a_skinny_gemm_is_bound_by_reading_its_weights():
    m, n, k = 1, 8192, 8192
    bytes_moved = (m * k + k * n) * 2 + m * n * 2
    assert float(gg.gemm_time_s(m, n, k, BF16)) == pytest.approx(bytes_moved / BF16.hbm_bytes_per_s)


ONE_TILE = dataclasses.replace(BF16, tiles=np.array([[128.0, 256.0]]))  # a library with one tile shape


def test_one_tile_more_than_the_sms_costs_a_second_wave():
    # 12 x 11 = 132 tiles of 128 x 256: one wave; one more row makes 13 x 11 tiles, two waves (compute-bound shapes)
    one_wave = float(gg.gemm_time_s(12 * 128, 11 * 256, 16384, ONE_TILE))
    two_waves = float(gg.gemm_time_s(12 * 128 + 1, 11 * 256, 16384, ONE_TILE))
    assert two_waves / one_wave == pytest.approx(2.0, rel=1e-9)
    # the library's other tiles soften it: 64 x 128 tiles waste less of the second wave
    assert 1.0 < float(gg.gemm_time_s(12 * 128 + 1, 11 * 256, 16384, BF16)) / one_wave < 2.0


def test_efficiency_falls_as_k_shrinks():
    effs = [_tflops(8192, 8192, k, BF16) for k in (256, 1024, 4096, 16384)]
    assert effs == sorted(effs) and effs[0] < 0.6 * effs[-1]


def test_a_grouped_gemm_of_one_expert_is_that_gemm():
    rows = np.array([[3000.0]])
    assert gg.grouped_gemm_time_s(rows, 4096, 2048, BF16)[0] == pytest.approx(
        float(gg.gemm_time_s(3000, 4096, 2048, BF16)))


def test_experts_share_the_waves_of_one_grouped_gemm():
    # two experts of 6 x 11 = 66 tiles each fill the 132 SMs once: as long as one expert alone
    one = float(gg.grouped_gemm_time_s(np.array([768.0, 0.0]), 11 * 256, 16384, ONE_TILE))
    two = float(gg.grouped_gemm_time_s(np.array([768.0, 768.0]), 11 * 256, 16384, ONE_TILE))
    assert two == pytest.approx(one, rel=1e-9)
    three = float(gg.grouped_gemm_time_s(np.array([768.0, 768.0, 768.0]), 11 * 256, 16384, ONE_TILE))
    assert three == pytest.approx(2.0 * one, rel=1e-9)


def test_weight_gradients_of_few_rows_are_inefficient_and_of_none_free():
    n, k = 1536, 4096
    eff = {r: 2.0 * r * n * k * 16 / float(gg.grouped_wgrad_time_s(np.full(16, float(r)), n, k, BF16)) / 1e12
           for r in (128, 1024, 8192)}
    assert eff[128] < eff[1024] < eff[8192]
    assert eff[128] < 0.5 * eff[8192]
    assert float(gg.grouped_wgrad_time_s(np.zeros(16), n, k, BF16)) == 0.0


def test_expert_backward_is_about_twice_the_forward_when_experts_are_big():
    model = MODEL_PRESETS["mixtral-8x7b"]
    fwd, bwd = expert_time_s(np.full(4, 8192.0), model, H100, Dtype.BF16, 1)
    assert 1.9 < float(bwd / fwd) < 2.3
    small = MODEL_PRESETS["qwen3-30b-a3b"]  # expert FFN 768, few rows per expert: the weight gradient suffers
    fwd, bwd = expert_time_s(np.full(16, 256.0), small, H100, Dtype.BF16, 1)
    assert float(bwd / fwd) > 2.2


def test_fp8_linear_gemms_read_one_byte_and_the_router_stays_bf16():
    assert (FP8.input_bytes, FP8.output_bytes) == (1.0, 2.0)
    router = gg.gemm_rates(H100, Dtype.FP8, linear=False)
    assert router.input_bytes == 2.0 and router.sm_flop_per_s == pytest.approx(BF16.sm_flop_per_s)
    assert FP8.sm_flop_per_s == pytest.approx(2.0 * BF16.sm_flop_per_s * H100.efficiency.fp8_matmul_ratio, rel=1e-3)
