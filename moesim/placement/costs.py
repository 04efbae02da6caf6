"""What a placement costs besides its balance (spec placement.md section 9), as pure functions of the context:
migration of persistent replicas, per-step broadcast of transient shadows, per-step gradient all-reduce among
an expert's replicas. Transfers into one rank run one after another; different ranks transfer in parallel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement.base import EMPTY, Placement, PlacementContext


@dataclass(frozen=True)
class Migration:
    moved_slots: int  # persistent slots filled by a transfer
    bytes: float  # weights + gradients + optimizer state moved
    seconds: float  # the slowest receiving rank's transfers


def _persistent(p: Placement, width: int) -> np.ndarray:
    se = np.where(p.transient, EMPTY, p.slot_expert)
    pad = width - se.shape[1]
    return np.pad(se, ((0, 0), (0, pad)), constant_values=EMPTY) if pad > 0 else se


def migration(ctx: PlacementContext, old: Placement, new: Placement) -> Migration:
    """Each persistent slot of `new` that holds an expert it did not hold in `old` is copied from the old holder
    with the fastest link to it (weights, gradients and optimizer state)."""
    width = max(old.slots_per_rank, new.slots_per_rank)
    before, after = _persistent(old, width), _persistent(new, width)
    moved = (before != after) & (after != EMPTY)
    if not moved.any():
        return Migration(0, 0.0, 0.0)
    holders = old.holders(ctx.num_experts) & ~_transient_only(old, ctx.num_experts)
    per_rank_s = np.zeros(ctx.num_ranks)
    for g, s in zip(*np.nonzero(moved)):
        e = after[g, s]
        src = np.flatnonzero(holders[e])
        bw = ctx.bandwidth_bytes_per_s[src, g].max() if len(src) else ctx.bandwidth_bytes_per_s[:, g].min()
        per_rank_s[g] += ctx.expert_state_bytes / bw
    count = int(moved.sum())
    return Migration(count, count * ctx.expert_state_bytes, float(per_rank_s.max()))


def _transient_only(p: Placement, num_experts: int) -> np.ndarray:
    """[E, G] holders whose only copy is a transient shadow."""
    persistent = Placement(np.where(p.transient, EMPTY, p.slot_expert))
    h = np.zeros((num_experts, p.num_ranks), bool)
    g, s = np.nonzero(persistent.slot_expert != EMPTY)
    h[persistent.slot_expert[g, s], g] = True
    return p.holders(num_experts) & ~h


def shadow_s(ctx: PlacementContext, placement: Placement) -> float:
    """Transient shadows: the owner broadcasts each shadowed expert's weights before the forward pass and the
    copies' gradients are reduced back after the backward pass, pipelined over the slowest link among the
    EP ranks (FasterMoE's 2p per shadowed expert)."""
    shadowed = np.unique(placement.slot_expert[placement.transient & (placement.slot_expert != EMPTY)])
    if not len(shadowed):
        return 0.0
    off = ~np.eye(ctx.num_ranks, dtype=bool)
    slowest = ctx.bandwidth_bytes_per_s[off].min() if off.any() else ctx.bandwidth_bytes_per_s.min()
    return float(2.0 * len(shadowed) * ctx.expert_weight_bytes / slowest)


def replica_sync_s(ctx: PlacementContext, placement: Placement, grad_bytes: float) -> float:
    """Per step, every expert with r > 1 persistent replicas all-reduces its gradients among its holders:
    2(r-1)/r x grad_bytes over the slowest link between them. A rank runs its experts' all-reduces one after
    another; the slowest rank sets the time."""
    se = np.where(placement.transient, EMPTY, placement.slot_expert)
    per_rank = np.zeros(ctx.num_ranks)
    for e in range(ctx.num_experts):
        ranks = np.unique(np.nonzero(se == e)[0])
        r = len(ranks)
        if r < 2:
            continue
        bw = ctx.bandwidth_bytes_per_s[np.ix_(ranks, ranks)][~np.eye(r, dtype=bool)].min()
        per_rank[ranks] += 2.0 * (r - 1) / r * grad_bytes / bw
    return float(per_rank.max())
