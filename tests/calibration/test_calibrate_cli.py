"""`moesim calibrate --quick` on 2 gloo ranks writes a profile the simulator runs on; the cluster-kit path; a samples
directory rebuilds the same profile, and one without the compute CSVs says which are missing."""

import json
import shutil

import pytest
import yaml

from moesim.cli import main
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.metrics.summary import summarize
from moesim.sim.simulate import simulate
from moesim.spec import ClusterSpec, ParallelLayout
from moesim.spec.hardware import Dtype
from moesim.spec.network import NetworkModelKind, NetworkSpec

from helpers import scenario


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "cpu-ci.yaml"
    assert main(["calibrate", "--quick", "--ranks", "2", "--out", str(out)]) == 0
    return out


def test_quick_calibration_writes_a_loadable_profile_with_samples(calibrated):
    prof = load_profile(calibrated)
    assert prof.status.startswith("calibrated") and prof.node.gpus_per_node == 2
    cal = prof.calibration
    assert cal.provenance["ranks"] == [2] and cal.provenance["torch"] and cal.provenance["date"]
    assert cal.expert_kernels and cal.collective("all_to_all", "intra_node").ranks == 2
    ffn = cal.expert_ffns[0]  # the quick shape, forward and backward
    assert len(cal.expert_ffns) == 1 and (ffn.impl, ffn.hidden, ffn.ffn) == ("torch_loop", 256, 512)
    assert (calibrated.with_name("cpu-ci.samples") / "expert_ffn.csv").is_file()
    samples = calibrated.with_name("cpu-ci.samples")
    assert (samples / "kernels.csv").is_file() and (samples / "collectives.csv").is_file()
    assert prof.gpu.peak(Dtype.FP32) > 0
    for name in ("gemm.csv", "elementwise.csv", "launch.csv", "attention.csv"):
        assert (samples / name).is_file(), name
    compute = json.loads((samples / "host.json").read_text())["compute"]
    assert compute["mode"] == "quick" and compute["sm_count"] == 1 and compute["device_kind"] == "cpu"
    assert compute["cache_bytes"] == 64 << 20  # what a quick calibration's operands rotate through and it flushes
    assert compute["attention"]["mode"] == "quick" and compute["attention"]["seconds"] <= compute["seconds"]
    table = prof.efficiency.attention
    assert table.seq_lens == tuple(compute["attention"]["seq_lens"]) and len(table.head_dims) == 2
    assert 0 < table.at(128, 64, backward=False) <= 1 and 0 < table.at(128, 64, backward=True) <= 1
    assert prof.gpu.sm_count == 1 and 0 < prof.efficiency.kernel_launch_s < 1e-3
    assert 0 < prof.efficiency.gemm <= 1 and 0 < prof.efficiency.hbm <= 1
    for key in ("compute.gemm_efficiency", "compute.gemm_tiles", "compute.hbm_efficiency", "compute.kernel_launch_us",
                "compute.attention_efficiency", "gpu.sm_count"):
        assert prof.provenance[key].startswith("moesim calibrate, "), key
    assert "MAPE" in prof.provenance["compute.gemm_efficiency"]


@pytest.mark.parametrize("model", list(NetworkModelKind))
def test_the_simulator_runs_on_the_calibrated_profile(calibrated, model):
    sc = scenario(nodes=1, gpus_per_node=2, layout=ParallelLayout(tp=1, pp=1, dp=2, ep=2), steps=1)
    sc = sc.replace(cluster=ClusterSpec(load_profile(calibrated), 1), training=sc.training.replace(dtype=Dtype.FP32),
                    network=NetworkSpec(model=model))
    s = summarize(simulate(sc))
    assert s.step_time_s > 0 and s.breakdown_s["all_to_all"] > 0


def test_existing_profile_is_not_overwritten_and_samples_rebuild_it(calibrated, tmp_path, capsys):
    assert main(["calibrate", "--quick", "--ranks", "2", "--out", str(calibrated)]) == 2
    assert "--force" in capsys.readouterr().err
    rebuilt = tmp_path / "rebuilt.yaml"
    samples = calibrated.with_name("cpu-ci.samples")
    assert main(["calibrate", "--from-samples", str(samples), "--out", str(rebuilt)]) == 0
    assert load_profile(rebuilt).calibration.collective("all_to_all", "intra_node") is not None
    original, again = (yaml.safe_load(p.read_text()) for p in (calibrated, rebuilt))
    assert again["compute"] == original["compute"] and again["gpu"] == original["gpu"]  # fits are deterministic
    kit_run = samples / "ranks2"  # a cluster-kit style directory: collectives only, the rest from a datasheet
    assert main(["calibrate", "--from-samples", str(kit_run), "--out", str(tmp_path / "kit.yaml")]) == 2
    assert "--base" in capsys.readouterr().err
    assert main(["calibrate", "--from-samples", str(kit_run), "--base", str(PROFILE_DIR / "dgx-h100.yaml"),
                 "--out", str(tmp_path / "kit.yaml")]) == 0
    kit = load_profile(tmp_path / "kit.yaml")
    assert kit.gpu.peak(Dtype.BF16) > 900e12 and kit.calibration.collective("all_to_all", "intra_node")
    assert "no gemm.csv, elementwise.csv, launch.csv" in capsys.readouterr().out  # the kit measures no compute
    assert kit.provenance["compute.gemm_efficiency"].startswith("not measured by this calibration")
    assert kit.provenance["compute.attention_efficiency"].startswith("not measured by this calibration")
    assert kit.efficiency.attention == load_profile(PROFILE_DIR / "dgx-h100.yaml").efficiency.attention
    assert kit.efficiency.gemm == load_profile(PROFILE_DIR / "dgx-h100.yaml").efficiency.gemm
    assert main(["calibrate", "--from-samples", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.yaml")]) == 2
    assert main(["calibrate", "--ranks", "1", "--out", str(tmp_path / "y.yaml")]) == 2



@pytest.mark.parametrize("removed", [("launch.csv",), ("gemm.csv", "elementwise.csv", "launch.csv"),
                                     ("attention.csv",)])
def test_a_samples_directory_without_the_compute_csvs_is_one_line(calibrated, tmp_path, capsys, removed):
    old = tmp_path / "old.samples"
    shutil.copytree(calibrated.with_name("cpu-ci.samples"), old)
    for name in removed:
        (old / name).unlink()
    assert main(["calibrate", "--from-samples", str(old), "--out", str(tmp_path / "old.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"moesim: error: {old}: {', '.join(removed)}: got no such file;")
    assert "--base" in err
    assert not (tmp_path / "old.yaml").exists()


def test_collective_samples_from_before_the_mean_are_fitted_to_their_medians(calibrated, tmp_path, capsys):
    import pandas as pd

    old = tmp_path / "old.samples"
    shutil.copytree(calibrated.with_name("cpu-ci.samples"), old)
    frame = pd.read_csv(old / "collectives.csv")
    medians = frame.drop(columns="time_mean_s")
    medians.to_csv(old / "collectives.csv", index=False)
    assert main(["calibrate", "--from-samples", str(old), "--out", str(tmp_path / "old.yaml")]) == 0
    out = capsys.readouterr().out
    assert "no time_mean_s column" in out and "time_median_s" in out
    fit = load_profile(tmp_path / "old.yaml").calibration.collective("all_to_all", "intra_node")
    same = medians.assign(time_mean_s=medians["time_median_s"])[list(frame.columns)]
    same.to_csv(old / "collectives.csv", index=False)  # the same rows with the medians as means: the same fit
    assert main(["calibrate", "--from-samples", str(old), "--out", str(tmp_path / "same.yaml")]) == 0
    assert load_profile(tmp_path / "same.yaml").calibration.collective("all_to_all", "intra_node") == fit
