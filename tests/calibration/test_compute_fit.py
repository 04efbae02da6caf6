"""The compute model's calibration: fits recover the parameters cost/gemm.py generated samples with (and can tell
them apart), the CSV layouts, quick measurement on the CPU, and the profile's compute keys with their sources."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.calibration import compute as cm
from moesim.calibration.compute_fit import (CPU_TILE_CANDIDATES, fit_gemm, fit_hbm_efficiency, fit_launch,
                                            gemm_rates, predict_gemm_s)
from moesim.calibration.profile_writer import build_profile, to_yaml_ready
from moesim.calibration.run import datasheet_base
from moesim.calibration.samples import ELEMENTWISE_COLUMNS, GEMM_COLUMNS, LAUNCH_COLUMNS
from moesim.cost import gemm as gg
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError

from calibration.compute_samples import GPU_SHAPES, compute_samples, elementwise_samples, gemm_samples, launch_samples
from calibration.test_profile_calibration import collective_samples, kernel_samples

PEAK = 80e9  # FLOP/s of the synthetic CPU device (fp32)
HBM = 20e9  # its copy bandwidth, bytes/s
LAUNCH_S = 3e-6


def cpu_rates(eff: float, tiles, sms: int = 2, hbm_eff: float = 0.8) -> gg.GemmRates:
    """gemm_rates' formula written out for a CPU profile of these numbers."""
    return gg.GemmRates(sm_count=sms, tiles=np.array(tiles, dtype=np.float64), sm_flop_per_s=PEAK * eff / sms,
                        hbm_bytes_per_s=HBM * hbm_eff, input_bytes=4.0, output_bytes=4.0)


def fit(samples: pd.DataFrame, sms: int = 2, hbm_eff: float = 0.8, launch_s: float = LAUNCH_S,
        candidates=CPU_TILE_CANDIDATES):
    return fit_gemm(samples, dtype="fp32", peak_flop_per_s=PEAK, sm_count=sms, hbm_bytes_per_s=HBM,
                    hbm_efficiency=hbm_eff, launch_s=launch_s, tile_candidates=candidates)


def test_the_rates_stand_in_is_gemm_rates_of_a_real_profile():
    prof = load_profile(PROFILE_DIR / "dgx-h100.yaml")
    eff = prof.efficiency
    ours = gemm_rates(dtype="bf16", peak_flop_per_s=prof.gpu.peak(Dtype.BF16), sm_count=prof.gpu.sm_count,
                      hbm_bytes_per_s=prof.gpu.hbm_bandwidth_bytes_per_s, hbm_efficiency=eff.hbm,
                      gemm_efficiency=eff.gemm, tiles=eff.gemm_tiles)
    theirs = gg.gemm_rates(prof, Dtype.BF16)
    for field in dataclasses.fields(gg.GemmRates):
        assert np.array_equal(getattr(ours, field.name), getattr(theirs, field.name)), field.name


@pytest.mark.parametrize("eff, tiles", [(0.62, ((16, 16),)), (0.9, ((64, 64),)), (0.35, ((1, 1),))])
def test_gemm_fit_recovers_efficiency_and_tiles(eff, tiles):
    got = fit(gemm_samples(cpu_rates(eff, tiles), LAUNCH_S, dtype="fp32"))
    assert got.tiles == tiles
    assert got.efficiency == pytest.approx(eff, rel=2e-3)
    assert got.mape < 1e-3 and not got.clipped and got.samples == 72
    assert {t for t, _, _ in got.candidates} == set(CPU_TILE_CANDIDATES)
    others = [err for t, _, err in got.candidates if t != tiles]
    assert min(others) > 10 * got.mape  # the tiles are told apart, not a tie broken by luck


def test_gemm_fit_with_noise_and_a_wrong_model_shows_its_error():
    rng = np.random.default_rng(0)
    samples = gemm_samples(cpu_rates(0.7, ((32, 32),)), LAUNCH_S, dtype="fp32", noise=0.05, rng=rng)
    got = fit(samples)
    assert got.tiles == ((32, 32),) and got.efficiency == pytest.approx(0.7, rel=0.03)
    assert 0.02 < got.mape < 0.06
    # the same samples fitted with 3 SMs instead of the 2 that made them: wave quantisation differs, the error shows
    assert fit(samples, sms=3).mape > 2 * got.mape


def test_gemm_fit_recovers_a_datasheet_gpu_with_its_tiles():
    """Samples from the H100 profile's own shape model (132 SMs, CUTLASS tiles): its gemm_efficiency comes back."""
    prof = load_profile(PROFILE_DIR / "dgx-h100.yaml")
    launch_s = prof.efficiency.kernel_launch_s
    samples = gemm_samples(gg.gemm_rates(prof, Dtype.BF16), launch_s, dtype="bf16", shapes=GPU_SHAPES)
    got = fit_gemm(samples, dtype="bf16", peak_flop_per_s=prof.gpu.peak(Dtype.BF16), sm_count=prof.gpu.sm_count,
                   hbm_bytes_per_s=prof.gpu.hbm_bandwidth_bytes_per_s, hbm_efficiency=prof.efficiency.hbm,
                   launch_s=launch_s, tile_candidates=(prof.efficiency.gemm_tiles,))
    assert got.efficiency == pytest.approx(prof.efficiency.gemm, rel=2e-3) and got.mape < 1e-3


def test_efficiency_past_one_is_clipped_and_reported():
    got = fit(gemm_samples(cpu_rates(1.3, ((8, 8),)), LAUNCH_S, dtype="fp32"), candidates=(((8, 8),),))
    assert got.efficiency == 1.0 and got.clipped and got.raw == pytest.approx(1.3, rel=2e-3)
    rates = gemm_rates(dtype="fp32", peak_flop_per_s=PEAK, sm_count=2, hbm_bytes_per_s=HBM, hbm_efficiency=0.8,
                       gemm_efficiency=1.0, tiles=((8, 8),))
    measured = gemm_samples(cpu_rates(1.3, ((8, 8),)), LAUNCH_S, dtype="fp32")
    assert got.mape == pytest.approx(float(np.mean(np.abs(predict_gemm_s(measured, rates, LAUNCH_S)
                                                          / measured["time_median_s"] - 1))))


@pytest.mark.parametrize("eff", [0.45, 0.8, 1.0])
def test_hbm_fit_recovers_the_element_wise_share(eff):
    got = fit_hbm_efficiency(elementwise_samples(HBM * eff, LAUNCH_S), hbm_bytes_per_s=HBM, launch_s=LAUNCH_S)
    assert got.efficiency == pytest.approx(eff, rel=2e-3) and got.mape < 1e-3 and not got.clipped
    over = fit_hbm_efficiency(elementwise_samples(HBM * 1.2, LAUNCH_S), hbm_bytes_per_s=HBM, launch_s=LAUNCH_S)
    assert over.efficiency == 1.0 and over.clipped and over.raw == pytest.approx(1.2, rel=2e-3)


def test_launch_fit_and_bad_samples():
    assert fit_launch(launch_samples(4e-6)).launch_s == 4e-6
    with pytest.raises(SpecError, match="add_scalar"):
        fit_launch(launch_samples(4e-6).assign(op="other"))
    with pytest.raises(SpecError, match="gemm.csv"):
        fit(gemm_samples(cpu_rates(0.5, ((8, 8),)), LAUNCH_S, dtype="fp32").drop(columns="k"))
    with pytest.raises(SpecError, match="dtype"):
        fit(gemm_samples(cpu_rates(0.5, ((8, 8),)), LAUNCH_S, dtype="bf16"))
    with pytest.raises(SpecError, match="time_median_s"):
        fit_hbm_efficiency(elementwise_samples(HBM, LAUNCH_S).assign(time_median_s=0.0), hbm_bytes_per_s=HBM,
                           launch_s=0.0)


def test_quick_measurement_on_the_cpu_takes_seconds_and_follows_the_schema():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = cm.compute_plan("cpu", quick=True)
        t0 = time.perf_counter()
        gemm = cm.measure_gemms(plan, "fp32", "cpu")
        elementwise = cm.measure_elementwise(plan, "fp32", "cpu")
        launch = cm.measure_launch(plan, "fp32", "cpu")
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert seconds < 10, seconds  # about 0.3 s on the 2-core CI machine
    assert tuple(gemm.columns) == GEMM_COLUMNS and len(gemm) == len(plan.gemm_shapes)
    assert tuple(elementwise.columns) == ELEMENTWISE_COLUMNS and set(elementwise["op"]) == {"copy", "add"}
    assert tuple(launch.columns) == LAUNCH_COLUMNS and list(launch["op"]) == ["add_scalar"]
    assert min(gemm["m"]) == 1 and min(gemm["k"]) <= 64  # skinny and small-K shapes are in the quick sweep too
    assert np.allclose(gemm["flop"], 2.0 * gemm["m"] * gemm["n"] * gemm["k"])
    per_element = elementwise["op"].map({"copy": 2, "add": 3}) * 4
    assert np.allclose(elementwise["bytes"], per_element * elementwise["elements"])
    assert np.allclose(elementwise["bandwidth_GBps"], elementwise["bytes"] / elementwise["time_median_s"] / 1e9)
    for frame in (gemm, elementwise, launch):
        assert (frame["time_median_s"] > 0).all() and (frame["calls"] >= 1).all()
        assert (frame["time_p10_s"] <= frame["time_median_s"]).all()
        assert (frame["time_median_s"] <= frame["time_p90_s"]).all()
    assert 0 < launch["time_median_s"].iloc[0] < 1e-3
    fitted = fit_gemm(gemm, dtype="fp32", peak_flop_per_s=float((gemm["flop"] / gemm["time_median_s"]).max()),
                      sm_count=1, hbm_bytes_per_s=10e9, hbm_efficiency=1.0,
                      launch_s=float(launch["time_median_s"].iloc[0]), tile_candidates=CPU_TILE_CANDIDATES)
    assert 0 < fitted.efficiency <= 1 and np.isfinite(fitted.mape)


def test_full_plans_cover_skinny_and_small_k_shapes():
    for device in ("cpu", "cuda"):
        plan = cm.compute_plan(device, quick=False)
        ms, ks = {s[0] for s in plan.gemm_shapes}, {s[2] for s in plan.gemm_shapes}
        assert 1 in ms and min(ks) <= 256 and max(ms) >= 1024 and max(ks) >= 2048
        assert len(plan.gemm_shapes) > 4 * len(cm.compute_plan(device, quick=True).gemm_shapes)


def _synthetic_doc(base=None, dtype="fp32", **kwargs):
    compute = compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8, dtype=dtype)
    return build_profile("cpu-test", kernel_samples().replace({"fp32": dtype}), collective_samples(),
                         {"date": "2026-12-01"}, "s", dtype=dtype, ranks_per_node=4, memory_bytes=4e9,
                         memory_bandwidth_bytes_per_s=HBM, device="synthetic CPU", base=base, compute=compute,
                         **kwargs), compute


def test_the_profile_carries_the_fitted_compute_keys_with_sources(tmp_path):
    doc, _ = _synthetic_doc()
    comp = doc["compute"]
    assert doc["gpu"]["sm_count"]["value"] == 1 and "threads per rank" in doc["gpu"]["sm_count"]["source"]
    assert comp["gemm_tiles"]["value"] == [[16, 16]] and "[[1, 1]] (MAPE" in comp["gemm_tiles"]["source"]
    # the peak of this synthetic profile is kernel_samples' 50 GFLOP/s, not PEAK: the product is what was measured
    assert comp["gemm_efficiency"]["value"] * 50e9 == pytest.approx(0.62 * PEAK, rel=2e-3)
    assert "MAPE 0.0 %" in comp["gemm_efficiency"]["source"] and "2026-12-01" in comp["gemm_efficiency"]["source"]
    assert comp["hbm_efficiency"]["value"] == pytest.approx(0.8, rel=2e-3)
    assert "itself a measured copy bandwidth" in comp["hbm_efficiency"]["source"]
    assert comp["kernel_launch_us"]["value"] == pytest.approx(3.0)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(to_yaml_ready(doc)))
    prof = load_profile(path)
    assert prof.gpu.sm_count == 1 and prof.efficiency.gemm_tiles == ((16, 16),)
    assert prof.efficiency.kernel_launch_s == pytest.approx(3e-6)
    assert prof.provenance["compute.gemm_efficiency"].startswith("moesim calibrate, 2026-12-01")


def test_a_datasheet_base_keeps_its_tiles_and_peak_and_takes_the_measured_rest():
    base = yaml.safe_load((PROFILE_DIR / "dgx-h100.yaml").read_text())
    doc, _ = _synthetic_doc(base=base, dtype="bf16")
    comp = doc["compute"]
    assert comp["gemm_tiles"] == base["compute"]["gemm_tiles"]
    assert comp["gemm_efficiency"]["value"] == 1e-3  # a CPU's GEMMs against an H100's peak: the lower bound
    assert comp["hbm_efficiency"]["value"] == pytest.approx(HBM * 0.8 / 3.35e12, rel=1e-2)
    assert "datasheet HBM bandwidth" in comp["hbm_efficiency"]["source"]
    bare = build_profile("kit", kernel_samples().replace({"fp32": "bf16"}), collective_samples(),
                         {"date": "2026-12-01"}, "s", dtype="bf16", ranks_per_node=8, memory_bytes=0.0,
                         memory_bandwidth_bytes_per_s=0.0, device="H100", base=base)
    for key in ("gemm_efficiency", "hbm_efficiency", "kernel_launch_us"):
        assert bare["compute"][key]["value"] == base["compute"][key]["value"]
        assert bare["compute"][key]["source"].startswith("not measured by this calibration")


def test_without_a_base_the_compute_samples_are_required():
    with pytest.raises(SpecError, match="gemm.csv"):
        build_profile("x", kernel_samples(), collective_samples(), {}, "s", dtype="fp32", ranks_per_node=4,
                      memory_bytes=4e9, memory_bandwidth_bytes_per_s=HBM, device="cpu")


@pytest.mark.parametrize("name, profile", [("NVIDIA H200", "hgx-h200"), ("NVIDIA H100 80GB HBM3", "dgx-h100"),
                                           ("NVIDIA A100-SXM4-80GB", "dgx-a100"), ("NVIDIA H800", "dgx-h800"),
                                           ("NVIDIA GeForce RTX 4090", None), ("CPU rank: AMD EPYC, 1 thread", None)])
def test_a_gpu_finds_its_datasheet_base(name, profile):
    found = datasheet_base(name)
    assert (found.stem if found else None) == profile


needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_gpu_quick_measurement_and_fit_against_its_datasheet():
    import torch

    plan = cm.compute_plan("cuda", quick=True, cache_bytes=cm.device_cache_bytes("cuda"))
    gemm = cm.measure_gemms(plan, "bf16", "cuda")
    elementwise = cm.measure_elementwise(plan, "bf16", "cuda")
    launch = cm.measure_launch(plan, "bf16", "cuda")
    assert cm.sm_count("cuda", None) == torch.cuda.get_device_properties(0).multi_processor_count
    base = datasheet_base(torch.cuda.get_device_name())
    if base is None:
        pytest.skip(f"no datasheet profile for {torch.cuda.get_device_name()}")
    prof = load_profile(base)
    launch_s = fit_launch(launch).launch_s
    assert 0 < launch_s < 1e-4
    hbm = fit_hbm_efficiency(elementwise, hbm_bytes_per_s=prof.gpu.hbm_bandwidth_bytes_per_s, launch_s=launch_s)
    assert 0.3 < hbm.efficiency <= 1.0  # HBM copies reach most of the datasheet bandwidth
    got = fit_gemm(gemm, dtype="bf16", peak_flop_per_s=prof.gpu.peak(Dtype.BF16), sm_count=cm.sm_count("cuda", None),
                   hbm_bytes_per_s=prof.gpu.hbm_bandwidth_bytes_per_s, hbm_efficiency=hbm.efficiency,
                   launch_s=launch_s, tile_candidates=(prof.efficiency.gemm_tiles,))
    assert 0.05 < got.efficiency <= 1.0 and np.isfinite(got.mape)
