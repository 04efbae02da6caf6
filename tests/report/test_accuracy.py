"""moesim accuracy: the validation set loads strictly, extrapolation in the micro-batch count equals the full
run, and the two smallest published runs still predict what docs/accuracy.json recorded (a cost-model change
must re-run `moesim accuracy` and commit the table with it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from moesim.report.accuracy import (AccuracyRow, accuracy_markdown, accuracy_stats, load_validation_set, predict,
                                    read_baseline, run_accuracy)
from moesim.spec.errors import SpecError
from moesim.spec.simulation import RoutingDraws

ROOT = Path(__file__).resolve().parents[2]
VALIDATION = ROOT / "validation"
RECORD = ROOT / "docs" / "accuracy.json"
SMALLEST = ("dgxc-grok1-proxy2l-h100x8-bf16", "dgxc-grok1-proxy2l-h100x8-fp8")


@pytest.fixture(scope="module")
def runs():
    return {r.run_id: r for r in load_validation_set(VALIDATION)}


def test_the_set_covers_what_issue_12_asks(runs):
    assert len(runs) >= 12
    gpus = {r.scenario.layout.world_size for r in runs.values()}
    assert min(gpus) <= 8 and max(gpus) >= 1024
    assert {r.scenario.cluster.profile.name for r in runs.values()} >= {"dgx-h100", "dgx-h800"}
    experts = {r.scenario.model.num_experts for r in runs.values()}
    assert min(experts) == 8 and max(experts) >= 128
    assert {r.scenario.training.dtype.value for r in runs.values()} >= {"bf16", "fp8"}


def test_extrapolated_micro_batches_equal_the_full_run(runs):
    sc = runs[SMALLEST[0]].scenario  # 512 micro-batches of a 2-layer proxy: affordable whole
    sc = sc.replace(simulation=sc.simulation.replace(routing_draws=RoutingDraws.EXPECTED))  # identical micro-batches
    short = predict(sc, max_micro_batches=32)
    full = predict(sc, max_micro_batches=sc.num_micro_batches)
    assert short.extrapolated and short.simulated_micro_batches == (16, 32) and not full.extrapolated
    assert short.step_s == pytest.approx(full.step_s, rel=1e-9)
    for bucket, seconds in full.breakdown_s.items():
        assert short.breakdown_s[bucket] == pytest.approx(seconds, rel=1e-6, abs=1e-9), bucket
    # with the scenario's own (random) draws the line through two short runs is off by sampling noise only
    noisy = runs[SMALLEST[0]].scenario
    assert predict(noisy, 32).step_s == pytest.approx(predict(noisy, noisy.num_micro_batches).step_s, rel=0.01)


def test_the_two_smallest_runs_predict_what_the_committed_table_says(runs):
    recorded = json.loads(RECORD.read_text())
    rows = run_accuracy([runs[name] for name in SMALLEST])
    for row in rows:
        want = recorded[row.run.run_id]
        assert row.prediction.step_s == pytest.approx(want["predicted_step_s"], rel=1e-6), (
            f"{row.run.run_id}: the cost model changed; re-run `moesim accuracy --force` and commit docs/accuracy.*")
        assert abs(row.error) < 0.9  # loose: a regression check, not the goal


def test_markdown_has_the_statistics_and_the_order_of_layouts(runs):
    rows = run_accuracy([runs[name] for name in SMALLEST])
    text = accuracy_markdown(rows, "header line")
    st = accuracy_stats(rows)
    assert f"median |error| {100 * st.median_abs_error:.1f} %" in text
    assert "## Order of layouts" in text and "grok-1" in text.lower()
    assert all(isinstance(r, AccuracyRow) for r in rows)


def test_a_baseline_shows_each_rows_error_before(runs, tmp_path):
    rows = run_accuracy([runs[name] for name in SMALLEST])
    baseline = tmp_path / "before.json"
    baseline.write_text(json.dumps({SMALLEST[0]: {"error": -0.25}}), encoding="utf-8")
    text = accuracy_markdown(rows, "header line", read_baseline(baseline))
    assert "| error before |" in text
    table = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| -25.0 % |" in table[SMALLEST[0]] and "| new |" in table[SMALLEST[1]]
    assert "Before (the baseline's errors of these 1 runs): median |error| 25.0 %" in text
    (tmp_path / "bad.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SpecError) as err:
        read_baseline(tmp_path / "bad.json")
    assert err.value.one_line().startswith("--baseline")


def _copy_run(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "set" / name
    shutil.copytree(VALIDATION / name, dst)
    return dst


def test_a_run_folder_needs_both_files(tmp_path):
    folder = _copy_run(tmp_path, SMALLEST[0])
    (folder / "scenario.yaml").unlink()
    with pytest.raises(SpecError) as err:
        load_validation_set(tmp_path / "set")
    assert "scenario.yaml" in err.value.one_line()


@pytest.mark.parametrize("edit,key", [({"step_time_s": {"value": -1}}, "step_time_s.value"),
                                      ({"surprise": 1}, "surprise"), ({"id": "another"}, "id")])
def test_published_files_are_read_strictly(tmp_path, edit, key):
    folder = _copy_run(tmp_path, SMALLEST[0])
    path = folder / "published.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **edit}))
    with pytest.raises(SpecError) as err:
        load_validation_set(tmp_path / "set")
    line = err.value.one_line()
    assert key in line and "published.yaml" in line and "\n" not in line


def test_not_a_directory_is_one_line(tmp_path):
    with pytest.raises(SpecError) as err:
        load_validation_set(tmp_path / "missing")
    assert "validation set directory" in err.value.one_line()
