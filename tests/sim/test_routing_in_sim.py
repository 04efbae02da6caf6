"""Routing, gates and traces inside whole simulations."""

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.loader import load_scenarios
from moesim.metrics.summary import summarize
from moesim.sim.simulate import simulate
from moesim.spec import ParallelLayout
from moesim.spec.routing import GateSpec, RoutingDistribution, RoutingSpec
from moesim.spec.trace import RoutingTrace

from helpers import scenario, tiny_model

ROOT = Path(__file__).resolve().parents[2]
SHARED_TRACE = ROOT.parent / "shared" / "traces" / "smartmoe-ae" / "counts.npz"
LAYOUT = ParallelLayout(tp=1, pp=1, dp=8, ep=8)


def run(gate=GateSpec(), zipf_s=1.5, **kw):
    sc = scenario(layout=LAYOUT, model=tiny_model(num_experts=16), seq_len=1024, zipf_s=zipf_s, **kw).replace(gate=gate)
    return summarize(simulate(sc))


def test_capacity_drops_tokens_and_shortens_the_straggler():
    dropless, capped = run(), run(GateSpec(capacity_factor=1.0))
    assert dropless.dropped_fraction == 0 and capped.dropped_fraction > 0.2
    assert capped.step_time_s < dropless.step_time_s
    assert capped.gpu_load_max_over_mean < dropless.gpu_load_max_over_mean


def test_padding_costs_time_and_bytes():
    plain, padded = run(GateSpec(capacity_factor=2.0)), run(GateSpec(capacity_factor=2.0, pad_to_capacity=True))
    assert padded.padding_fraction > 0.2 and plain.padding_fraction == 0
    assert padded.step_time_s > plain.step_time_s
    assert padded.all_to_all_bytes_per_step > plain.all_to_all_bytes_per_step


def test_more_skew_drops_more_at_fixed_capacity():
    drops = [run(GateSpec(capacity_factor=1.25), zipf_s=s).dropped_fraction for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(drops, drops[1:])), drops


def test_replaying_a_trace_uses_its_counts():
    counts = np.zeros((2, 1, 1, 8, 16), dtype=np.int64)
    counts[..., 0] = 1024  # expert 0 gets every token once (the top-k cap), the rest share the remainder
    counts[..., 1:] = 1024 // 15
    trace = RoutingTrace(counts, np.array([1, 2]), 2, "test")
    sc = scenario(layout=LAYOUT, model=tiny_model(num_experts=16), seq_len=1024)
    sc = sc.replace(routing=RoutingSpec(RoutingDistribution.TRACE, trace=trace, trace_ref="test"))
    s = summarize(simulate(sc))
    balanced = summarize(simulate(scenario(layout=LAYOUT, model=tiny_model(num_experts=16), seq_len=1024)))
    assert s.expert_load_max_over_mean > 5
    assert s.step_time_s > balanced.step_time_s


def test_sweep_file_expands_and_runs(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    quick = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    path.write_text(quick.replace("profile: dgx-h100", f"profile: {ROOT / 'hw_profiles' / 'dgx-h100.yaml'}")
                    + "sweep:\n  routing.zipf_s: [0.0, 1.0]\n  gate.capacity_factor: [1.0, null]\n")
    keys, points = load_scenarios(path)
    assert keys == ["routing.zipf_s", "gate.capacity_factor"] and len(points) == 4
    assert points[3][1].gate.capacity_factor is None and points[3][1].routing.zipf_s == 1.0
    out = tmp_path / "out"
    assert main(["run", str(path), "--steps", "1", "--out", str(out)]) == 0
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert len((out / "sweep.csv").read_text().splitlines()) == 5


def test_sweep_errors_name_the_point(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    quick = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    path.write_text(quick.replace("profile: dgx-h100", f"profile: {ROOT / 'hw_profiles' / 'dgx-h100.yaml'}")
                    + "sweep:\n  layout.ep: [8, 3]\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "layout.ep" in err and "sweep point ep=3" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not SHARED_TRACE.is_file(), reason="../shared trace absent")
def test_smartmoe_replay_scenario_runs(tmp_path, capsys):
    assert main(["run", str(ROOT / "scenarios" / "smartmoe-replay.yaml"), "--steps", "5",
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["expert_load_max_over_mean"] > 5  # the collapsed, no-aux-loss routing of the real trace
    assert summary["dropped_fraction"] == 0


def test_layer_all_to_all_bytes_match_the_records():
    sc = scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4), zipf_s=1.0).replace(
        gate=GateSpec(capacity_factor=1.5, pad_to_capacity=True))
    result = simulate(sc)
    s = summarize(result)
    per_step = result.layer_stats.groupby("step")["a2a_bytes"].sum().mean()
    # the records count dispatch and combine, forward and backward: four times the dispatch bytes
    assert s.all_to_all_bytes_per_step == pytest.approx(4 * per_step)
