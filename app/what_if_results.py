"""The What-if page's results: the headline numbers (with their difference to a pinned baseline), the step's
breakdown, expert rows per GPU, memory per rank, tokens per expert, the all-to-all matrix and one step's
timeline. `run` and `base` are app.common.SimRun (base None: no baseline pinned)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts
from moesim.units import GB, GiB
from moesim.metrics.views import a2a_pairs, gpu_expert_rows, step_timeline
from moesim.report.text import format_capacity_factor
from moesim.spec.simulation import RecordDetail

KEY = "whatif_"  # the What-if page's session-state prefix
MAX_TIMELINE_RANKS = 8


def headline(run, base) -> None:
    s = run.summary
    b = base.summary if base is not None else None

    def delta(value: float, ref: float | None, fmt: str) -> str | None:
        return None if ref is None else fmt.format(value - ref)

    cols = st.columns(6)
    # seconds to four decimals, as `moesim run` prints them
    cols[0].metric("Step time p50", f"{s.step_time_s:.4f} s",
                   delta(s.step_time_s, b and b.step_time_s, "{:+.4f} s"), delta_color="inverse")
    cols[1].metric("Step time p95", f"{s.step_time_p95_s:.4f} s",
                   delta(s.step_time_p95_s, b and b.step_time_p95_s, "{:+.4f} s"), delta_color="inverse")
    cols[2].metric("Tokens / s", f"{s.tokens_per_s:,.0f}", delta(s.tokens_per_s, b and b.tokens_per_s, "{:+,.0f}"))
    cols[3].metric("MFU", f"{s.mfu:.1%}", delta(100 * s.mfu, b and 100 * b.mfu, "{:+.1f} pt"))
    cols[4].metric("Dropped tokens", f"{s.dropped_fraction:.2%}",
                   delta(100 * s.dropped_fraction, b and 100 * b.dropped_fraction, "{:+.2f} pt"),
                   delta_color="inverse", help=f"padding {s.padding_fraction:.2%} of computed rows; capacity "
                                               f"factor {format_capacity_factor(s.capacity_factor)}")
    cols[5].metric("Peak memory / GPU", f"{s.peak_memory_bytes_max / GiB:.1f} GiB",
                   delta(s.peak_memory_bytes_max / GiB, b and b.peak_memory_bytes_max / GiB,
                         "{:+.1f} GiB"), delta_color="inverse",
                   help=f"of {s.hbm_bytes / GiB:.1f} GiB: " + ("fits" if s.fits_in_memory else "does NOT fit"))


def comparison_table(run, base) -> pd.DataFrame:
    rows = {"step time p50 (s)": "step_time_s", "step time p95 (s)": "step_time_p95_s",
            "tokens / s": "tokens_per_s", "MFU": "mfu", "expert load max / mean": "expert_load_max_over_mean",
            "GPU load max / mean": "gpu_load_max_over_mean", "dropped fraction": "dropped_fraction",
            "padding fraction": "padding_fraction", "all-to-all bytes / step": "all_to_all_bytes_per_step",
            "peak memory (bytes)": "peak_memory_bytes_max"}
    table = pd.DataFrame({"baseline": [getattr(base.summary, f) for f in rows.values()],
                          "current": [getattr(run.summary, f) for f in rows.values()]}, index=list(rows))
    return table.assign(difference=table["current"] - table["baseline"])


def breakdown_section(run, base) -> None:
    runs = [("current", run)] + ([("baseline", base)] if base is not None else [])
    table = pd.DataFrame([{"run": label, "bucket": bucket, "seconds": seconds}
                          for label, r in runs for bucket, seconds in r.summary.breakdown_s.items() if seconds > 0])
    st.altair_chart(charts.breakdown_chart(table), width="stretch")
    hidden = {k: v for k, v in run.summary.hidden_s.items() if v > 0}
    if hidden:
        st.caption("Communication hidden under compute (not in the bars), s per step: "
                   + ", ".join(f"{k} {v:.4f}" for k, v in hidden.items()))


def gpu_load_section(run, base) -> None:
    st.markdown("**Expert rows per GPU** (forward pass, all MoE layers and micro-batches, per step)")
    runs = [("current", run)] + ([("baseline", base)] if base is not None else [])
    gpu = pd.concat([gpu_expert_rows(r.result).reset_index().assign(run=label) for label, r in runs])
    st.altair_chart(charts.load_bars(gpu, "rank", "rows_per_step", "rank", "rows per step",
                                     color="run" if base is not None else None), width="stretch")
    st.caption(f"GPU balance ratio (max / mean in the EP group): {run.summary.gpu_load_max_over_mean:.2f}")


def expert_load_section(run) -> None:
    st.markdown("**Tokens routed to each expert** (top-k assignments per step, before capacity)")
    st.altair_chart(charts.expert_heatmap(run.expert_loads), width="stretch")
    s = run.summary
    st.caption(f"Expert load max / mean: {s.expert_load_max_over_mean:.2f}; dropped {s.dropped_fraction:.2%} "
               f"of assignments (first choices {s.dropped_first_choice_fraction:.2%}), capacity padding "
               f"{s.padding_fraction:.2%} of computed rows, capacity factor "
               f"{format_capacity_factor(s.capacity_factor)}.")


def a2a_section(run) -> None:
    pairs = a2a_pairs(run.result)
    layers = list(run.result.moe_layers)
    left, right = st.columns([2, 1])
    with left:
        layer = st.selectbox("MoE layer", layers, key=KEY + "a2a_layer")
        st.altair_chart(charts.a2a_heatmap(pairs[pairs["layer"] == layer]), width="stretch")
        st.caption("The first EP group's dispatch; outlined cells cross nodes (NICs), the others stay on "
                   "NVLink (the diagonal stays on the GPU).")
    with right:
        net = run.summary.network
        tiers = pd.DataFrame({"tier": list(net.a2a_bytes_per_step),
                              "GB per step": [v / GB for v in net.a2a_bytes_per_step.values()],
                              "mean link use": [net.a2a_link_utilisation[t].mean for t in net.a2a_bytes_per_step],
                              "busiest link use": [net.a2a_link_utilisation[t].max for t in net.a2a_bytes_per_step]})
        st.markdown("**All-to-all traffic by tier** (all layers)")
        st.dataframe(tiers, hide_index=True, column_config={
            "mean link use": st.column_config.NumberColumn(format="percent"),
            "busiest link use": st.column_config.NumberColumn(format="percent")})


def timeline_section(run) -> None:
    result = run.result
    if result.scenario.simulation.records is not RecordDetail.FULL:
        st.info("The timeline needs simulation.records: full.")
        return
    lay = result.scenario.layout
    default = [int(s * lay.ranks_per_stage) for s in range(min(lay.pp, MAX_TIMELINE_RANKS))]
    ranks = st.multiselect(f"Ranks (at most {MAX_TIMELINE_RANKS})", list(range(lay.world_size)), default=default,
                           key=KEY + "timeline_ranks", max_selections=MAX_TIMELINE_RANKS)
    step = int(result.measured_steps[0])
    if ranks:
        st.altair_chart(charts.timeline_chart(step_timeline(result, step, ranks)), width="stretch")
        st.caption(f"Step {step} (the first measured step); drag to pan, scroll to zoom.")


def memory_section(run, base) -> None:
    runs = [("current", run)] + ([("baseline", base)] if base is not None else [])
    table = pd.concat([pd.DataFrame({"rank": range(len(r.summary.peak_memory_bytes)),
                                     "peak_bytes": r.summary.peak_memory_bytes, "run": label})
                       for label, r in runs])
    st.altair_chart(charts.memory_chart(table if base is not None else table.drop(columns="run"),
                                        run.summary.hbm_bytes), width="stretch")
    parts = {k.removesuffix("_bytes"): v / GiB for k, v in run.summary.peak_memory_breakdown_bytes.items()}
    st.caption("Busiest rank, GiB: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
               + f"; the dashed line is the GPU's {run.summary.hbm_bytes / GiB:.1f} GiB.")


def results(run, base) -> None:
    headline(run, base)
    s = run.summary
    st.caption(f"{s.scenario}: {s.gpus} GPUs ({s.profile.name}, {s.profile.status}), layout tp {s.layout.tp} "
               f"pp {s.layout.pp} dp {s.layout.dp} ep {s.layout.ep} etp {s.layout.etp}; {s.measured_steps} "
               f"measured steps, simulated in {run.wall_s:.2f} s")
    if base is not None:
        st.dataframe(comparison_table(run, base), column_config={
            c: st.column_config.NumberColumn(format="%.4g") for c in ("baseline", "current", "difference")})
    breakdown_section(run, base)
    left, right = st.columns(2)
    with left:
        gpu_load_section(run, base)
    with right:
        st.markdown("**Peak memory per rank** against the GPU's")
        memory_section(run, base)
    tabs = st.tabs(["Experts", "All-to-all", "Timeline"])
    with tabs[0]:
        expert_load_section(run)
    with tabs[1]:
        a2a_section(run)
    with tabs[2]:
        timeline_section(run)
