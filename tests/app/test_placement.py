"""The Placement page (AppTest): every policy on the same inputs; more spare slots and more redundant experts
balance the GPUs better; a bad input is one line."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from moesim.spec.placement import PlacementPolicyKind

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "placement.py")
STEPS = 20  # two EPLB / SmartMoE periods of placement-compare.yaml: enough to rebalance, quick to simulate


def balance(at: AppTest, policy: str) -> float:
    table = at.dataframe[0].value.set_index("policy")
    return float(table.loc[policy, "balance ratio mean"])


def only(at: AppTest, *policies: str) -> AppTest:
    at.slider(key="placement_steps").set_value(STEPS).run()
    return at.multiselect(key="placement_policies").set_value(list(policies)).run()


def test_every_policy_on_the_same_inputs():
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["static", "fastermoe", "smartmoe", "flexmoe", "ta_moe", "eplb"]
    assert (table["step time p50 (s)"] > 0).all()
    static = balance(at, "static")
    # the policies that re-place or replicate experts balance the GPUs better than the static layout
    assert balance(at, "eplb") < static and balance(at, "flexmoe") < static and balance(at, "smartmoe") < static
    assert table.set_index("policy").loc["static", "placement changes"] == 0
    assert table.set_index("policy").loc["eplb", "placement changes"] > 0


def test_more_redundant_experts_lower_balance_ratio():
    at = only(AppTest.from_file(PAGE, default_timeout=120).run(), "eplb")
    at.slider(key="placement_eplb_redundant").set_value(0).run()
    assert not at.exception and not at.error
    none = balance(at, "eplb")
    at.slider(key="placement_eplb_redundant").set_value(32).run()
    assert balance(at, "eplb") < none * 0.9  # replicas of the hot experts from the first rebalance on


def test_more_slots_lower_balance_ratio():
    at = only(AppTest.from_file(PAGE, default_timeout=120).run(), "flexmoe")
    at.slider(key="placement_slots").set_value(5).run()
    assert not at.exception and not at.error
    few = balance(at, "flexmoe")
    at.slider(key="placement_slots").set_value(8).run()
    assert balance(at, "flexmoe") < few


def test_more_skew_worse_static_balance():
    at = only(AppTest.from_file(PAGE, default_timeout=120).run(), "static")
    at.slider(key="placement_skew").set_value(0.5).run()
    mild = balance(at, "static")
    at.slider(key="placement_skew").set_value(1.5).run()
    assert not at.exception and not at.error
    assert balance(at, "static") > mild


def test_what_if_scenario_with_an_impossible_layout_is_one_line():
    at = AppTest.from_file(PAGE, default_timeout=120)
    quickstart = (Path(PAGE).parents[2] / "scenarios" / "quickstart.yaml").read_text()
    at.session_state["scenario_yaml"] = quickstart.replace("dp: 4", "dp: 3")
    at.run()
    at.radio(key="placement_source").set_value("the What-if page's scenario").run()
    assert not at.exception
    [shown] = [e.value for e in at.error]
    assert shown.startswith("what-if.yaml: layout") and "\n" not in shown


def test_the_cost_guard_sums_the_policies_one_request_runs(monkeypatch):
    """Every policy's run fits the wall-time limit on its own, all six together do not: refused in one line before
    any is simulated (the runs of one request add up, as a sweep's points do); one policy alone runs."""
    from app.common import document_text, scenario_document, scenario_from_text, with_values
    from moesim.sim.estimate import estimate_cost

    steps = 7  # no other test runs this many: nothing of it is cached
    doc = {k: v for k, v in scenario_document((Path(PAGE).parents[2] / "scenarios" / "placement-compare.yaml")
                                              .read_text()).items() if k != "sweep"}
    walls = [estimate_cost(scenario_from_text(document_text(with_values(
        doc, {("simulation", "steps"): steps, ("placement", "policy"): p.value})), "estimate")).wall_s
        for p in PlacementPolicyKind]
    limit = sum(walls) / 2
    assert max(walls) < 0.8 * limit  # each alone fits with room to spare
    monkeypatch.setenv("MOESIM_DASHBOARD_MAX_WALL_S", repr(limit))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.slider(key="placement_steps").set_value(steps).run()
    assert not at.exception
    [shown] = [e.value for e in at.error]
    assert shown.startswith("--max-wall-s: got ") and "expected a run estimated to fit" in shown
    assert "\n" not in shown
    assert not at.dataframe
    at.multiselect(key="placement_policies").set_value(["static"]).run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["policy"]) == ["static"]
