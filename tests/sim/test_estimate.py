"""estimate_cost: counts match the engine, bytes and seconds are in the right range, and it costs nothing.
Also the progress callback of simulate()."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import simpy
import yaml

from moesim.loader import load_scenario
from moesim.sim.estimate import CostEstimate, estimate_cost
from moesim.sim.simulate import simulate

# Generous on purpose: CI machines are busy and slower or faster than the one the constants come from.
MEMORY_FACTOR, TIME_FACTOR = 3.0, 5.0

VARIANTS = {
    "quickstart-64": {"training": {"global_batch_size": 64}},
    "pp1-flexmoe": {"model": {"preset": "mixtral-8x7b", "num_layers": 8}, "layout": {"tp": 1, "pp": 1, "dp": 16,
                                                                                    "ep": 8, "etp": 1},
                    "placement": {"policy": "flexmoe", "slots_per_gpu": 2, "migration": "overlapped"},
                    "simulation": {"steps": 4, "warmup_steps": 0, "seed": 1}},
    "pp4-tp1": {"layout": {"tp": 1, "pp": 4, "dp": 4, "ep": 4, "etp": 1}, "training": {"global_batch_size": 32},
                "routing": {"distribution": "zipf", "zipf_s": 1.0, "source_sigma": 0.3}},
}

# The child's own peak: VmHWM of its address space. Not ru_maxrss: Linux carries the parent's (pytest's) peak
# into a child started by vfork + exec. Time as CPU seconds: the estimate is for an idle machine, and CPU time
# does not stretch when other jobs share the cores.
_CHILD = """
import json, resource, sys, time
from moesim.loader import load_scenario
from moesim.metrics.summary import summarize
from moesim.sim.simulate import simulate
sc = load_scenario(sys.argv[1])
t0 = time.process_time()
summarize(simulate(sc))
cpu_s = time.process_time() - t0
try:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"cpu_s": cpu_s, "peak_rss_bytes": peak}))
"""


def _write(doc: dict, name: str, tmp_path):
    """quickstart with the variant's sections merged in (layout replaced whole)."""
    for key, value in VARIANTS[name].items():
        doc[key] = value if key == "layout" else {**doc.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(params=sorted(VARIANTS))
def variant(request, tmp_path, quickstart_doc):
    return _write(quickstart_doc, request.param, tmp_path)


def test_events_and_records_match_the_engine(variant, monkeypatch):
    sc = load_scenario(variant)
    processed = [0]
    step = simpy.Environment.step

    def counting_step(env):
        processed[0] += 1
        return step(env)

    monkeypatch.setattr(simpy.Environment, "step", counting_step)
    result = simulate(sc)
    est = estimate_cost(sc)
    # Static placement: only pipeline waits are counted as a bound (< 1 %). Online placement adds moves the
    # estimator cannot foresee (here overlapped migrations waited for mid-step): a few percent.
    rel = 0.01 if "flexmoe" not in variant.stem else 0.05
    assert est.events == pytest.approx(processed[0], rel=rel)
    assert est.record_rows == pytest.approx(len(result.records), rel=rel)
    measured = int(result.records["step"].isin(result.measured_steps).sum())
    assert est.measured_record_rows == pytest.approx(measured, rel=rel)
    assert est.steps == len(result.step_times_s)


def test_memory_and_time_are_within_a_factor_of_a_fresh_process(variant):
    est = estimate_cost(load_scenario(variant))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(variant)], capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 1 / MEMORY_FACTOR <= est.peak_memory_bytes / got["peak_rss_bytes"] <= MEMORY_FACTOR, (est, got)
    assert 1 / TIME_FACTOR <= est.wall_s / got["cpu_s"] <= TIME_FACTOR, (est, got)


def test_estimate_is_cheap_and_scales_linearly_with_the_batch(quickstart_doc, tmp_path):
    quickstart_doc["training"]["global_batch_size"] = 4096
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(quickstart_doc))
    big = load_scenario(path)
    t0 = time.perf_counter()
    est = estimate_cost(big)
    assert time.perf_counter() - t0 < 0.05  # no simulation behind it
    quickstart_doc["training"]["global_batch_size"] = 1024
    path.write_text(yaml.safe_dump(quickstart_doc))
    small = estimate_cost(load_scenario(path))
    assert est.record_rows == pytest.approx(4 * small.record_rows, rel=0.01)
    growth = (est.peak_memory_bytes - est.baseline_memory_bytes) / (small.peak_memory_bytes
                                                                     - small.baseline_memory_bytes)
    assert 3.5 < growth <= 4.0  # linear in the batch, not faster


def test_cost_estimate_is_frozen_and_describes_itself_in_one_line(quickstart_doc, tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(quickstart_doc))
    est = estimate_cost(load_scenario(path))
    assert isinstance(est, CostEstimate)
    with pytest.raises(AttributeError):
        est.events = 0  # type: ignore[misc]
    text = est.describe()
    assert "\n" not in text and "events" in text and "records" in text and "MiB" in text


def test_progress_reports_every_step_including_warmup(quickstart_doc, tmp_path):
    quickstart_doc["simulation"] = {"steps": 2, "warmup_steps": 1, "seed": 0}
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(quickstart_doc))
    sc = load_scenario(path)
    calls: list[tuple[int, int]] = []
    with_progress = simulate(sc, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert with_progress.step_times_s.tobytes() == simulate(sc).step_times_s.tobytes()


def test_writing_the_files_is_part_of_the_estimate(quickstart_doc, tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(quickstart_doc))
    sc = load_scenario(path)
    bare, with_files = estimate_cost(sc), estimate_cost(sc, write_files=True)
    assert bare.write_bytes == 0 and bare.write_s == 0
    assert with_files.write_bytes > 0
    assert with_files.peak_memory_bytes == bare.peak_memory_bytes + with_files.write_bytes
    assert with_files.wall_s == bare.wall_s + with_files.write_s
