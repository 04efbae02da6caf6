"""Altair charts of the dashboard's pages (Streamlit draws them with Vega-Lite: zoom, tooltips). They lay out
tables moesim made, with log axes where sizes span decades; the only arithmetic is display scaling (bytes -> GiB
or MB, fractions -> percent)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from moesim.units import GiB, MB

CHART_HEIGHT_PX = 320


def breakdown_chart(table: pd.DataFrame) -> alt.Chart:
    """table: run, bucket, seconds (per step, mean over ranks) -> one stacked horizontal bar per run, the
    buckets in the table's order."""
    buckets = list(dict.fromkeys(table["bucket"]))
    data = table.assign(order=table["bucket"].map({b: i for i, b in enumerate(buckets)}))
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("seconds:Q", title="seconds per step (mean over ranks)", stack="zero"),
        y=alt.Y("run:N", title=None, sort=None),
        color=alt.Color("bucket:N", title=None, sort=buckets,
                        legend=alt.Legend(orient="bottom", columns=6, symbolLimit=0)),
        order=alt.Order("order:Q"),
        tooltip=["run", "bucket", alt.Tooltip("seconds:Q", format=".4f")],
    ).properties(height=alt.Step(40))  # a fixed height squeezes the bars (Streamlit fits the legend in it)


def load_bars(table: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, color: str | None = None) \
        -> alt.Chart:
    enc = {"x": alt.X(f"{x}:O", title=x_title), "y": alt.Y(f"{y}:Q", title=y_title),
           "tooltip": [x, alt.Tooltip(f"{y}:Q", format=",.0f")] + ([color] if color else [])}
    if color:
        enc["color"] = alt.Color(f"{color}:N")
        enc["xOffset"] = alt.XOffset(f"{color}:N")
    return alt.Chart(table).mark_bar().encode(**enc).properties(height=CHART_HEIGHT_PX)


def expert_heatmap(table: pd.DataFrame) -> alt.Chart:
    """table: layer, expert, assignments_per_step -> layer x expert heatmap."""
    return alt.Chart(table).mark_rect().encode(
        x=alt.X("expert:O", title="expert"), y=alt.Y("layer:O", title="MoE layer"),
        color=alt.Color("assignments_per_step:Q", title="assignments / step", scale=alt.Scale(scheme="viridis")),
        tooltip=["layer", "expert", alt.Tooltip("assignments_per_step:Q", format=",.0f")],
    ).properties(height=min(CHART_HEIGHT_PX * 2, 14 * table["layer"].nunique() + 40))


def a2a_heatmap(pairs: pd.DataFrame) -> alt.LayerChart:
    """pairs: src, dst, bytes, link (local, nvlink, nic) of one layer -> heatmap; pairs over NICs outlined."""
    data = pairs.assign(MB=pairs["bytes"] / MB)
    base = alt.Chart(data).encode(x=alt.X("dst:O", title="destination EP rank"),
                                  y=alt.Y("src:O", title="source EP rank"))
    cells = base.mark_rect().encode(
        color=alt.Color("MB:Q", title="MB per micro-batch", scale=alt.Scale(scheme="viridis")),
        tooltip=["src", "dst", "src_gpu", "dst_gpu", "link", alt.Tooltip("MB:Q", format=",.2f")])
    nic = base.transform_filter(alt.datum.link == "nic").mark_rect(fill=None, stroke="#e4572e", strokeWidth=2)
    return alt.layer(cells, nic).properties(height=CHART_HEIGHT_PX)


def timeline_chart(ops: pd.DataFrame) -> alt.Chart:
    """ops: rank, start_s, end_s, bucket, op, phase, micro_batch, layer -> one row of bars per rank."""
    return alt.Chart(ops).mark_bar().encode(
        x=alt.X("start_s:Q", title="seconds from the step's start"), x2="end_s:Q",
        y=alt.Y("rank:O", title="rank"),
        color=alt.Color("bucket:N", title=None, legend=alt.Legend(orient="bottom", columns=6, symbolLimit=0)),
        tooltip=["rank", "op", "phase", "micro_batch", "layer", alt.Tooltip("start_s:Q", format=".6f"),
                 alt.Tooltip("end_s:Q", format=".6f"), alt.Tooltip("wait_s:Q", format=".6f")],
    ).properties(height=alt.Step(36)).interactive(bind_y=False)


def memory_chart(peak_bytes: pd.DataFrame, hbm_bytes: float) -> alt.LayerChart:
    """peak_bytes: rank, peak_bytes (and run) -> bars per rank with the GPU's memory as a red rule."""
    data = peak_bytes.assign(GiB=peak_bytes["peak_bytes"] / GiB)
    color = {"color": alt.Color("run:N"), "xOffset": alt.XOffset("run:N")} if "run" in data else {}
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("rank:O", title="rank"), y=alt.Y("GiB:Q", title="peak memory (GiB)"),
        tooltip=["rank", alt.Tooltip("GiB:Q", format=",.2f")] + (["run"] if "run" in data else []), **color)
    rule = alt.Chart(pd.DataFrame({"GiB": [hbm_bytes / GiB], "what": ["GPU memory"]})).mark_rule(
        color="#e4572e", strokeDash=[6, 3], size=2).encode(y="GiB:Q", tooltip=["what", alt.Tooltip("GiB:Q",
                                                                                                   format=",.1f")])
    return alt.layer(bars, rule).properties(height=CHART_HEIGHT_PX)


def lines_over_steps(table: pd.DataFrame, y: str, y_title: str) -> alt.Chart:
    """table: step, policy, <y> -> one line per policy."""
    return alt.Chart(table).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("policy:N", title="policy"),
        tooltip=["policy", "step", alt.Tooltip(f"{y}:Q", format=".4f")],
    ).properties(height=CHART_HEIGHT_PX).interactive(bind_y=False)


def curves(frame: pd.DataFrame, x: str, y: str, color: str | None, x_title: str, y_title: str,
           log_x: bool = True, log_y: bool = False, tooltip: list[str] | None = None,
           points: pd.DataFrame | None = None, limits: pd.DataFrame | None = None) -> alt.LayerChart:
    """Lines of `y` over `x`, one per `color` value. `points`: measurements with the same columns, drawn as
    points over the lines; `limits`: a frame with column `y` (and `color`) drawn as dashed horizontal rules."""
    x_enc = alt.X(x, title=x_title, scale=alt.Scale(type="log") if log_x else alt.Undefined)
    y_enc = alt.Y(y, title=y_title, scale=alt.Scale(type="log") if log_y else alt.Undefined)
    basic = [x, y] + ([color] if color else [])
    enc = {"x": x_enc, "y": y_enc}
    if color:
        enc["color"] = alt.Color(color, title=color.replace("_", " "))
    layers = [alt.Chart(frame).mark_line(point=True).encode(**enc, tooltip=tooltip or basic)]
    if points is not None and len(points):
        layers.append(alt.Chart(points).mark_point(shape="diamond", size=60, filled=True).encode(**enc,
                                                                                                tooltip=basic))
    if limits is not None and len(limits):
        rule = {"y": alt.Y(y)}
        if color:
            rule["color"] = alt.Color(color)
        layers.append(alt.Chart(limits).mark_rule(strokeDash=[4, 4]).encode(**rule))
    # a fixed height: a chart drawn in a tab that is not shown yet would otherwise come out flat
    return alt.layer(*layers).properties(height=360).interactive()
