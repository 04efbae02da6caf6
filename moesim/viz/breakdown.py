"""Step-time breakdown figures. Object-oriented matplotlib only (matplotlib.figure.Figure, no pyplot), so
no global figure state and no backend switching: callers save with moesim.io.results.write_figure_atomic
or hand the Figure to Streamlit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from moesim.sim.records import BREAKDOWN_BUCKETS

# One colour per bucket, shared by every figure (tab10 hues; idle is grey).
BUCKET_COLORS: Mapping[str, str] = {
    "compute": "#1f77b4", "all_to_all": "#d62728", "straggler_wait": "#e377c2", "tensor_parallel": "#9467bd",
    "pipeline_bubble": "#ff7f0e", "dp_sync": "#2ca02c", "optimizer": "#8c564b", "idle": "#b0b0b0",
}
_OTHER_COLORS = ("#17becf", "#bcbd22", "#7f7f7f")
_MAX_TICK_LABELS = 32
_INSIDE_LABEL_MIN_FRACTION = 0.06  # write the percentage inside a segment at least this wide


def _ordered_buckets(names: Iterable[str]) -> list[str]:
    """BREAKDOWN_BUCKETS order first; unknown names after them, in the order given."""
    names = list(names)
    known = [b for b in BREAKDOWN_BUCKETS if b in names]
    return known + [n for n in names if n not in BREAKDOWN_BUCKETS]


def _colors(buckets: list[str]) -> list[str]:
    extras = iter(_OTHER_COLORS * (1 + len(buckets) // len(_OTHER_COLORS)))
    return [BUCKET_COLORS[b] if b in BUCKET_COLORS else next(extras) for b in buckets]


def _check_finite_nonnegative(what: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise ValueError(f"{what}: got {values[bad][:5].tolist()}; expected finite seconds >= 0")


def breakdown_figure(breakdown_s: dict[str, float], step_time_s: float, title: str) -> Figure:
    """One horizontal stacked bar: the step time split into buckets (BREAKDOWN_BUCKETS order, buckets with a
    positive value only). The legend gives each bucket's seconds and share of `step_time_s`; a dashed line
    marks `step_time_s`."""
    if not (math.isfinite(step_time_s) and step_time_s > 0):
        raise ValueError(f"step_time_s: got {step_time_s!r}; expected finite seconds > 0")
    buckets = _ordered_buckets(breakdown_s)
    values = np.array([float(breakdown_s[b]) for b in buckets], dtype=np.float64)
    _check_finite_nonnegative("breakdown_s", values)
    shown = values > 0
    buckets = [b for b, s in zip(buckets, shown) if s]
    values = values[shown]

    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    left = 0.0
    for bucket, value, color in zip(buckets, values.tolist(), _colors(buckets)):
        share = value / step_time_s
        label = f"{bucket}: {value:.3g} s ({100 * share:.1f}%)"
        bars = ax.barh([0], [value], left=left, height=0.6, color=color, label=label)
        if share >= _INSIDE_LABEL_MIN_FRACTION:
            ax.bar_label(bars, labels=[f"{100 * share:.0f}%"], label_type="center", fontsize=9)
        left += value
    ax.axvline(step_time_s, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0, max(left, step_time_s) * 1.02)
    ax.set_yticks([])
    ax.set_xlabel("time per step (s)")
    ax.set_title(f"{title} — step {step_time_s:.3g} s")
    if buckets:
        fig.legend(loc="outside lower center", ncols=min(len(buckets), 3), fontsize=9, frameon=False)
    return fig


def _tick_positions(n: int) -> np.ndarray:
    """Every bar up to 32 bars; beyond that every k-th bar, k chosen so that at most 32 are labelled."""
    return np.arange(0, n, max(1, math.ceil(n / _MAX_TICK_LABELS)))


def per_rank_figure(per_rank_breakdown: pd.DataFrame, title: str) -> Figure:
    """A stacked vertical bar per row (index = rank, or pipeline stage, ...; columns = buckets; seconds).
    Plots what it is given; the index name (or "rank") labels the x axis."""
    if per_rank_breakdown.empty:
        raise ValueError("per_rank_breakdown: got an empty table; expected one row per rank and bucket columns")
    buckets = _ordered_buckets([str(c) for c in per_rank_breakdown.columns])
    table = per_rank_breakdown.rename(columns=str)[buckets]
    values = table.to_numpy(dtype=np.float64)
    _check_finite_nonnegative("per_rank_breakdown", values.ravel())
    n = len(table)

    fig = Figure(figsize=(min(max(9.0, 2.5 + 0.22 * n), 16.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    width = 0.8 if n <= 64 else 1.0
    bottom = np.zeros(n)
    for j, (bucket, color) in enumerate(zip(buckets, _colors(buckets))):
        ax.bar(x, values[:, j], width=width, bottom=bottom, color=color, label=bucket, linewidth=0)
        bottom += values[:, j]
    ticks = _tick_positions(n)
    ax.set_xticks(ticks, [str(v) for v in table.index[ticks]])
    ax.set_xlim(-0.5 - (1 - width) / 2, n - 0.5 + (1 - width) / 2)
    ax.set_xlabel(str(per_rank_breakdown.index.name or "rank"))
    ax.set_ylabel("time per step (s)")
    fig.suptitle(title, fontsize=11)  # over the whole figure, so the legend beside the axes never covers it
    fig.legend(loc="outside right upper", fontsize=9, frameon=False)
    return fig
