"""The plan as tables (the dashboard's), its cost-guard hook, and the files' text shared with write_plan."""

from pathlib import Path

import numpy as np
import pytest

from moesim.io.strict import read_yaml_mapping
from moesim.loader import load_scenario
from moesim.metrics.predict import simulated_runs
from moesim.plan.output import pareto_arrays, plan_yaml_text, write_plan
from moesim.plan.run import plan, routing_conditions
from moesim.plan.tables import robustness_frame, shortlist_frame
from moesim.spec.errors import SpecError

PLAN_SMALL = Path(__file__).resolve().parents[2] / "scenarios" / "plan-small.yaml"


@pytest.fixture(scope="module")
def planned():
    sc = load_scenario(PLAN_SMALL)
    seen = []
    return sc, plan(sc, check=seen.extend), seen


def test_the_check_sees_every_simulation_before_any_and_can_refuse_them(planned, monkeypatch):
    sc, result, seen = planned
    expected = [run for e in result.shortlist for variant in routing_conditions(e.scenario, result.plan).values()
                for run in simulated_runs(variant, result.plan.max_micro_batches)]
    assert seen == expected and len(seen) == 4 * 2
    import moesim.plan.run as run_module

    def never(*args, **kwargs):
        raise AssertionError("simulated after the check refused")

    monkeypatch.setattr(run_module, "predict", never)

    def refuse(runs):
        raise SpecError("--max-wall-s", 1, "a run estimated to fit")

    with pytest.raises(SpecError, match="max-wall-s"):
        plan(sc, check=refuse)


def test_the_tables_hold_the_short_list_in_order(planned):
    _, result, _ = planned
    table = shortlist_frame(result)
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["worst_score_s"].tolist() == [e.score_s for e in result.shortlist]
    assert table["worst_score_s"].is_monotonic_increasing
    assert table["balanced_step_s"].tolist() == [e.predictions["balanced"].step_s for e in result.shortlist]
    assert table["explanation"].iloc[0].split("\n") == list(result.shortlist[0].explanation)
    robust = robustness_frame(result)
    assert len(robust) == 4 * 2 and robust["condition"].tolist()[:2] == ["balanced", "scenario (aux-loss)"]
    first = robust[robust["condition"] == "balanced"]
    assert (first["step_over_first"] == 1.0).all()
    skewed = robust[robust["condition"] != "balanced"]
    assert (skewed["step_over_first"] > 1.0).all()  # skew costs every choice time


def test_the_downloads_are_the_files_write_plan_writes(planned, tmp_path):
    _, result, _ = planned
    doc = dict(read_yaml_mapping(PLAN_SMALL, "scenario"))
    write_plan(tmp_path, result, doc, "t")
    assert (tmp_path / "plan.yaml").read_text() == plan_yaml_text(doc, result.winner)
    step_s, headroom, shortlist, winner = pareto_arrays(result)
    fits = [s for s in result.screened if not s.reason]
    assert len(step_s) == len(fits) and np.all(headroom > 0) and len(shortlist) == 4
    assert fits[winner] is result.winner.screened
