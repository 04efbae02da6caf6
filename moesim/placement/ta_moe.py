"""TA-MoE (Chen et al., NeurIPS 2022): topology-aware routing. The placement never changes (contiguous experts);
the auxiliary loss pulls the router toward a dispatch pattern that favours fast links, modelled here by blending
the natural routing with that pattern (specs/placement.md §5).

Target pattern: minimising max_j c_ij / B_ij subject to sum_j c_ij = kT gives c*_ij = kT * B_ij / sum_j B_ij.
The local destination (j = i) gets no real link; it is given the intra-node bandwidth (the fastest link from i to
another rank of its node), so a rank keeps as much as it sends to each node peer. A rank alone on its node uses
its fastest link to any rank. The per-destination share is split evenly over that rank's experts.

Shapes: G = EP ranks, E = logical experts (E/G per rank, contiguous), M = micro-batches.
"""

from __future__ import annotations

import numpy as np

from moesim.placement.base import Placement, PlacementContext, contiguous
from moesim.spec.placement_params import TaMoeParams


def _owner(ctx: PlacementContext) -> np.ndarray:
    """[E] rank owning each expert under the contiguous placement."""
    return np.arange(ctx.num_experts) // ctx.experts_per_rank


def rank_shares(ctx: PlacementContext) -> np.ndarray:
    """[G_src, G] target share of source i's assignments sent to rank j (rows sum to 1)."""
    b = np.array(ctx.bandwidth_bytes_per_s, dtype=np.float64)
    G = ctx.num_ranks
    node = np.asarray(ctx.node_of_rank)
    off = ~np.eye(G, dtype=bool)
    for i in range(G):
        peers = off[i] & (node == node[i])
        pool = peers if peers.any() else off[i]
        b[i, i] = b[i, pool].max() if pool.any() else 1.0  # one rank in all: everything stays local
    return b / b.sum(1, keepdims=True)


def target_shares(ctx: PlacementContext) -> np.ndarray:
    """[G_src, E] target share of source i's assignments for expert e (rows sum to 1)."""
    return rank_shares(ctx)[:, _owner(ctx)] / ctx.experts_per_rank


def intra_node_fraction(loads: np.ndarray, ctx: PlacementContext) -> float:
    """Fraction of the assignments in loads [..., G_src, E] whose destination (contiguous owner) is on the source's
    node, the local rank included. 0 for no assignments."""
    lo = np.asarray(loads, dtype=np.float64).reshape(-1, ctx.num_ranks, ctx.num_experts).sum(0)
    node = np.asarray(ctx.node_of_rank)
    same = node[:, None] == node[_owner(ctx)][None, :]  # [G_src, E]
    total = lo.sum()
    return float(lo[same].sum() / total) if total > 0 else 0.0


class TaMoePolicy:
    """Placement: contiguous, never changed. route(): new = (1 - lambda) * loads + lambda * total_s * target[s] per
    (micro-batch, source) row, so every row keeps its total (float counts)."""

    def __init__(self, ctx: PlacementContext, params: TaMoeParams | None = None):
        self.ctx = ctx
        self.params = params or TaMoeParams()
        self._target = target_shares(ctx)  # [G_src, E]

    def initial(self) -> Placement:
        return contiguous(self.ctx.num_experts, self.ctx.num_ranks)

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        return current

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        """loads [..., G_src, E] -> the same shape, float."""
        lam = float(self.params.strength)
        if lam == 0.0:
            return loads
        lo = np.asarray(loads, dtype=np.float64)
        totals = lo.sum(-1, keepdims=True)
        return (1.0 - lam) * lo + lam * totals * self._target
