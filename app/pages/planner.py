"""Planner: `moesim plan` on the scenario being worked on (the What-if page's) or a shipped one, with progress and a
Stop button; the ranked, explained short list, the Pareto plot of every candidate, how each choice degrades under
the plan's routing conditions, and the winner as plan.yaml and a Megatron-LM launch command.

Cancelling: a click on Stop (or any other input) makes Streamlit rerun the page, which interrupts the plan at its
next progress update (a Streamlit call); the rerun finds the plan's `running` mark left behind and says where it
stopped. The cost guard of `moesim run` (moesim.sim.estimate.check_cost, the dashboard's limits) is applied to
every scenario the plan would simulate, before it simulates any; the screen is bounded by its candidate count and
stopped once it has run longer than the same wall-time limit."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from app.common import (MOESIM_ERRORS, cost_limits, current_scenario_text, scenario_document, scenario_from_text,
                        shipped_scenarios, show_error)
from moesim import units
from moesim.export.megatron import megatron_command
from moesim.plan.output import pareto_arrays, plan_yaml_text
from moesim.plan.run import PlanResult, plan
from moesim.plan.space import count
from moesim.plan.tables import robustness_frame, shortlist_frame
from moesim.sim.estimate import check_cost
from moesim.spec.errors import SpecError
from moesim.spec.plan import PlanSpec
from moesim.spec.scenario import Scenario
from moesim.viz.pareto import pareto_figure

SOURCES = {"shipped": "a shipped scenario", "current": "the scenario of the What-if page"}
DEFAULT_SCENARIO = "plan-small"
# The screen keeps every candidate (its scenario, estimate and reason) in memory: 2,688 candidates (the default
# search space) take 0.4 s and a few MB here, so 50,000 bound one request to seconds and tens of MB.
MAX_PLAN_CANDIDATES = 50_000
RUNNING, RESULT = "plan_running", "plan_result"  # session state: the plan in progress, the last finished one
STAGES = {"screen": "screening candidates (closed-form estimate)", "simulate": "simulating the short list"}


@dataclass(frozen=True)
class Finished:
    key: str  # the scenario text's hash
    name: str
    result: PlanResult
    doc: dict  # the scenario document, for plan.yaml
    wall_s: float


def _chosen() -> tuple[str, str]:
    """(scenario text, name) of the scenario to plan."""
    source = st.radio("plan", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="plan_source")
    if source == "current":
        return current_scenario_text(), "current"
    shipped = shipped_scenarios()
    names = list(shipped)
    name = st.selectbox("scenario", names, key="plan_scenario",
                        index=names.index(DEFAULT_SCENARIO) if DEFAULT_SCENARIO in names else 0)
    return shipped[name].read_text(encoding="utf-8"), name


def _describe(sc: Scenario, spec: PlanSpec, candidates: int) -> None:
    where = "its plan: section" if sc.plan is not None else "the default search space (no plan: section)"
    st.caption(f"{sc.name}: {sc.model.name} on {sc.cluster.nodes} x {sc.cluster.profile.name} "
               f"({sc.cluster.num_gpus} GPUs). Searching {where}: {candidates:,} candidates; the best "
               f"{spec.shortlist} simulated for {spec.steps} steps under {', '.join(spec.routing)}, ranked by the "
               f"{spec.rank_by.value} step time.")


def _guarded_plan(sc: Scenario, spec: PlanSpec, bar) -> PlanResult:
    """plan() with progress in `bar`, the screen stopped past the wall-time limit and the cost guard before the
    simulations. Raises SpecError naming the limit (as `moesim run` names its flags)."""
    max_wall_s, max_memory_GiB = cost_limits()
    t0 = time.perf_counter()
    shown: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        st.session_state[RUNNING] = (stage, done, total)
        percent = 100 * done // max(total, 1)
        if shown.get(stage) != percent:  # a Streamlit call per percent: where a rerun (Stop) interrupts
            shown[stage] = percent
            bar.progress(percent / 100, text=f"{STAGES[stage]}: {done:,} of {total:,}")
        elapsed_s = time.perf_counter() - t0
        if stage == "screen" and elapsed_s > max_wall_s:
            raise SpecError("--max-wall-s", max_wall_s, f"a plan whose screen finishes in time: {done:,} of "
                            f"{total:,} candidates took {elapsed_s:.1f} s (narrow the plan: lists)")

    def guard(runs: list[Scenario]) -> None:
        if not runs:  # every candidate pruned: nothing to simulate, nothing to refuse (check_cost needs one)
            return
        bar.progress(0.0, text=f"checking the cost of {len(runs)} simulations")
        check_cost(runs, max_wall_s, max_memory_GiB, write_files=False)

    return plan(sc, spec, progress=progress, check=guard)


def _run(text: str, name: str) -> Finished | None:
    """Plan the scenario of `text`; None (the error shown in one line) when it cannot be planned."""
    try:
        sc = scenario_from_text(text, name)
        spec = sc.plan or PlanSpec()
        candidates = count(spec)
        _describe(sc, spec, candidates)
        if candidates > MAX_PLAN_CANDIDATES:
            raise SpecError("plan", f"{candidates:,} candidates", f"at most {MAX_PLAN_CANDIDATES:,} candidates "
                            "for one dashboard request (fewer values in the plan: lists; `moesim plan` has no limit)")
        doc = scenario_document(text)
    except MOESIM_ERRORS as err:
        show_error(err)
        return None
    run, stop = st.columns([1, 6])
    if not run.button("Run plan", type="primary", key="plan_run"):
        return None
    slot = stop.empty()  # Stop is shown while the plan runs: a click reruns the page, which interrupts the plan
    slot.button("Stop plan", key="plan_stop", help="stops the plan at its next progress update")
    bar = st.progress(0.0, text="starting")
    st.session_state[RUNNING] = ("screen", 0, candidates)
    t0 = time.perf_counter()
    try:
        result = _guarded_plan(sc, spec, bar)
    except MOESIM_ERRORS as err:
        result = err
    # not reached when a rerun interrupts the plan (Streamlit raises out of the progress update): the mark stays
    # for the next run to report
    st.session_state.pop(RUNNING, None)
    slot.empty()
    bar.empty()
    if not isinstance(result, PlanResult):
        show_error(result)
        return None
    return Finished(_key(text), name, result, doc, time.perf_counter() - t0)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def _ranked(done: Finished) -> None:
    result = done.result
    pruned = sum(1 for s in result.screened if s.reason)
    st.caption(f"{len(result.screened):,} candidates screened in {result.screen_s:.1f} s ({pruned:,} pruned); "
               f"{len(result.shortlist)} layout x placement x capacity choices simulated in {result.simulate_s:.1f} "
               f"s under {', '.join(result.plan.routing)}; ranked by the {result.plan.rank_by.value} step time. "
               f"{done.wall_s:.1f} s in all.")
    if result.winner is None:
        st.warning("No candidate fits: every one was pruned (see the reasons below).")
        reasons = pd.Series([s.reason for s in result.screened]).value_counts().rename_axis("pruned because")
        st.dataframe(reasons.reset_index(), hide_index=True, width="stretch")
        return
    table = shortlist_frame(result)
    score = f"{result.plan.rank_by.value}_score_s"
    cols = st.columns(3)
    cols[0].metric(f"plan: {result.plan.rank_by.value} step time", f"{table[score].iloc[0]:.3f} s")
    cols[1].metric("screen's estimate", f"{table['estimated_step_s'].iloc[0]:.3f} s")
    cols[2].metric("peak memory", f"{table['peak_memory_bytes'].iloc[0] / units.GiB:.1f} GiB",
                   help="the busiest GPU's, balanced routing")
    st.markdown(f"**#1**: {table['layout'].iloc[0]}, {table['choice'].iloc[0]}")
    shown = table.drop(columns="explanation").assign(peak_memory_bytes=table["peak_memory_bytes"] / units.GiB)
    st.dataframe(shown.rename(columns={"peak_memory_bytes": "peak_memory_GiB"}), hide_index=True, width="stretch",
                 column_config={"dropped_fraction": st.column_config.NumberColumn("dropped", format="percent"),
                                "peak_memory_GiB": st.column_config.NumberColumn(format="%.1f")})
    for row in table.itertuples():
        with st.expander(f"#{row.rank} {row.layout}, {row.choice}: why"):
            st.markdown("\n".join(f"- {line}" for line in row.explanation.split("\n")))


def _robustness(result: PlanResult) -> None:
    frame = robustness_frame(result)
    frame["#"] = "#" + frame["rank"].astype(str)
    frame["choice"] = frame["#"] + " " + frame["layout"] + ", " + frame["choice"]
    order = list(result.shortlist[0].predictions)
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X("#:N", sort=None, title="short list (rank)"),
        xOffset=alt.XOffset("condition:N", sort=order),
        y=alt.Y("step_s:Q", title="simulated step time (s)"),
        color=alt.Color("condition:N", sort=order, title="routing condition"),
        tooltip=["choice", "condition", alt.Tooltip("step_s", format=".4f"),
                 alt.Tooltip("step_over_first", format=".3f"), alt.Tooltip("dropped_fraction", format=".2%")])
    st.altair_chart(chart.properties(height=320), width="stretch")
    st.dataframe(frame.pivot(index="choice", columns="condition", values="step_over_first")[order],
                 width="stretch")
    st.caption(f"Step time under each condition over the same choice's under {order[0]}: how much it degrades "
               "when routing is skewed that way.")


def _downloads(done: Finished) -> None:
    winner = done.result.winner
    cols = st.columns(2)
    cols[0].download_button("plan.yaml", plan_yaml_text(done.doc, winner), file_name="plan.yaml",
                            mime="application/x-yaml", key="download_plan", help="`moesim run plan.yaml` reruns it")
    cols[1].download_button("megatron_args.txt", megatron_command(winner.scenario).text(),
                            file_name="megatron_args.txt", mime="text/plain", key="download_megatron",
                            help="the Megatron-LM launch command of the winner (moesim.export.megatron)")


def _show(done: Finished) -> None:
    st.subheader(f"Short list of {done.name}")
    _ranked(done)
    if done.result.winner is None:
        return
    tabs = st.tabs(["Pareto", "Skew robustness", "Downloads"])
    with tabs[0]:
        pareto = pareto_arrays(done.result)
        if pareto is not None:
            st.pyplot(pareto_figure(*pareto, f"moesim plan: {done.name}"), width="stretch")
    with tabs[1]:
        _robustness(done.result)
    with tabs[2]:
        _downloads(done)


def page() -> None:
    st.title("Planner")
    stopped = st.session_state.pop(RUNNING, None)  # left by a plan a rerun interrupted
    text, name = _chosen()
    if stopped is not None and not st.session_state.get("plan_run"):
        stage, done, total = stopped
        st.warning(f"Plan stopped while {STAGES[stage]} ({done:,} of {total:,}).")
    finished = _run(text, name)
    if finished is not None:
        st.session_state[RESULT] = finished
    last: Finished | None = st.session_state.get(RESULT)
    if last is not None and last.key == _key(text):
        _show(last)


page()
