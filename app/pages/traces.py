"""Traces: a recorded routing trace's skew over steps and layers (expert max/mean as a heatmap) and the skew families
`moesim trace fit` fits to it (Zipf, Dirichlet, log-normal) against the data, layer by layer. The shipped traces,
the SmartMoE artifact's trace where ../shared holds it (read in place), or an uploaded one."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app.common import (MAX_TRACE_BYTES, MOESIM_ERRORS, ROOT, TRACE_SUFFIXES, named_as_uploaded, save_upload,
                        show_error, shipped_traces)
from moesim.io.traces import load_trace
from moesim.routing.fit import FAMILIES, PARAM_NAME, FitReport, fit_trace
from moesim.routing.trace_stats import fitted_curves, skew_frame
from moesim.spec.trace import RoutingTrace

# the SmartMoE artifact's trace (GPL-3.0): read where the shared reference material keeps it, never copied here
SMARTMOE_TRACE = ROOT.parent / "shared" / "traces" / "smartmoe-ae" / "counts.npz"
MAX_HEATMAP_STEPS = 500  # columns a heatmap draws: above this, every k-th step (said under the chart)


def _sources() -> dict[str, Path]:
    found = dict(shipped_traces())
    if SMARTMOE_TRACE.is_file():
        found["smartmoe-ae/counts.npz (../shared, read-only)"] = SMARTMOE_TRACE
    return found


@st.cache_resource(show_spinner="Reading the trace...", max_entries=4)
def _trace(path: str, mtime_ns: int) -> RoutingTrace:
    """Shared between sessions, read-only; re-read when the file changes (its mtime is part of the key)."""
    return load_trace(Path(path))


@st.cache_resource(show_spinner=False, max_entries=4)
def _skew(path: str, mtime_ns: int) -> pd.DataFrame:
    return skew_frame(_trace(path, mtime_ns))


@st.cache_resource(show_spinner="Fitting the skew families...", max_entries=8)
def _fit(path: str, mtime_ns: int, top_k: int) -> tuple[FitReport, pd.DataFrame]:
    trace = _trace(path, mtime_ns)
    report = fit_trace(trace, top_k=top_k)
    return report, fitted_curves(trace, report)


def _chosen() -> tuple[Path | None, str]:
    """The trace's path and the name errors give it (an upload's own name, not where the server keeps it)."""
    sources = _sources()
    c = st.columns(2)
    name = c[0].selectbox("trace", list(sources), key="trace") if sources else None
    upload = c[1].file_uploader(f"or upload one ({', '.join(TRACE_SUFFIXES)}, at most {MAX_TRACE_BYTES // 2**20} "
                                "MiB)", type=[s.lstrip(".") for s in TRACE_SUFFIXES], key="trace_upload",
                                help="a moesim Parquet trace (moesim trace record / import) or a SmartMoE .npz")
    if upload is not None:
        return save_upload(upload.name, upload.getvalue(), MAX_TRACE_BYTES), upload.name
    return (sources[name], name) if name is not None else (None, "")


def _heatmap(skew: pd.DataFrame) -> alt.Chart:
    steps = np.unique(skew["step"])
    every = -(-len(steps) // MAX_HEATMAP_STEPS)
    shown = skew[skew["step"].isin(steps[::every])]
    if every > 1:
        st.caption(f"{len(steps)} steps: 1 in {every} shown.")
    return alt.Chart(shown).mark_rect().encode(
        x=alt.X("step:O", title="step", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("layer:O", title="layer"),
        color=alt.Color("expert_max_over_mean", title="expert max/mean", scale=alt.Scale(scheme="viridis")),
        tooltip=["step", "layer", alt.Tooltip("expert_max_over_mean", format=".2f")])


def _layers(skew: pd.DataFrame, report: FitReport | None) -> pd.DataFrame:
    """Per layer: the skew over the steps and (when fitted) the best family."""
    per_layer = skew.groupby("layer")["expert_max_over_mean"].agg(["mean", "max"])
    per_layer.columns = ["expert max/mean, mean over steps", "expert max/mean, max over steps"]
    if report is None:
        return per_layer
    best = {lf.layer: f"{lf.best.distribution.value} {PARAM_NAME[lf.best.distribution]}={lf.best.param:.4g}"
            for lf in report.layers}
    return per_layer.assign(**{"best fit": per_layer.index.map(best)})


def _fit_chart(curves: pd.DataFrame, layer: int) -> alt.Chart:
    """The layer's observed mean sorted shares against each family's model curve at its fitted parameter."""
    one = curves[curves["layer"] == layer]
    columns = {"observed_share": "observed", **{f"{f.value}_share": f.value for f in FAMILIES}}
    long = one.melt(id_vars=["expert_rank"], value_vars=list(columns), var_name="curve", value_name="share")
    long["curve"] = long["curve"].map(columns)
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("expert_rank:Q", title="expert rank (1 = hottest)"),
        y=alt.Y("share:Q", title="mean share of the row's assignments"),
        color=alt.Color("curve:N", title=None),
        strokeDash=alt.condition("datum.curve == 'observed'", alt.value([1, 0]), alt.value([5, 3])),
        tooltip=["curve", "expert_rank", alt.Tooltip("share", format=".4f")]).interactive()


def _summary(trace: RoutingTrace) -> None:
    steps, layers, mbs, sources, experts = trace.counts.shape
    cols = st.columns(6)
    for col, (label, value) in zip(cols, (("steps", steps), ("layers", layers), ("micro-batches", mbs),
                                          ("source ranks", sources), ("experts", experts),
                                          ("top_k", trace.top_k if trace.top_k is not None else "unknown"))):
        col.metric(label, value)
    st.caption(f"Source: {trace.source}")


def page() -> None:
    st.title("Traces")
    path, name = None, ""
    try:
        path, name = _chosen()
        if path is None:
            st.info("No trace in traces/: upload one.")
            return
        mtime_ns = path.stat().st_mtime_ns
        trace = _trace(str(path), mtime_ns)
    except MOESIM_ERRORS as err:
        show_error(named_as_uploaded(err, path, name) if path is not None else err)
        return
    _summary(trace)
    skew = _skew(str(path), mtime_ns)
    report = _fitted(path, name, mtime_ns, trace)
    st.subheader("Skew over steps and layers")
    st.caption("Expert max/mean of each step's layer: its experts' assignments summed over the step's micro-batches "
               "and source ranks, the largest over the mean (1 = balanced; E / top_k at most).")
    st.altair_chart(_heatmap(skew), width="stretch")
    st.dataframe(_layers(skew, report[0] if report else None), width="stretch")
    st.subheader("Fitted skew families against the data")
    if st.session_state.get("layer", 0) >= trace.num_layers:  # chosen on a trace with more layers
        del st.session_state["layer"]
    layer = st.selectbox("layer", list(range(trace.num_layers)), key="layer")
    shown = skew[skew["layer"] == layer]["expert_max_over_mean"]
    cols = st.columns(3)
    cols[0].metric("expert max/mean, mean over steps", f"{shown.mean():.2f}")
    if report is None:
        return
    fit, curves = report
    cols[1].metric("best fit", fit.layers[layer].best.distribution.value)
    cols[2].metric("its max/mean (model)", f"{fit.layers[layer].best.max_over_mean_model:.2f}")
    st.caption(f"Each curve: the mean over {fit.rows_per_layer} (step, micro-batch) rows of the experts' shares "
               f"sorted hottest first; the families' curves are the simulator's generator at the fitted parameter "
               f"with the sampling noise of {fit.assignments_per_row:.0f} assignments per row ({fit.draws} "
               "draws), as `moesim trace fit` compares them.")
    st.altair_chart(_fit_chart(curves, layer), width="stretch")
    with st.expander("fit of every layer and family (moesim trace fit --csv)"):
        st.dataframe(fit.to_table(), hide_index=True, width="stretch")


def _fitted(path: Path, name: str, mtime_ns: int, trace: RoutingTrace) -> tuple[FitReport, pd.DataFrame] | None:
    """The fit (top_k asked for when the trace does not say it), or None with its one-line error shown."""
    top_k = trace.top_k or int(st.number_input("top_k (experts per token; the trace does not say)", 1,
                                               trace.num_experts, min(2, trace.num_experts), key="top_k"))
    try:
        return _fit(str(path), mtime_ns, top_k)
    except MOESIM_ERRORS as err:
        show_error(named_as_uploaded(err, path, name))
        return None

page()
