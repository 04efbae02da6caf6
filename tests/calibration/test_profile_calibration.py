"""Calibration samples -> profile YAML -> loaded profile -> used by the simulator; broken tables rejected."""


import numpy as np
import pandas as pd
import pytest
import yaml

from moesim.calibration.profile_writer import build_profile, to_yaml_ready
from moesim.calibration.samples import BUSBW_FACTOR, COLLECTIVE_COLUMNS, KERNEL_COLUMNS
from moesim.cost import gemm as gg
from moesim.cost.compute import expert_time_s
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.network import AlphaBetaNetwork, FlowNetwork
from moesim.spec import ClusterSpec
from moesim.spec.errors import SpecError
from moesim.spec.hardware import Dtype

from helpers import tiny_model

PEAK = 50e9  # FLOP/s of the synthetic device
T0, EFF = 20e-6, 0.8


def kernel_samples() -> pd.DataFrame:
    rows = []
    for m in (1, 4, 16, 64, 256, 1024):
        flop = 2.0 * 8 * m * 256 * 512
        t = 8 * (T0 + m * 2 * 256 * 512 / (PEAK * EFF))
        rows.append(("torch_loop", "fp32", 256, 512, 8, "even", m, flop, t, t, t, 3))
        rows.append(("torch_matmul", "fp32", 256, 512, 8, "even", m, flop, flop / PEAK, flop / PEAK, flop / PEAK, 3))
    return pd.DataFrame(rows, columns=list(KERNEL_COLUMNS))


def collective_samples(alpha=30e-6, algbw=2e9) -> pd.DataFrame:
    rows = []
    for op in ("all_to_all", "all_reduce", "all_gather"):
        for size in (4096, 65536, 1 << 20, 16 << 20):
            t = alpha + size / algbw
            rows.append((op, "intra_node", 4, size, t, t, t, t, size / t / 1e9, size / t / 1e9 * BUSBW_FACTOR[op](4),
                         3, -1, -1))
    return pd.DataFrame(rows, columns=list(COLLECTIVE_COLUMNS))


def synthetic_compute():
    """Compute samples of a 1-thread device at PEAK x 0.9 with 8 x 8 tiles (calibration/compute_samples.py)."""
    from calibration.compute_samples import compute_samples

    rates = gg.GemmRates(sm_count=1, tiles=np.array([[8.0, 8.0]]), sm_flop_per_s=PEAK * 0.9,
                         hbm_bytes_per_s=9e9, input_bytes=4.0, output_bytes=4.0)
    return compute_samples(rates, 2e-6, 9e9)


def write_profile(tmp_path, mutate=None):
    doc = build_profile("cpu-test", kernel_samples(), collective_samples(), {"date": "2026-11-23", "device": "test"},
                        "cpu-test.samples", dtype="fp32", ranks_per_node=4, memory_bytes=4e9,
                        memory_bandwidth_bytes_per_s=10e9, device="synthetic CPU", compute=synthetic_compute())
    doc = to_yaml_ready(doc)
    if mutate:
        mutate(doc)
    path = tmp_path / "cpu-test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_profile_round_trip_and_the_fit_drives_expert_time(tmp_path):
    prof = load_profile(write_profile(tmp_path))
    assert prof.status.startswith("calibrated")
    assert prof.gpu.peak(Dtype.FP32) == pytest.approx(PEAK, rel=1e-6)
    k = prof.calibration.expert_kernels[0]
    assert k.t0_s == pytest.approx(T0, rel=0.02) and k.eff_max == pytest.approx(EFF, rel=0.02)
    model = tiny_model(hidden_size=256, expert_ffn_size=512)
    rows = np.array([[0, 1, 64, 1000]])
    t = expert_time_s(rows, model, prof, Dtype.FP32, 1)
    per_row = model.activation.ffn_matrices * 2 * 256 * 512
    expected = sum(model.activation.ffn_matrices * k.t0_s + r * per_row / (PEAK * k.eff_max) for r in (1, 64, 1000))
    assert t[0] == pytest.approx(expected, rel=1e-9)
    a2a = prof.calibration.collective("all_to_all", "intra_node")
    assert a2a.ranks == 4 and a2a.alpha_s == pytest.approx(30e-6, rel=0.02)


def test_the_network_models_use_the_measured_tables(tmp_path):
    prof = load_profile(write_profile(tmp_path))
    cluster = ClusterSpec(prof, 1)
    size = 1 << 20  # a measured size: the alpha-beta table gives the measured time back
    m = np.full((4, 4), size / 4)
    measured = 30e-6 + size / 2e9
    assert AlphaBetaNetwork(cluster).all_to_all_s(m, np.arange(4)) == pytest.approx(measured, rel=0.03)
    ring = AlphaBetaNetwork(cluster).all_reduce_s(size, np.arange(4))
    assert ring == pytest.approx(30e-6 + size / 2e9, rel=0.03)
    flow = FlowNetwork(cluster)
    assert flow.topology.nvlink_latency_s == pytest.approx(30e-6, rel=0.02)
    assert flow.all_to_all_s(m, np.arange(4)) == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["calibration"]["collectives"]["intra_node"]["all_to_all"]["table"].reverse(),
     "calibration.collectives.intra_node.all_to_all.table"),
    (lambda d: d["calibration"]["collectives"]["intra_node"]["all_reduce"].__setitem__("table", []),
     "calibration.collectives.intra_node.all_reduce.table"),
    (lambda d: d["calibration"]["expert_kernels"][0]["table_rows"][2].__setitem__(1, -0.5),
     "calibration.expert_kernels[0].table_rows"),
    (lambda d: d["calibration"].pop("provenance"), "calibration.provenance"),
    (lambda d: d["calibration"]["expert_kernels"][0].pop("t0_us"), "calibration.expert_kernels[0].t0_us"),
])
def test_broken_calibration_data_is_rejected_with_its_key(tmp_path, mutate, key):
    path = write_profile(tmp_path, mutate)
    with pytest.raises(SpecError) as err:
        load_profile(path)
    assert err.value.key == key and str(path) in str(err.value)


def test_calibrated_tables_never_give_negative_or_vanishing_times(tmp_path):
    frames = pd.concat([collective_samples(), collective_samples().assign(tier="inter_node", ranks=4)])
    doc = build_profile("cpu-test", kernel_samples(), frames, {"date": "2026-11-23", "device": "test"},
                        "s", dtype="fp32", ranks_per_node=4, memory_bytes=4e9, memory_bandwidth_bytes_per_s=10e9,
                        device="synthetic CPU", compute=synthetic_compute())
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(to_yaml_ready(doc)))
    prof = load_profile(path)
    from moesim.network import build_network
    from moesim.spec.network import AllReduceAlgorithm, NetworkModelKind, NetworkSpec

    for model in NetworkModelKind:
        net = build_network(ClusterSpec(prof, 16), NetworkSpec(model=model, all_reduce=AllReduceAlgorithm.NVLS_TREE))
        assert net.all_reduce_s(65536, np.arange(64)) > 0, model
    ab = AlphaBetaNetwork(ClusterSpec(prof, 1))
    tiny, smallest = (ab.all_to_all_s(np.full((4, 4), b / 4), np.arange(4)) for b in (64, 4096))
    assert tiny == pytest.approx(smallest)  # below the table: the smallest size's (latency-bound) time


def test_a_datasheet_base_keeps_its_peak_and_rescales_the_measured_efficiency():
    base = yaml.safe_load((PROFILE_DIR / "dgx-h100.yaml").read_text())
    doc = build_profile("mixed", kernel_samples().replace({"fp32": "bf16"}), collective_samples(),
                        {"date": "2026-11-23"}, "s", dtype="bf16", ranks_per_node=4, memory_bytes=0.0,
                        memory_bandwidth_bytes_per_s=0.0, device="test", base=base)
    k = doc["calibration"]["expert_kernels"][0]
    # efficiency x datasheet peak == measured efficiency x measured peak: the simulated GEMM takes as long
    assert k["eff_max"] * 989.4e12 == pytest.approx(EFF * PEAK, rel=0.02)
    assert doc["node"]["nvlink_peer_overhead_us"]["value"] == 0.0
    assert doc["fabric"]["nic_peer_overhead_us"]["value"] == 0.0
    assert base["node"]["nvlink_peer_overhead_us"]["value"] == 0.6  # the base document itself is untouched
