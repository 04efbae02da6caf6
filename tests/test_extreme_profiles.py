"""A profile whose every number sits at a bound of moesim.spec.bounds still simulates and writes finite files:
the bounds are what keeps derived times inside float range (a 1e-300 TFLOP/s peak once made every timestamp in
trace.json inf, a 1e300 us latency broke the step-time histogram with "Too many bins")."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[1]
_H100 = yaml.safe_load((ROOT / "hw_profiles" / "dgx-h100.yaml").read_text(encoding="utf-8"))
_QUICKSTART = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text(encoding="utf-8"))

SLOWEST = {  # every rate at its lowest bound, every latency at its highest
    ("gpu", "peak_dense_TFLOPs", "bf16"): 0.001, ("gpu", "hbm_bandwidth_GBps"): 0.001,
    ("node", "nvlink_GBps"): 0.001, ("node", "nvlink_latency_us"): 1e6, ("node", "nvlink_efficiency"): 0.001,
    ("node", "nvlink_peer_overhead_us"): 1e6, ("fabric", "nic_Gbps"): 0.008, ("fabric", "nic_latency_us"): 1e6,
    ("fabric", "nic_efficiency"): 0.001, ("fabric", "oversubscription"): 100.0,
    ("fabric", "nic_peer_overhead_us"): 1e6, ("compute", "gemm_efficiency"): 0.001,
    ("compute", "attention_efficiency"): 0.001,
}
FASTEST = {
    ("gpu", "peak_dense_TFLOPs", "bf16"): 1e9, ("gpu", "hbm_bandwidth_GBps"): 1e6, ("gpu", "hbm_GB"): 1e6,
    ("node", "nvlink_GBps"): 1e6, ("node", "nvlink_latency_us"): 0.0, ("node", "nvlink_peer_overhead_us"): 0.0,
    ("fabric", "nic_Gbps"): 8e6, ("fabric", "nic_latency_us"): 0.0, ("fabric", "nic_peer_overhead_us"): 0.0,
}


def _profile(values: dict) -> dict:
    doc = copy.deepcopy(_H100)
    for path, value in values.items():
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = {"value": value, "source": "a bound of moesim.spec.bounds"}
    return doc


def _finite(node) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, dict):
        return all(_finite(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite(v) for v in node)
    return True


@pytest.mark.parametrize("values", [SLOWEST, FASTEST], ids=["slowest", "fastest"])
def test_a_profile_at_its_bounds_runs_and_writes_finite_files(tmp_path, capsys, values):
    profile = tmp_path / "extreme.yaml"
    profile.write_text(yaml.safe_dump(_profile(values), sort_keys=False), encoding="utf-8")
    scenario = copy.deepcopy(_QUICKSTART)
    scenario["cluster"]["profile"] = str(profile)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--steps", "2"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert _finite(summary) and summary["step_time_s"] > 0
    trace = json.loads((out / "trace.json").read_text(encoding="utf-8"))
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert events and all(math.isfinite(e["ts"]) and math.isfinite(e["dur"]) for e in events)
    assert (out / "step_time_hist.png").read_bytes().startswith(b"\x89PNG")
