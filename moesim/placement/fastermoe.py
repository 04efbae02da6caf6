"""FasterMoE (He et al., PPoPP 2022): dynamic shadowing of hot experts and the optional topology-aware gate.

Follows specs/placement.md §2.1 (the prototype's per-worker-load version, adapted to several experts per worker)
and §2.3 (the gate, at count level). Smart scheduling (§2.2) is a timing matter for the simulator, not placement.

Shadow placements: the persistent part is the contiguous expert-parallel layout with E/G columns (FasterMoE never
migrates anything); shadowing the experts x_1..x_i appends i columns, column j holding x_j on every rank except
the ranks that already own it (EMPTY there). All appended slots are transient (weights broadcast from the owner,
gradients reduced back, discarded after the step) and the split is LOCAL: every source computes its own tokens
for a shadowed expert. So a shadowing step's placement is [G, E/G + i], which may exceed ctx.slots_per_rank: a
shadow is temporary memory (weights + gradients), not a reserved slot.

Shapes: G = EP ranks, E = logical experts, M = micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim.placement.base import EMPTY, Placement, PlacementContext, ReplicaSplit, contiguous
from moesim.spec.placement_params import FasterMoeParams


def _slowest_bandwidth(ctx: PlacementContext) -> float:
    """The slowest inter-rank link: FasterMoE's single `bw_net` (inf for one rank: nothing crosses a link)."""
    b = np.asarray(ctx.bandwidth_bytes_per_s, dtype=np.float64)
    off = ~np.eye(ctx.num_ranks, dtype=bool)
    return float(b[off].min()) if off.any() else np.inf


def _cost_s(rows: np.ndarray, shadows: int, c: float, f: float, p: float) -> float:
    """The prototype's roofline: slowest rank's compute + busiest sender's or receiver's network rows + the
    parameter traffic of the shadows. rows [G_src, G]."""
    net = rows.copy()
    np.fill_diagonal(net, 0.0)
    return float(rows.sum(0).max() * c + max(net.sum(1).max(), net.sum(0).max()) * f + shadows * p)


def shadow_placement(base: Placement, shadowed: Sequence[int], num_experts: int) -> Placement:
    """base [G, S] (persistent) plus one transient column per shadowed expert -> [G, S + len(shadowed)], LOCAL.
    No shadows: `base` itself."""
    if len(shadowed) == 0:
        return base
    holders = base.holders(num_experts)  # [E, G]
    cols = np.stack([np.where(holders[x], EMPTY, x) for x in shadowed], axis=1)
    se = np.concatenate([base.slot_expert, cols], axis=1)
    tr = np.concatenate([base.transient, np.ones(cols.shape, bool)], axis=1)
    return Placement(se, tr, ReplicaSplit.LOCAL)


def plan_shadows(ctx: PlacementContext, base: Placement, loads: np.ndarray,
                 params: FasterMoeParams) -> tuple[list[int], float, float]:
    """Which experts to shadow this step, from this step's loads [M, G_src, E] or [G_src, E].
    Returns (shadowed experts, hottest first; cost with them; cost without), costs in seconds per layer fwd+bwd.

    Experts are tried in descending total load; shadowing the top i is kept while the modelled cost keeps
    falling (first non-improvement stops, as in the prototype). Costs: c = ctx.row_compute_s per row (fwd+bwd),
    f = 4 * row_bytes / slowest bandwidth (dispatch + combine, fwd + bwd), p = 2 * expert_weight_bytes / slowest
    bandwidth (broadcast the weights forward, reduce the gradients backward)."""
    E = ctx.num_experts
    lo = np.asarray(loads, dtype=np.float64).reshape(-1, ctx.num_ranks, E).sum(0)  # [G_src, E]
    bw = _slowest_bandwidth(ctx)
    c, f, p = ctx.row_compute_s, 4.0 * ctx.row_bytes / bw, 2.0 * ctx.expert_weight_bytes / bw
    split = base.split_matrix(E)  # [G_src, E, G]
    rows = base.rank_rows(lo)  # [G_src, G]
    best = none = _cost_s(rows, 0, c, f, p)
    limit = E if params.max_shadows is None else min(params.max_shadows, E)
    order = np.argsort(-lo.sum(0), kind="stable")
    shadowed: list[int] = []
    src = np.arange(ctx.num_ranks)
    for x in order[:limit]:
        # a shadow on every rank turns x's tokens into local work for each source (same as split LOCAL)
        cand = rows - lo[:, x, None] * split[:, x, :]
        cand[src, src] += lo[:, x]
        cost = _cost_s(cand, len(shadowed) + 1, c, f, p)
        if not cost < best:
            break
        best, rows = cost, cand
        shadowed.append(int(x))
    return shadowed, best, none


def _apportion(weights: np.ndarray, totals: np.ndarray, allowed: np.ndarray, integral: bool) -> np.ndarray:
    """weights [N, K] >= 0, totals [N], allowed [N, K] bool -> [N, K] summing to totals per row, proportional to
    the weights (evenly over the allowed columns where a row's weights are all zero), zero outside `allowed`.
    integral: largest-remainder rounding, so integer counts stay integers."""
    w = np.where(allowed, weights, 0.0)
    w = np.where(w.sum(1, keepdims=True) > 0, w, allowed.astype(np.float64))
    quota = w / w.sum(1, keepdims=True) * totals[:, None]
    if not integral:
        return quota
    base = np.floor(quota)
    left = np.rint(totals - base.sum(1)).astype(np.int64)  # whole units still to hand out, fewer than K
    order = np.argsort(-(quota - base), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(w.shape[1]), w.shape).copy(), axis=1)
    return base + (rank < left[:, None])


def topology_gate(loads: np.ndarray, placement: Placement, ctx: PlacementContext, phi: float) -> np.ndarray:
    """FasterMoE's topology-aware gate at count level. loads [..., G_src, E] -> same shape, each row's total kept.

    For each (micro-batch, source) row with total R = sum_e loads: "remote" experts are those with no holder on
    the source's node in `placement` (a shadow counts as a holder, so shadowed experts are never remote). If the
    remote assignments exceed limit = floor(phi * R), they are scaled down to the limit in proportion, and the
    removed assignments go to the source's node-local experts in proportion to their loads (evenly if those are
    all zero). Integer-valued loads stay integers (largest remainder). R counts assignments (k per token), where
    the original caps tokens: with top-k routing the two differ by the factor k in both the limit and the count."""
    lo = np.asarray(loads)
    shape = lo.shape
    G, E = ctx.num_ranks, ctx.num_experts
    rows = lo.reshape(-1, G, E).astype(np.float64)
    node = np.asarray(ctx.node_of_rank)
    holders = placement.holders(E)  # [E, G]
    local = np.stack([holders[:, node == node[s]].any(1) for s in range(G)])  # [G_src, E]
    local = np.broadcast_to(local, rows.shape).reshape(-1, E)
    flat = rows.reshape(-1, E)
    totals = flat.sum(1)
    remote_total = np.where(local, 0.0, flat).sum(1)
    limit = np.floor(phi * totals + 1e-9)  # 0.29 * 100 must give 29, not 28.999...
    cut = (remote_total > limit) & local.any(1)  # with no local expert there is nowhere to send the surplus
    if not cut.any():
        return loads
    integral = bool(np.all(flat == np.floor(flat)))
    out = flat.copy()
    sub, loc = flat[cut], local[cut]
    kept = _apportion(sub, limit[cut], ~loc, integral)  # remote assignments scaled down to the limit
    added = _apportion(sub, remote_total[cut] - limit[cut], loc, integral)  # the surplus stays on the node
    out[cut] = np.where(loc, sub + added, kept)
    return out.reshape(shape).astype(lo.dtype, copy=False)


class FasterMoePolicy:
    """Shadows from the current step's gate output (FasterMoE decides per iteration, no history); the persistent
    placement never changes. `last_shadowed`: the experts shadowed at the latest step, hottest first."""

    def __init__(self, ctx: PlacementContext, params: FasterMoeParams | None = None):
        self.ctx = ctx
        self.params = params or FasterMoeParams()
        self.last_shadowed: list[int] = []

    def initial(self) -> Placement:
        return contiguous(self.ctx.num_experts, self.ctx.num_ranks)

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        """loads [M, G_src, E] of this step -> [G, E/G + i] with i shadows (or the persistent placement)."""
        base = _persistent(current)
        self.last_shadowed = []
        if self.params.shadowing:
            self.last_shadowed = plan_shadows(self.ctx, base, loads, self.params)[0]
        return shadow_placement(base, self.last_shadowed, self.ctx.num_experts)

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        """The gate runs before this step's shadows are chosen, so only persistent holders count as local: a
        shadow left over in `placement` from an earlier step is ignored."""
        if not self.params.topology_gate:
            return loads
        return topology_gate(loads, _persistent(placement), self.ctx, self.params.outgoing_fraction)


def _persistent(p: Placement) -> Placement:
    """p without its transient columns (shadows live one step), split EVEN."""
    keep = ~p.transient.any(0)
    if keep.all():
        return p
    return Placement(p.slot_expert[:, keep], p.transient[:, keep], ReplicaSplit.EVEN)
