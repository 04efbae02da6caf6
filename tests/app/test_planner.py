"""The Planner page (AppTest, no browser): plan-small runs and ranks (fastest first), every choice is slower under
the skewed routing than balanced, the winner can be downloaded; the cost guard, an oversized search space and a
broken scenario are one line each; a plan a rerun interrupted is reported as stopped."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "app" / "pages" / "planner.py")


def _page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _ranked(at):
    return next(d.value for d in at.dataframe if "rank" in d.value.columns)


def test_plan_small_runs_ranks_and_offers_the_winner():
    at = _page()
    assert "288 candidates" in at.caption[0].value  # plan-small is the default
    at.button(key="plan_run").click().run()
    assert not at.exception and not at.error
    table = _ranked(at)
    score = table["worst_score_s"]
    assert len(table) == 4 and list(table["rank"]) == [1, 2, 3, 4]
    assert score.iloc[0] <= score.iloc[1] and score.is_monotonic_increasing
    assert next(m.value for m in at.metric if m.label == "plan: worst step time") == f"{score.iloc[0]:.3f} s"
    # the skew the router will meet costs every choice time against balanced routing
    assert (table["scenario (aux-loss)_step_s"] > table["balanced_step_s"]).all()
    robustness = next(d.value for d in at.dataframe if d.value.index.name == "choice")
    assert (robustness["balanced"] == 1.0).all() and (robustness["scenario (aux-loss)"] > 1.0).all()
    assert [b.label for b in at.get("download_button")] == ["plan.yaml", "megatron_args.txt"]
    at.run()  # a rerun shows the finished plan again without planning anew
    assert not at.exception and _ranked(at)["worst_score_s"].tolist() == score.tolist()


def test_the_cost_guard_refuses_the_simulations_in_one_line(monkeypatch):
    monkeypatch.setenv("MOESIM_DASHBOARD_MAX_MEMORY_GIB", "0.001")
    at = _page()
    at.button(key="plan_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert at.error[0].value.startswith("--max-memory-GiB: got 0.001")
    assert not any("rank" in d.value.columns for d in at.dataframe)


def test_an_oversized_search_space_and_a_broken_scenario_are_one_line_each():
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    huge = text + "plan: {tp: [1, 2, 4, 8], pp: [1, 2, 4, 8], ep: [1, 2, 4, 8, 16], " \
                  "micro_batch_size: [1, 2, 3, 4, 5, 6, 7, 8], vpp: [1, 2, 3, 4], cp: [1, 2, 4, 8]}\n"
    at = _page(scenario_yaml=huge)
    at.radio(key="plan_source").set_value("current").run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("plan: got '")
    assert "at most 50,000 candidates" in at.error[0].value
    at.session_state["scenario_yaml"] = text.replace("layout: {tp: 2,", "layout: {tp: 3,")
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value and "current.yaml" in at.error[0].value


def test_a_plan_interrupted_by_a_rerun_is_reported_stopped():
    at = _page(plan_running=("simulate", 2, 4))  # what a plan a click on Stop interrupted leaves behind
    assert [w.value for w in at.warning] == ["Plan stopped while simulating the short list (2 of 4)."]
    at.run()
    assert not at.warning  # said once


def test_a_plan_where_every_candidate_is_pruned_says_so_without_a_traceback():
    """Nothing fits (DeepSeek-V3 on 16 GPUs): the short list is empty, the cost guard has nothing to estimate, and
    the page shows why every candidate was pruned."""
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text().replace("preset: mixtral-8x7b", "preset: deepseek-v3")
    text = text.replace("layout: {tp: 2, pp: 2, dp: 4,", "layout: {tp: 2, pp: 1, dp: 8,")  # 61 layers: pp 1
    text += "plan: {tp: [1, 2], pp: [1], ep: [8], micro_batch_size: [1], recompute: [full]}\n"
    at = _page(scenario_yaml=text)
    at.radio(key="plan_source").set_value("current").run()
    at.button(key="plan_run").click().run()
    assert not at.exception, at.exception
    assert not at.error
    assert [w.value for w in at.warning] == ["No candidate fits: every one was pruned (see the reasons below)."]
    assert any("pruned because" in d.value.columns for d in at.dataframe)
