"""The expert FFN calibration: measured as `moesim execute` runs it (forward, forward + backward), fitted per pass,
and charged by the cost model in place of the GEMM-only fit, with its activation inside."""

import numpy as np
import pandas as pd
import pytest

from moesim.calibration.fit import fit_expert_ffn
from moesim.calibration.kernels import CPU_FFN_SHAPES, KernelShape, ffn_bytes, measure_expert_ffn
from moesim.calibration.samples import EXPERT_FFN_COLUMNS
from moesim.cost import compute as cc
from moesim.cost import ops
from moesim.execute.matrix import SHAPES
from moesim.execute.scale import ScaleLimits
from moesim.io.profile import load_profile, resolve_profile
from moesim.spec import ClusterSpec, ParallelLayout
from moesim.spec.calibration import ExpertFfnCalibration
from moesim.spec.dtype import Dtype
from moesim.spec.model import Activation
from moesim.spec.errors import SpecError

from helpers import scenario, tiny_model

PEAK = 1e11


def test_cpu_calibration_times_every_shape_execute_runs():
    measured = {(s.hidden, s.ffn) for s in CPU_FFN_SHAPES}
    for limits in (ScaleLimits(), *SHAPES.values()):
        assert (limits.hidden_size, limits.ffn_size) in measured


def test_measure_expert_ffn_rows_passes_and_budget():
    rows = measure_expert_ffn((KernelShape(32, 64, 2),), (1, 8, 64), "fp32", "cpu", repeats=2, warmup=1,
                              max_forward_flop=2.0 * 2 * 8 * 32 * 64 * 3, flush_bytes=1 << 20)
    assert list(rows.columns) == list(EXPERT_FFN_COLUMNS)
    assert sorted(set(rows["tokens_per_expert"])) == [1, 8]  # 64 tokens is over the FLOP budget: skipped
    assert set(rows["pass"]) == {"forward", "forward_backward"} and set(rows["impl"]) == {"torch_loop"}
    by = rows.set_index(["tokens_per_expert", "pass"])
    assert by.loc[(8, "forward"), "flop"] == 2.0 * 2 * 8 * 32 * 64 * 3
    assert by.loc[(8, "forward_backward"), "flop"] == 3 * by.loc[(8, "forward"), "flop"]
    assert (rows["time_median_s"] > 0).all()
    # a memory budget skips sizes (and whole shapes) before allocating them
    small = ffn_bytes(KernelShape(32, 64, 2), 1, 4)
    assert ffn_bytes(KernelShape(32, 64, 2), 8, 4) > small
    only_one = measure_expert_ffn((KernelShape(32, 64, 2),), (1, 8), "fp32", "cpu", repeats=1, warmup=0,
                                  max_bytes=small)
    assert sorted(set(only_one["tokens_per_expert"])) == [1]
    assert measure_expert_ffn((KernelShape(32, 64, 2),), (1,), "fp32", "cpu", 1, 0, max_bytes=small / 2).empty


def test_the_triton_expert_ffn_is_timed_as_execute_runs_it():
    """The GPU path, here in the Triton interpreter (TRITON_INTERPRET=1 is set by conftest): same rows, impl triton."""
    rows = measure_expert_ffn((KernelShape(16, 32, 2),), (4,), "fp32", "cpu", repeats=1, warmup=0, impl="triton")
    assert set(rows["impl"]) == {"triton"} and set(rows["pass"]) == {"forward", "forward_backward"}
    assert (rows["time_median_s"] > 0).all()


def _samples(fwd_t0, fwd_eff, bwd_t0, bwd_eff, experts=8, hidden=64, ffn=128):
    per_row = 2.0 * hidden * ffn * 3
    rows = []
    for m in (1, 4, 16, 64, 256):
        forward = experts * (fwd_t0 + m * per_row / (PEAK * fwd_eff))
        backward = experts * (bwd_t0 + m * 2 * per_row / (PEAK * bwd_eff))
        for name, flop, t in (("forward", experts * m * per_row, forward),
                              ("forward_backward", 3 * experts * m * per_row, forward + backward)):
            rows.append(("torch_loop", "fp32", hidden, ffn, experts, m, name, flop, t, t, t, 5))
    return pd.DataFrame(rows, columns=list(EXPERT_FFN_COLUMNS))


def test_fit_recovers_each_pass_separately():
    fit = fit_expert_ffn(_samples(20e-6, 0.8, 90e-6, 0.6), PEAK, 1)
    assert fit.forward.t0_s == pytest.approx(20e-6, rel=1e-6) and fit.forward.eff_max == pytest.approx(0.8, rel=1e-6)
    assert fit.backward.t0_s == pytest.approx(90e-6, rel=1e-6)
    assert fit.backward.eff_max == pytest.approx(0.6, rel=1e-6)
    assert fit.forward.rel_error < 1e-9 and fit.backward.rel_error < 1e-9


def test_fit_refuses_a_pass_missing_or_a_backward_faster_than_nothing():
    samples = _samples(20e-6, 0.8, 90e-6, 0.6)
    with pytest.raises(SpecError, match="forward_backward"):
        fit_expert_ffn(samples[samples["pass"] == "forward"], PEAK, 1)
    broken = samples.copy()
    broken.loc[broken["pass"] == "forward_backward", "time_median_s"] = 1e-9
    with pytest.raises(SpecError, match="expert_ffn.csv"):
        fit_expert_ffn(broken, PEAK, 1)
    with pytest.raises(SpecError, match="expert_ffn.csv"):
        fit_expert_ffn(samples.drop(columns=["pass"]), PEAK, 1)


def _calibrated_scenario(ffns):
    prof = load_profile(resolve_profile("cpu-gloo-2c-2r"))
    prof = prof.replace(calibration=prof.calibration.replace(expert_ffns=ffns))
    sc = scenario(nodes=1, gpus_per_node=2, layout=ParallelLayout(tp=1, pp=1, dp=2, ep=2), model=tiny_model())
    return sc.replace(cluster=ClusterSpec(prof, 1), training=sc.training.replace(dtype=Dtype.FP32))


def test_cost_model_charges_the_measured_passes_and_no_separate_activation():
    base = _calibrated_scenario(())
    m = base.model
    fit = ExpertFfnCalibration(impl="torch_loop", dtype=Dtype.FP32, hidden=m.hidden_size, ffn=m.expert_ffn_size,
                               tile_rows=1, forward_t0_s=50e-6, forward_eff_max=0.5, backward_t0_s=300e-6,
                               backward_eff_max=0.25)
    sc = _calibrated_scenario((fit,))
    prof = sc.cluster.profile
    rows = np.array([[0, 3, 10]])
    fwd, bwd = cc.expert_time_s(rows, m, prof, Dtype.FP32, 1)
    work = cc.ffn_flop(m, np.array([3, 10]), m.expert_ffn_size, 1) / prof.gpu.peak(Dtype.FP32)
    assert fwd[0] == pytest.approx(2 * 50e-6 + work.sum() / 0.5)  # the expert without rows costs nothing
    assert bwd[0] == pytest.approx(2 * 300e-6 + 2 * work.sum() / 0.25)
    # the GEMM-only fit (no FFN fit) prices the backward at twice the forward
    fwd0, bwd0 = cc.expert_time_s(rows, m, base.cluster.profile, Dtype.FP32, 1)
    assert bwd0[0] == pytest.approx(2 * fwd0[0])
    assert ops.memory_bound_bytes(sc).expert_row_bytes == 0.0
    assert ops.memory_bound_bytes(sc).expert_act_measured_bytes == ops.memory_bound_bytes(base).expert_row_bytes > 0
    # the FFN's grouped fc1, activation and fc2 launches are in its measured time, not launches of their own
    assert ops.kernel_counts(base).moe - ops.kernel_counts(sc).moe == ops.EXPERT_FFN_KERNELS
    assert ops.kernel_counts(base).moe_bwd - ops.kernel_counts(sc).moe_bwd == 2 * ops.EXPERT_FFN_KERNELS
    # experts that are not SwiGLU keep the GEMM-only pricing: the fit times SwiGLU
    gelu = sc.replace(model=tiny_model(activation=Activation.GELU))
    assert cc.expert_ffn_calibration(gelu.model, prof, Dtype.FP32, 1) is None and not ops.expert_ffn_measured(gelu)


def test_a_recomputed_activation_is_charged_also_when_the_fit_holds_its_first_run():
    from moesim.sim.workload import layer_costs
    from moesim.spec.training import Recompute, RecomputeModule

    m = tiny_model()
    fit = ExpertFfnCalibration(impl="torch_loop", dtype=Dtype.FP32, hidden=m.hidden_size, ffn=m.expert_ffn_size,
                               tile_rows=1, forward_t0_s=50e-6, forward_eff_max=0.5, backward_t0_s=300e-6,
                               backward_eff_max=0.25)
    sc = _calibrated_scenario((fit,))
    plain = layer_costs(sc)
    again = layer_costs(sc.replace(training=sc.training.replace(
        recompute=Recompute.SELECTIVE, recompute_modules=(RecomputeModule.MOE_ACT,))))
    act_s = ops.memory_bound_bytes(sc).expert_act_measured_bytes / (
        sc.cluster.profile.gpu.hbm_bandwidth_bytes_per_s * sc.cluster.profile.efficiency.hbm)
    assert act_s > 0
    assert again.expert_row_memory_bound_bwd_s - plain.expert_row_memory_bound_bwd_s == pytest.approx(act_s)


def test_datasheet_profiles_price_experts_as_before():
    """No calibration: the activation stays a memory-bound op and the FFN's three launches stay counted."""
    sc = scenario()
    m = sc.model
    assert not ops.expert_ffn_measured(sc)
    mb = ops.memory_bound_bytes(sc)
    assert mb.expert_act_measured_bytes == 0.0
    assert mb.expert_row_bytes == 3 * m.expert_ffn_size / sc.layout.etp * Dtype.BF16.bytes
    assert ops.kernel_counts(sc).moe == ops.MOE_KERNELS + (ops.SHARED_EXPERT_KERNELS if m.num_shared_experts else 0)


def test_profile_loads_expert_ffns_and_names_a_bad_field(tmp_path):
    import yaml

    from moesim.io.profile import parse_profile

    doc = yaml.safe_load(resolve_profile("cpu-gloo-2c-2r").read_text())
    assert doc["calibration"]["expert_ffns"]
    doc["calibration"]["expert_ffns"][0]["backward_eff_max"] = 7
    with pytest.raises(SpecError, match=r"calibration\.expert_ffns\[0\]\.backward_eff_max"):
        parse_profile(doc)


def test_speed_check_retimes_the_profiles_own_samples_and_names_a_missing_file():
    from moesim.calibration import drift

    path = resolve_profile("cpu-gloo-2c-2r")
    samples = drift.profile_samples(path, load_profile(path).calibration.samples)
    check = drift.speed_against(samples, [(128, 256)], flush_bytes=1 << 20, repeats=2, warmup=1)
    assert check.samples == 4 and 0.1 < check.ratio < 10  # 2 sizes x 2 passes, on whatever this machine is doing
    with pytest.raises(SpecError, match="expert_ffn.csv"):
        drift.profile_samples(resolve_profile("cpu-gloo-2c"), load_profile(resolve_profile("cpu-gloo-2c"))
                              .calibration.samples)
    with pytest.raises(SpecError, match="fp32 torch_loop samples"):
        drift.speed_against(samples, [(64, 64)], flush_bytes=0)
