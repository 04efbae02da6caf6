"""Step-time distribution: a histogram with the p50/p95/p99 marked."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def step_time_histogram(step_times_s: np.ndarray, title: str) -> Figure:
    times = np.asarray(step_times_s, dtype=np.float64)
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    bins = max(5, min(50, int(np.sqrt(len(times))) * 2))
    ax.hist(times, bins=bins, color="#4C72B0", edgecolor="white")
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = float(np.percentile(times, q))
        ax.axvline(value, color="black", linestyle=style, linewidth=1.2, label=f"p{q} {value:.4f} s")
    ax.set_xlabel("step time (s)")
    ax.set_ylabel("steps")
    ax.legend(frameon=False)
    fig.suptitle(f"{title} ({len(times)} steps)", fontsize=11)
    return fig
