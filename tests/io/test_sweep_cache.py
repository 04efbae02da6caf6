"""The points of a sweep share what they read: one trace in memory, cut and fitted once."""

from __future__ import annotations

from pathlib import Path

from moesim.loader import load_scenarios

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "traces" / "tiny-moe-stdlib.parquet"


def _sweep(tmp_path: Path, routing: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"""name: s
cluster: {{profile: dgx-h100, nodes: 1}}
model: {{preset: olmoe-1b-7b, num_layers: 2}}
training: {{global_batch_size: 8, seq_len: 512, micro_batch_size: 1}}
layout: {{tp: 1, pp: 1, dp: 8, ep: 8}}
routing: {routing}
simulation: {{steps: 1}}
sweep: {{simulation.seed: [0, 1, 2, 3]}}
""")
    return path


def test_a_replayed_trace_is_read_once_per_sweep(tmp_path):
    _, points = load_scenarios(_sweep(tmp_path, f"{{trace: {TRACE}, trace_layers: [1, 0]}}"))
    traces = {id(sc.routing.trace) for _, sc in points}
    assert len(points) == 4 and len(traces) == 1
    assert points[0][1].routing.trace.num_layers == 2


def test_a_fitted_trace_is_fitted_once_per_sweep(tmp_path, monkeypatch):
    import moesim.loader as loader

    calls = []
    real_fit = loader.fit_trace
    monkeypatch.setattr(loader, "fit_trace", lambda trace: calls.append(trace) or real_fit(trace))
    _, points = load_scenarios(_sweep(tmp_path, f"{{fit_from: {TRACE}}}"))
    assert len(points) == 4 and len(calls) == 1
    assert len({sc.routing.per_layer for _, sc in points}) == 1
