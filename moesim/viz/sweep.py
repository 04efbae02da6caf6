"""Sweep results as line plots against one swept key, one line per value of the others.

`sweep_figure` is the overview `moesim sweep` writes (sweep.png): step time (p50 solid, p95 dashed), drop
fraction and balance ratio (GPU max/mean load after placement). `lines_figure` draws one metric for
`moesim report`, from series the report has already put in order."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Series:
    label: str                           # "" for a single unlabelled line
    x: list[float]
    y: list[float]                       # solid, with markers
    y_dashed: list[float] | None = None  # the same colour, dashed (e.g. p95 beside p50)


def lines_figure(series: list[Series], x_label: str, y_label: str, title: str,
                 x_ticks: list[str] | None = None, connect: bool = True) -> Figure:
    """One panel. `x_ticks`: labels of the positions 0, 1, ... when the x values are categories (a null
    capacity factor, policy names) rather than numbers. `connect=False` for categories without an order (policy
    names): markers only, the dashed values as bars, since a line between two policies means nothing."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, s in enumerate(series):
        # ten colours, then the same colours dotted: lines stay apart up to 20 series
        color = f"C{i % 10}"
        style = ("-o" if i < 10 else ":o") if connect else "o"
        ax.plot(s.x, s.y, style, color=color, label=s.label or None, markersize=4 if connect else 6)
        if s.y_dashed is not None:
            ax.plot(s.x, s.y_dashed, "--" if connect else "_", color=color, linewidth=1, markersize=14)
    if x_ticks is not None:
        ax.set_xticks(range(len(x_ticks)), x_ticks)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if any(s.label for s in series):
        ax.legend(frameon=False, fontsize=8, ncols=2 if len(series) > 8 else 1)
    fig.suptitle(title, fontsize=10)
    return fig


def sweep_figure(table: pd.DataFrame, x_key: str, line_key: str | None, title: str) -> Figure:
    fig = Figure(figsize=(15.0, 4.2), layout="constrained")
    ax_t, ax_d, ax_b = fig.subplots(1, 3)
    groups = [(None, table)] if line_key is None else list(table.groupby(line_key, sort=False, dropna=False))
    for i, (value, rows) in enumerate(groups):
        rows = rows.sort_values(x_key)
        color = f"C{i}"
        label = "" if line_key is None else f"{line_key.rsplit('.', 1)[-1]} = {_show(value)}"
        ax_t.plot(rows[x_key], rows["step_time_s"], "-o", color=color, label=label or "p50")
        ax_t.plot(rows[x_key], rows["step_time_p95_s"], "--", color=color)
        ax_d.plot(rows[x_key], 100 * rows["dropped_fraction"], "-o", color=color, label=label or None)
        ax_b.plot(rows[x_key], rows["gpu_load_max_over_mean"], "-o", color=color, label=label or None)
    ax_t.set_xlabel(x_key)
    ax_t.set_ylabel("step time (s): p50 solid, p95 dashed")
    ax_d.set_xlabel(x_key)
    ax_d.set_ylabel("dropped assignments (%)")
    ax_b.set_xlabel(x_key)
    ax_b.set_ylabel("balance ratio: GPU max/mean rows")
    if line_key is not None:
        ax_t.legend(frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def _show(value) -> str:
    return "dropless" if value is None or value != value else str(value)
