"""Accuracy: the validation set's published step times against moesim's predictions, as `moesim accuracy`
recorded them in docs/accuracy.json (the numbers of docs/accuracy.md). Read-only: nothing is simulated here."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app.common import MOESIM_ERRORS, ROOT, named_as_uploaded, save_upload, show_error
from moesim.io.accuracy_record import MAX_ACCURACY_BYTES, read_accuracy_record
from moesim.metrics.error_summary import error_summary

ACCURACY_JSON = ROOT / "docs" / "accuracy.json"


@st.cache_data(show_spinner=False, max_entries=4)
def _record(path: str, mtime_ns: int) -> pd.DataFrame:
    """The record, re-read when the file changes (its mtime is part of the cache key)."""
    return read_accuracy_record(Path(path))


def _scatter(frame: pd.DataFrame) -> alt.LayerChart:
    """Published against predicted step time, log-log, with the y = x line (a point below it: too fast)."""
    low = float(min(frame["published_step_s"].min(), frame["predicted_step_s"].min()))
    high = float(max(frame["published_step_s"].max(), frame["predicted_step_s"].max()))
    diagonal = pd.DataFrame({"published_step_s": [low, high], "predicted_step_s": [low, high]})
    log = alt.Scale(type="log")
    points = alt.Chart(frame).mark_circle(size=80).encode(
        x=alt.X("published_step_s", title="published step time (s)", scale=log),
        y=alt.Y("predicted_step_s", title="predicted step time (s)", scale=log),
        color=alt.Color("fits", title="fits in memory"),
        tooltip=["run", "published_step_s", "predicted_step_s", alt.Tooltip("error", format="+.1%")])
    line = alt.Chart(diagonal).mark_line(strokeDash=[4, 4], color="gray").encode(
        x="published_step_s", y="predicted_step_s")
    return alt.layer(line, points).interactive()


def _errors(frame: pd.DataFrame) -> alt.Chart:
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("error", title="error = predicted / published - 1", axis=alt.Axis(format="%")),
        y=alt.Y("run", sort="x", title=None),
        color=alt.condition("datum.error < 0", alt.value("#d62728"), alt.value("#1f77b4")),
        tooltip=["run", alt.Tooltip("error", format="+.1%")])


def page() -> None:
    st.title("Accuracy")
    st.caption("Published, measured training runs (validation/) against moesim's prediction, as `moesim accuracy "
               "validation` last recorded them in docs/accuracy.json (the numbers of docs/accuracy.md). Error = "
               "predicted / published step time - 1: negative means moesim is too fast (optimistic).")
    upload = st.file_uploader("Another record: an accuracy .json written by `moesim accuracy`", type=["json"],
                              help="e.g. your own validation set's; the page shows docs/accuracy.json otherwise")
    path = None
    try:
        path = ACCURACY_JSON if upload is None else save_upload(upload.name, upload.getvalue(), MAX_ACCURACY_BYTES)
        frame = _record(str(path), path.stat().st_mtime_ns if path.exists() else 0)
        stats = error_summary(dict(zip(frame["run"], frame["error"])))
    except MOESIM_ERRORS as err:  # an upload is named as the user named it, not where the server keeps it
        show_error(named_as_uploaded(err, path, upload.name) if upload is not None and path is not None else err)
        return
    st.caption(f"Showing {'docs/accuracy.json' if upload is None else upload.name}.")
    cols = st.columns(4)
    cols[0].metric("runs", stats.runs)
    cols[1].metric("median |error|", f"{100 * stats.median_abs_error:.1f} %")
    cols[2].metric("max |error|", f"{100 * stats.max_abs_error:.1f} %", help=stats.max_abs_error_run)
    cols[3].metric("signed mean error", f"{100 * stats.signed_mean_error:+.1f} %")
    st.caption(f"Largest |error|: {stats.max_abs_error_run}.")
    left, right = st.columns(2)
    with left:
        st.subheader("Published vs predicted")
        st.altair_chart(_scatter(frame), width="stretch")
    with right:
        st.subheader("Error per run")
        st.altair_chart(_errors(frame), width="stretch")
    st.subheader("Runs")
    shown = frame.assign(simulated_micro_batches=frame["simulated_micro_batches"].map(
        lambda counts: "/".join(str(c) for c in counts)))
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "published_step_s": st.column_config.NumberColumn("published s", format="%.3f"),
        "predicted_step_s": st.column_config.NumberColumn("predicted s", format="%.3f"),
        "error": st.column_config.NumberColumn("error", format="percent"),
        "fits": st.column_config.CheckboxColumn("fits in memory"),
        "simulated_micro_batches": st.column_config.TextColumn(
            "simulated micro-batches", help="two counts: extrapolated along the line through them")})


page()
