"""The attention core's calibration: the fit gives back the efficiencies synthetic samples were made with (in
FlashAttention's FLOP convention, which is moesim's), the simulator reproduces the measured times from the written
table, clamping is said, attention.csv's layout, a quick CPU measurement, a samples directory without attention.csv,
and the GPU path."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.calibration import compute as cm
from moesim.calibration.compute_fit import attention_forward_flop, fit_attention
from moesim.calibration.profile_writer import build_profile, to_yaml_ready
from moesim.calibration.run import datasheet_base, read_compute_samples
from moesim.calibration.samples import ATTENTION_COLUMNS, ATTENTION_FILE, ATTENTION_PASSES, COMPUTE_FILES
from moesim.cost.attention import attention_core_time_s
from moesim.cost.compute import attention_flop
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.spec.attention_efficiency import AttentionEfficiencyTable
from moesim.spec.errors import SpecError
from moesim.spec.hardware import Dtype

from calibration.compute_samples import (CPU_ATTENTION, attention_samples, compute_samples,
                                         write_compute_samples)
from calibration.test_compute_fit import HBM, LAUNCH_S, cpu_rates
from calibration.test_profile_calibration import collective_samples, kernel_samples
from helpers import tiny_model

PEAK = 50e9  # the synthetic profile's peak (kernel_samples' fastest matmul), FLOP/s
BACKENDS = {"flash_attention", "efficient_attention", "cudnn_attention", "math", "overrideable"}


def h100_table() -> AttentionEfficiencyTable:
    return load_profile(PROFILE_DIR / "dgx-h100.yaml").efficiency.attention


def test_the_flop_convention_is_the_simulators():
    """4·b·h·d·s²/2 is what attention_flop charges a layer of h heads d wide on b sequences of s tokens."""
    for b, h, d, s in ((1, 16, 128, 16384), (32, 32, 64, 512), (4, 2, 96, 1000)):
        model = tiny_model(num_attention_heads=h, num_kv_heads=h, head_dim=d, hidden_size=h * d)
        assert attention_forward_flop(b, h, s, d) == pytest.approx(attention_flop(model, b * s, s, 1).core_flop,
                                                                   rel=1e-12)
        assert attention_forward_flop(b, h, s, d) == 4.0 * b * h * d * s * s / 2


@pytest.mark.parametrize("table, peak, tokens, hidden", [(CPU_ATTENTION, PEAK, 1024, 256),
                                                          (h100_table(), 989.4e12, 16384, 2048)])
def test_the_fit_recovers_the_efficiencies(table, peak, tokens, hidden):
    got = fit_attention(attention_samples(table, peak, tokens=tokens, hidden=hidden), dtype="fp32",
                        peak_flop_per_s=peak)
    assert got.seq_lens == table.seq_lens and got.head_dims == table.head_dims
    np.testing.assert_allclose(got.forward, table.forward_causal, rtol=1e-9)
    np.testing.assert_allclose(got.backward, table.backward_causal, rtol=1e-9)
    assert got.clamped == () and got.backends == ("flash_attention",)
    assert got.samples == 2 * len(table.seq_lens) * len(table.head_dims)
    # against another peak every efficiency scales by its ratio: the peak is what they are fractions of
    half = fit_attention(attention_samples(table, peak, tokens=tokens, hidden=hidden), dtype="fp32",
                         peak_flop_per_s=2 * peak)
    np.testing.assert_allclose(half.forward, np.asarray(table.forward_causal) / 2, rtol=1e-9)


def test_repeated_and_noisy_points_take_the_median():
    rng = np.random.default_rng(0)
    frames = [attention_samples(CPU_ATTENTION, PEAK, noise=0.03, rng=rng) for _ in range(5)]
    got = fit_attention(pd.concat(frames, ignore_index=True), dtype="fp32", peak_flop_per_s=PEAK)
    np.testing.assert_allclose(got.forward, CPU_ATTENTION.forward_causal, rtol=0.06)
    np.testing.assert_allclose(got.backward, CPU_ATTENTION.backward_causal, rtol=0.12)


def _doc(compute, base=None, dtype="fp32"):
    kernels = kernel_samples().replace({"fp32": dtype})
    return build_profile("cpu-test", kernels, collective_samples(), {"date": "2026-12-01"}, "s", dtype=dtype,
                         ranks_per_node=4, memory_bytes=4e9, memory_bandwidth_bytes_per_s=HBM,
                         device="synthetic CPU", base=base, compute=compute)


def test_the_profile_table_gives_the_measured_times_back(tmp_path):
    compute = compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8)
    compute.meta["attention"] = {"date": "2026-12-02", "device": "synthetic CPU, attention"}
    doc = _doc(compute)
    leaf = doc["compute"]["attention_efficiency"]
    assert leaf["seq_lens"] == [128, 256, 512, 1024] and leaf["head_dims"] == [32, 64, 128]
    assert leaf["forward_causal"] == [list(r) for r in CPU_ATTENTION.forward_causal]
    assert leaf["backward_causal"] == [list(r) for r in CPU_ATTENTION.backward_causal]
    source = leaf["source"]
    assert source.startswith("moesim calibrate, 2026-12-02, synthetic CPU, attention: causal torch.nn.functional."
                             "scaled_dot_product_attention (is_causal=True), fp32, SDPA backend flash_attention")
    assert "peak 0.05 TFLOP/s" in source and "clamped" not in source and "1024 tokens per call" in source
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(to_yaml_ready(doc), sort_keys=False))
    prof = load_profile(path)
    assert prof.provenance["compute.attention_efficiency"] == source
    rows = compute.attention
    for _, r in rows[rows["pass"] == "forward"].iterrows():
        both = rows[(rows["pass"] == "forward_backward") & (rows["seq_len"] == r["seq_len"])
                    & (rows["head_dim"] == r["head_dim"])]["time_median_s"].iloc[0]
        fwd = attention_core_time_s(r["flop"], r["seq_len"], r["head_dim"], prof.efficiency.attention,
                                    prof.gpu.peak(Dtype.FP32), backward=False)
        bwd = attention_core_time_s(r["flop"], r["seq_len"], r["head_dim"], prof.efficiency.attention,
                                    prof.gpu.peak(Dtype.FP32), backward=True)
        assert fwd == pytest.approx(r["time_median_s"], rel=1e-5)
        assert fwd + bwd == pytest.approx(both, rel=1e-5)


def test_values_past_the_bounds_are_clamped_and_said():
    samples = attention_samples(CPU_ATTENTION, PEAK)
    fast = (samples["pass"] == "forward") & (samples["seq_len"] == 128) & (samples["head_dim"] == 32)
    samples.loc[fast, "time_median_s"] /= 20  # 2.2 of peak: the forward at 128 x 32 is clamped to 1
    slow = (samples["pass"] == "forward_backward") & (samples["seq_len"] == 1024) & (samples["head_dim"] == 128)
    fwd_time = samples.loc[(samples["pass"] == "forward") & (samples["seq_len"] == 1024)
                           & (samples["head_dim"] == 128), "time_median_s"].iloc[0]
    samples.loc[slow, "time_median_s"] = 0.9 * fwd_time  # forward+backward faster than forward: noise
    got = fit_attention(samples, dtype="fp32", peak_flop_per_s=PEAK)
    assert got.forward[0][0] == 1.0 and got.raw_forward[0][0] == pytest.approx(2.2)
    assert got.backward[2][3] == 1.0 and got.raw_backward[2][3] == np.inf
    assert [(p, d, s) for p, d, s, _ in got.clamped] == [("forward", 32, 128), ("backward", 128, 1024)]
    tiny = attention_samples(CPU_ATTENTION, PEAK)
    tiny["time_median_s"] *= 1e4  # 1e-5 of peak and less: clamped up to the profile's floor
    assert np.min(fit_attention(tiny, dtype="fp32", peak_flop_per_s=PEAK).forward) == 1e-3
    doc = _doc(dataclasses.replace(compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8),
                                   attention=samples))
    source = doc["compute"]["attention_efficiency"]["source"]
    assert "2 of 24 values clamped into [0.001, 1]" in source
    assert "forward head_dim 32 seq_len 128: 2.2" in source and "backward head_dim 128 seq_len 1024: no time" in source
    AttentionEfficiencyTable.from_yaml(doc["compute"]["attention_efficiency"], "compute.attention_efficiency")


@pytest.mark.parametrize("mutate, match", [
    (lambda f: f.drop(columns="backend"), "attention.csv"),
    (lambda f: f[~((f["seq_len"] == 256) & (f["head_dim"] == 64) & (f["pass"] == "forward_backward"))],
     "head_dim 64 seq_len 256"),
    (lambda f: f.assign(flop=f["flop"] * 2), "attention.csv.flop"),
    (lambda f: f.assign(pass_="x").drop(columns="pass").rename(columns={"pass_": "pass"}), "attention.csv.pass"),
    (lambda f: f.assign(dtype="bf16"), "attention.csv.dtype"),
    (lambda f: f.assign(time_median_s=0.0), "time_median_s"),
])
def test_bad_attention_samples_are_one_error_naming_the_column(mutate, match):
    with pytest.raises(SpecError, match=match):
        fit_attention(mutate(attention_samples(CPU_ATTENTION, PEAK)), dtype="fp32", peak_flop_per_s=PEAK)


def test_a_base_keeps_its_table_marked_not_measured_without_attention_samples():
    base = yaml.safe_load((PROFILE_DIR / "dgx-h100.yaml").read_text())
    compute = compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8, dtype="bf16",
                              attention=None)
    leaf = _doc(compute, base=base, dtype="bf16")["compute"]["attention_efficiency"]
    theirs = base["compute"]["attention_efficiency"]
    assert {k: v for k, v in leaf.items() if k != "source"} == {k: v for k, v in theirs.items() if k != "source"}
    assert leaf["source"] == ("not measured by this calibration (no attention.csv); the base profile's: "
                              f"{theirs['source']}")
    bare = build_profile("kit", kernel_samples().replace({"fp32": "bf16"}), collective_samples(),
                         {"date": "2026-12-01"}, "s", dtype="bf16", ranks_per_node=8, memory_bytes=0.0,
                         memory_bandwidth_bytes_per_s=0.0, device="H100", base=base)
    assert bare["compute"]["attention_efficiency"]["source"].startswith("not measured by this calibration")
    # measured on a base: the datasheet's peak is what the efficiencies are fractions of
    measured = compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8, dtype="bf16",
                               attention_peak_flop_per_s=989.4e12)
    leaf = _doc(measured, base=base, dtype="bf16")["compute"]["attention_efficiency"]
    assert leaf["forward_causal"] == [list(r) for r in CPU_ATTENTION.forward_causal]
    assert "bf16 peak 989.4 TFLOP/s" in leaf["source"]
    with pytest.raises(SpecError, match="attention.csv"):  # no base: the attention samples are required
        _doc(compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8, attention=None))


def test_a_samples_directory_without_attention_csv(tmp_path):
    compute = compute_samples(cpu_rates(0.62, ((16, 16),), sms=1), LAUNCH_S, HBM * 0.8)
    write_compute_samples(tmp_path, compute)
    assert ATTENTION_FILE in COMPUTE_FILES and (tmp_path / ATTENTION_FILE).is_file()
    read = read_compute_samples(tmp_path, host=None, required=True)
    assert read is not None and read.attention is not None and len(read.attention) == 24
    (tmp_path / ATTENTION_FILE).unlink()
    with pytest.raises(SpecError) as err:
        read_compute_samples(tmp_path, host=None, required=True)
    assert err.value.one_line().startswith(f"{tmp_path}: attention.csv: got no such file;")
    assert "--base" in err.value.one_line() and "\n" not in err.value.one_line()
    said = []
    read = read_compute_samples(tmp_path, host=None, required=False, log=said.append)
    assert read is not None and read.attention is None and len(read.gemm) == len(compute.gemm)
    assert said == [f"{tmp_path}: no attention.csv: the attention table (attention_efficiency) stays the base "
                    "profile's, marked not measured"]


def test_the_plans():
    full = cm.attention_plan("cuda", quick=False)
    assert full.seq_lens == (512, 1024, 2048, 4096, 8192, 16384) and full.head_dims == (64, 128, 256)
    for plan in (full, cm.attention_plan("cuda", quick=True), cm.attention_plan("cpu", quick=False),
                 cm.attention_plan("cpu", quick=True)):
        assert all(plan.tokens % s == 0 for s in plan.seq_lens) and all(plan.hidden % d == 0 for d in plan.head_dims)
        assert len(plan.seq_lens) >= 2 and len(plan.head_dims) >= 2


def test_quick_measurement_on_the_cpu_takes_seconds_and_follows_the_schema():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = cm.attention_plan("cpu", quick=True)
        t0 = time.perf_counter()
        frame = cm.measure_attention(plan, "fp32", "cpu")
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert seconds < 10, seconds  # about 1 s on the 2-core CI machine
    assert tuple(frame.columns) == ATTENTION_COLUMNS
    assert len(frame) == 2 * len(plan.seq_lens) * len(plan.head_dims)
    assert set(frame["pass"]) == set(ATTENTION_PASSES) and set(frame["dtype"]) == {"fp32"}
    assert set(frame["backend"]) <= BACKENDS | {"unknown"}
    assert (frame["batch"] * frame["seq_len"] == plan.tokens).all()
    assert (frame["heads"] * frame["head_dim"] == plan.hidden).all()
    ratio = frame["pass"].map({"forward": 1.0, "forward_backward": 3.5})
    assert np.allclose(frame["flop"], ratio * 4 * frame["batch"] * frame["heads"] * frame["head_dim"]
                       * frame["seq_len"] ** 2 / 2)
    assert (frame["time_p10_s"] <= frame["time_median_s"]).all()
    assert (frame["time_median_s"] <= frame["time_p90_s"]).all() and (frame["calls"] >= 1).all()
    fit = fit_attention(frame, dtype="fp32", peak_flop_per_s=100e9)  # about one core's fp32 peak
    assert fit.seq_lens == plan.seq_lens and fit.head_dims == plan.head_dims
    assert 1e-3 <= np.min(fit.forward) and np.max(fit.forward) <= 1.0
    AttentionEfficiencyTable(seq_lens=fit.seq_lens, head_dims=fit.head_dims, forward_causal=fit.forward,
                             backward_causal=fit.backward)


needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_gpu_quick_attention_against_its_datasheet():
    import torch

    plan = cm.attention_plan("cuda", quick=True, cache_bytes=cm.device_cache_bytes("cuda"))
    t0 = time.perf_counter()
    frame = cm.measure_attention(plan, "bf16", "cuda")
    assert time.perf_counter() - t0 < 60
    assert tuple(frame.columns) == ATTENTION_COLUMNS and set(frame["backend"]) <= BACKENDS
    base = datasheet_base(torch.cuda.get_device_name())
    if base is None:
        pytest.skip(f"no datasheet profile for {torch.cuda.get_device_name()}")
    prof = load_profile(base)
    fit = fit_attention(frame, dtype="bf16", peak_flop_per_s=prof.gpu.peak(Dtype.BF16))
    assert fit.clamped == ()
    assert 0.05 < np.min(fit.forward) and np.max(fit.forward) < 1.0
    assert 0.05 < np.min(fit.backward) and np.max(fit.backward) < 1.0
    hd128 = fit.head_dims.index(128)
    assert fit.forward[hd128][-1] > fit.forward[hd128][0]  # longer sequences amortise the causal edge
