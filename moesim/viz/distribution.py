"""Step-time distribution: a histogram with the p50/p95/p99 marked."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def step_time_histogram(step_times_s: np.ndarray, title: str) -> Figure:
    times = np.asarray(step_times_s, dtype=np.float64)
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    bins = max(5, min(50, int(np.sqrt(len(times))) * 2))
    lo, hi = float(times.min()), float(times.max())
    if hi - lo <= 1e-9 * max(abs(hi), 1e-30):  # a few ulps apart: numpy cannot split that range into bins
        bins, value_range = 1, (lo * (1 - 1e-6), hi * (1 + 1e-6) if hi > 0 else 1.0)
    else:
        value_range = None
    ax.hist(times, bins=bins, range=value_range, color="#4C72B0", edgecolor="white")
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = float(np.percentile(times, q))
        ax.axvline(value, color="black", linestyle=style, linewidth=1.2, label=f"p{q} {value:.4f} s")
    ax.set_xlabel("step time (s)")
    ax.set_ylabel("steps")
    ax.legend(frameon=False)
    fig.suptitle(f"{title} ({len(times)} steps)", fontsize=11)
    return fig
