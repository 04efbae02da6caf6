"""Placement: every expert placement policy on the same inputs -- step time and GPU balance ratio step by step,
and the migrations each policy paid for. The inputs are scenarios/placement-compare.yaml (its sweep left out) or
the What-if page's scenario; the sidebar changes the skew, the expert slots per GPU and EPLB's redundant
experts for all policies at once."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app import charts
from app.common import (MOESIM_ERRORS, SCENARIOS_DIR, SKEW_PARAM, check_total_cost, current_scenario_text,
                        document_text, scenario_document, scenario_from_text, show_error, simulate_run, with_values)
from moesim import units
from moesim.metrics.summary import balance_ratio_per_step
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.scenario import Scenario

KEY = "placement_"
COMPARE_FILE = SCENARIOS_DIR / "placement-compare.yaml"
SOURCES = ("placement-compare.yaml", "the What-if page's scenario")
POLICIES = [p.value for p in PlacementPolicyKind]
MAX_STEPS = 200
EPLB_REDUNDANT = ("placement", "eplb", "redundant_experts")


def inputs() -> tuple[dict, str, Scenario]:
    """(document without its sweep, name, its scenario) of the inputs chosen."""
    source = st.sidebar.radio("Inputs", SOURCES, key=KEY + "source")
    text, name = (COMPARE_FILE.read_text(encoding="utf-8"), COMPARE_FILE.stem) if source == SOURCES[0] \
        else (current_scenario_text(), "what-if")
    doc = {k: v for k, v in scenario_document(text).items() if k != "sweep"}
    return doc, name, scenario_from_text(document_text(doc), name)


def knobs(doc: dict, sc: Scenario) -> tuple[dict, list[str]]:
    """The sidebar's changes for every policy (key path -> value) and the policies to compare."""
    bar = st.sidebar
    values: dict[tuple[str, ...], object] = {}
    family = sc.routing.distribution
    if family in SKEW_PARAM and sc.routing.trace is None:
        param, low, high, step, label = SKEW_PARAM[family]
        values[("routing", param)] = bar.slider(label, low, high, min(max(float(getattr(sc.routing, param)), low),
                                                                      high), step, key=KEY + "skew")
    ep, experts = sc.layout.ep, sc.model.num_experts
    least = experts // ep
    slots0 = sc.placement.slots_per_gpu or least
    slots = bar.slider("Expert slots per GPU", least, max(least * 3, slots0), slots0, key=KEY + "slots",
                       help="the memory budget: spare slots hold replicas (flexmoe, eplb) or stay empty")
    values[("placement", "slots_per_gpu")] = slots
    spare = (slots - least) * ep  # EPLB's replicas fill whole ranks: a multiple of ep, within the spare slots
    raw = (doc.get("placement") or {}).get("eplb") or {}
    redundant0 = min(int(raw.get("redundant_experts", spare)) // ep * ep, spare)
    redundant = bar.slider("EPLB redundant experts", 0, spare, redundant0, ep, key=KEY + "eplb_redundant",
                           help=f"replicas beyond the {experts} experts, a multiple of ep ({ep})",
                           disabled=spare == 0) if spare > 0 else 0
    values[EPLB_REDUNDANT] = int(redundant)
    values[("simulation", "steps")] = bar.slider("Measured steps", 1, max(MAX_STEPS, sc.simulation.steps),
                                                 sc.simulation.steps, key=KEY + "steps")
    chosen = bar.multiselect("Policies", POLICIES, default=POLICIES, key=KEY + "policies")
    return values, chosen


def policy_texts(doc: dict, values: dict, policies: list[str]) -> dict[str, str]:
    """policy -> the scenario text of its run."""
    texts = {}
    for policy in policies:
        # EPLB's own knob only in EPLB's run: the others' documents (and cached runs) stay as they were
        mine = {k: v for k, v in values.items() if k != EPLB_REDUNDANT or policy == PlacementPolicyKind.EPLB.value}
        texts[policy] = document_text(with_values(doc, {**mine, ("placement", "policy"): policy}))
    return texts


def run_policies(texts: dict[str, str], name: str) -> dict:
    """policy -> its run (or the error that refused it), with one progress bar over all of them."""
    slot = st.empty()
    t0 = time.perf_counter()
    bar: list = []
    runs: dict = {}
    policies = list(texts)
    for i, (policy, text) in enumerate(texts.items()):

        def progress(done: int, total: int, i: int = i, policy: str = policy) -> None:
            if not bar and time.perf_counter() - t0 > 0.3:  # cached or quick: nothing drawn, no flicker
                with slot.container():
                    bar.append(st.progress(0.0))
                    st.button("Cancel", key=KEY + "cancel", on_click=_cancel)
            if bar:
                bar[0].progress((i + done / total) / len(policies),
                                text=f"{policy}: step {done} of {total} (policy {i + 1} of {len(policies)})")

        try:
            runs[policy] = simulate_run(text, progress=progress, name=name)
        except MOESIM_ERRORS as err:
            runs[policy] = err
    slot.empty()
    return runs


def _cancel() -> None:
    st.session_state[KEY + "cancelled"] = True


def summary_table(runs: dict) -> pd.DataFrame:
    rows = []
    for policy, run in runs.items():
        p, s = run.summary.placement, run.summary
        rows.append({"policy": policy, "step time p50 (s)": s.step_time_s, "step time p95 (s)": s.step_time_p95_s,
                     "balance ratio mean": p.balance_ratio_mean, "balance ratio p95": p.balance_ratio_p95,
                     "placement changes": p.changes, "moved slots": p.moved_slots,
                     "migration GB": p.migration_bytes / units.GB, "migration s (total)": p.migration_s,
                     "peak memory GiB": s.peak_memory_bytes_max / units.GiB})
    return pd.DataFrame(rows)


def per_step(runs: dict) -> pd.DataFrame:
    frames = []
    for policy, run in runs.items():
        steps = run.result.measured_steps
        frames.append(pd.DataFrame({"policy": policy, "step": steps, "step_time_s": run.summary.step_times_s,
                                    "balance_ratio": balance_ratio_per_step(run.result).reindex(steps).to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def migrations(runs: dict) -> pd.DataFrame:
    frames = [run.result.placement_events.assign(policy=policy) for policy, run in runs.items()
              if len(run.result.placement_events)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def page() -> None:
    st.title("Placement")
    st.caption("Every expert placement policy on the same cluster, model and routing.")
    try:
        doc, name, sc = inputs()
        values, policies = knobs(doc, sc)
    except MOESIM_ERRORS as err:
        show_error(err)
        return
    if st.session_state.pop(KEY + "cancelled", False):
        st.warning("Cancelled. Change an input, or simulate after all:")
        st.button("Simulate", key=KEY + "resume")
        return
    if not policies:
        st.info("Choose at least one policy in the sidebar.")
        return
    texts = policy_texts(doc, values, policies)
    try:
        check_total_cost(list(texts.values()), name)  # the policies run one after another in this request
    except MOESIM_ERRORS as err:
        show_error(err)
        return
    outcome = run_policies(texts, name)
    for policy, run in outcome.items():
        if isinstance(run, BaseException):
            st.markdown(f"**{policy}** was not simulated:")
            show_error(run)
    runs = {p: r for p, r in outcome.items() if not isinstance(r, BaseException)}
    if not runs:
        return
    table = summary_table(runs)
    st.dataframe(table, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.4g") for c in table.columns if c != "policy"})
    steps = per_step(runs)
    left, right = st.columns(2)
    with left:
        st.markdown("**Step time**")
        st.altair_chart(charts.lines_over_steps(steps, "step_time_s", "step time (s)"), width="stretch")
    with right:
        st.markdown("**GPU balance ratio** (busiest GPU's expert rows / mean)")
        st.altair_chart(charts.lines_over_steps(steps, "balance_ratio", "balance ratio"), width="stretch")
    events = migrations(runs)
    st.markdown("**Migrations**: slots moved at each placement change")
    if events.empty:
        st.caption("No policy changed its placement.")
        return
    moved = events.groupby(["policy", "step"], as_index=False)["moved_slots"].sum()
    st.altair_chart(charts.load_bars(moved, "step", "moved_slots", "step", "moved slots", color="policy"),
                    width="stretch")
    with st.expander("Every placement change"):
        st.dataframe(events, hide_index=True)


page()
