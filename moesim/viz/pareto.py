"""The planner's trade-off: estimated step time against memory headroom for every candidate that fits, the Pareto
front (no other candidate is both faster and roomier), the short list and the winner."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

GIB = 2**30


def pareto_front(step_s: np.ndarray, headroom_bytes: np.ndarray) -> np.ndarray:
    """Indices of the candidates no other beats on both (lower step time, higher headroom), fastest first."""
    order = np.lexsort((-headroom_bytes, step_s))
    front, best = [], -np.inf
    for i in order:
        if headroom_bytes[i] > best:
            front.append(i)
            best = headroom_bytes[i]
    return np.array(front, dtype=np.int64)


def pareto_figure(step_s: np.ndarray, headroom_bytes: np.ndarray, shortlist: np.ndarray, winner: int | None,
                  title: str) -> Figure:
    """step_s, headroom_bytes [n]: the fitting candidates; shortlist: their indices; winner: an index or None."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(step_s, headroom_bytes / GIB, s=10, color="#b0b0b0", label="candidates (estimate)")
    front = pareto_front(step_s, headroom_bytes)
    ax.plot(step_s[front], headroom_bytes[front] / GIB, "-o", ms=4, color="#1f77b4", label="Pareto front")
    if len(shortlist):
        ax.scatter(step_s[shortlist], headroom_bytes[shortlist] / GIB, s=40, facecolors="none",
                   edgecolors="#d62728", label="short list (simulated)")
    if winner is not None:
        ax.scatter([step_s[winner]], [headroom_bytes[winner] / GIB], marker="*", s=180, color="#d62728",
                   label="plan")
    ax.set_xlabel("estimated step time (s)")
    ax.set_ylabel("memory headroom on the busiest GPU (GiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig
