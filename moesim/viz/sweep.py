"""Sweep results: step time (p50 solid, p95 dashed), drop fraction and balance ratio (GPU max/mean load after
placement) against the first swept key, one line per value of the second."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


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
