"""The all-to-all byte matrix of MoE layers as heatmaps (rows send, columns receive; node boundaries drawn)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

MAX_PANELS = 4


def incast_order(matrices: np.ndarray) -> np.ndarray:
    """Layer indices by how uneven their receivers are (max column sum / mean), most uneven first."""
    received = matrices.sum(-2)  # [layers, ep]
    ratio = received.max(-1) / np.maximum(received.mean(-1), 1e-300)
    return np.argsort(-ratio, kind="stable")


def a2a_heatmap(matrices: np.ndarray, layers: tuple[int, ...], ep_ranks_per_node: int, title: str) -> Figure:
    """matrices [moe layers, ep, ep] bytes; shows the (up to) four layers with the strongest incast."""
    pick = incast_order(matrices)[:MAX_PANELS]
    fig = Figure(figsize=(4.2 * len(pick) + 1.0, 4.2), layout="constrained")
    axes = fig.subplots(1, len(pick), squeeze=False)[0]
    vmax = float(matrices[pick].max()) / 1e6 or 1.0
    image = None
    for ax, i in zip(axes, pick):
        m = matrices[i] / 1e6
        image = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        n = m.shape[0]
        for b in range(ep_ranks_per_node, n, ep_ranks_per_node):  # node boundaries
            ax.axhline(b - 0.5, color="white", linewidth=0.8)
            ax.axvline(b - 0.5, color="white", linewidth=0.8)
        received = m.sum(0)
        ax.set_title(f"layer {layers[i]}: max/mean received {received.max() / max(received.mean(), 1e-300):.2f}",
                     fontsize=9)
        ax.set_xlabel("destination EP rank")
        ax.set_ylabel("source EP rank")
    fig.colorbar(image, ax=list(axes), label="MB per micro-batch (dispatch)", shrink=0.85)
    fig.suptitle(title, fontsize=11)
    return fig
