"""FlexMoE (Nie et al., SIGMOD 2023): dynamic expert replication with a cost-gated greedy heuristic.

A RECONSTRUCTION, not a port: FlexMoE has no public code and its paper text was not available. This follows the
description in later papers (SwiftMoE/SYMI, TopoEP, FineMoE, Hecate) as written up in specs/placement.md §3:
trigger on a balance-ratio threshold, then repeatedly give the most loaded expert (per replica) one more replica,
taking a free slot or shrinking the least loaded replicated expert, while the predicted saving over a horizon
beats the cost of moving a persistent replica (weights + gradients + optimizer state).

Shapes: G = EP ranks, S = slots per rank (ctx.slots_per_rank, spare slots beyond E/G allow expansion),
E = logical experts, M = micro-batches.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from moesim.placement.base import EMPTY, Placement, PlacementContext, balance_ratio, contiguous, layer_time_s
from moesim.spec.errors import require
from moesim.spec.placement_params import FlexMoeParams


class Move(NamedTuple):
    """One accepted step of the heuristic: `expert` gained a replica on `rank`, in a slot that held `evicted`
    (EMPTY for a free slot; otherwise that expert lost this replica)."""

    expert: int
    rank: int
    evicted: int


def _per_source(avg_load: np.ndarray, num_ranks: int) -> np.ndarray:
    """[G_src, E] or [E] -> [G_src, E] float. A bare per-expert vector is spread evenly over the sources (with an
    EVEN split only the all-to-all term of the time model depends on where tokens come from)."""
    a = np.asarray(avg_load, dtype=np.float64)
    if a.ndim == 1:
        return np.broadcast_to(a / num_ranks, (num_ranks, a.shape[0])).copy()
    return a.reshape(-1, *a.shape[-2:]).sum(0)


def _pick_target(ctx: PlacementContext, plan: Placement, avg: np.ndarray, hot: int) -> tuple[int, int, int] | None:
    """(rank, slot, evicted expert) for hot's next replica, or None when no rank can take one.
    A free slot on a rank without hot comes first (expand costs no replica elsewhere); only if none exists is a
    replica of the coldest replicated expert given up (shrink + expand)."""
    E = ctx.num_experts
    se = plan.slot_expert
    holders = plan.holders(E)  # [E, G]
    eligible = ~holders[hot]
    free = eligible & (se == EMPTY).any(1)
    evicted = EMPTY
    if free.any():
        candidates = free
    else:
        w = avg.sum(0)
        r = plan.replicas(E)
        per_replica = np.where(r > 0, w / np.maximum(r, 1), np.inf)
        # cold must keep a replica after the shrink, and must sit on a rank that can take hot
        can_shrink = (r > 1) & (np.arange(E) != hot) & (holders & eligible[None, :]).any(1)
        if not can_shrink.any():
            return None
        evicted = int(np.argmin(np.where(can_shrink, per_replica, np.inf)))
        candidates = eligible & holders[evicted]
    load = plan.rank_load(avg)
    ranks = np.flatnonzero(candidates)
    lo = load[ranks].min()
    tied = ranks[load[ranks] <= lo + 1e-9 * max(abs(lo), 1.0)]  # float noise must not break a tie
    hot_nodes = np.unique(ctx.node_of_rank[holders[hot]])
    same_node = tied[np.isin(ctx.node_of_rank[tied], hot_nodes)]
    rank = int(same_node[0] if same_node.size else tied[0])
    slot = int(np.flatnonzero(se[rank] == evicted)[0])
    return rank, slot, evicted


def _plan(ctx: PlacementContext, current: Placement, avg_load: np.ndarray,
          params: FlexMoeParams) -> tuple[Placement, tuple[Move, ...]]:
    E = ctx.num_experts
    avg = _per_source(avg_load, ctx.num_ranks)  # [G_src, E]
    if balance_ratio(current.rank_load(avg)) <= params.threshold:
        return current, ()
    plan, moves = current, []
    t_plan = layer_time_s(ctx, plan, avg)
    w = avg.sum(0)
    while len(moves) < params.max_moves_per_step:
        r = plan.replicas(E)
        # the hottest replica on the busiest rank: replicating the globally hottest expert would not help when
        # the busiest rank is busy with several warm experts (the balance ratio is what FlexMoE targets)
        busiest = int(np.argmax(plan.rank_load(avg)))
        on_busiest = plan.holders(E)[:, busiest]
        hot = int(np.argmax(np.where(on_busiest & (r > 0), w / np.maximum(r, 1), -np.inf)))
        target = _pick_target(ctx, plan, avg, hot)
        if target is None:
            break
        rank, slot, evicted = target
        se = plan.slot_expert.copy()
        se[rank, slot] = hot
        candidate = Placement(se, plan.transient, plan.split)
        t_cand = layer_time_s(ctx, candidate, avg)
        gain = (t_plan - t_cand) * params.horizon_steps
        # the new replica is copied from the best-connected existing holder of hot
        bw = ctx.bandwidth_bytes_per_s[plan.holders(E)[hot], rank].max()
        cost = ctx.expert_state_bytes / bw
        if gain <= cost:
            break
        plan, t_plan = candidate, t_cand
        moves.append(Move(hot, rank, evicted))
    return plan, tuple(moves)


def plan_moves(ctx: PlacementContext, current: Placement, avg_load: np.ndarray, params: FlexMoeParams) -> Placement:
    """FlexMoE's decision for one layer. avg_load [G_src, E] (or [M, G_src, E], summed over micro-batches) or
    [E]: the expected per-step loads. Returns `current` itself when the balance ratio is within the threshold
    or no move pays for itself, else a new placement of the same shape [G, S] (split EVEN)."""
    return _plan(ctx, current, avg_load, params)[0]


class FlexMoePolicy:
    """Decides every step from the moving average of the previous `history_steps` steps' loads, then records the
    current step's loads (so it never sees the step it places). No decision before any history exists."""

    def __init__(self, ctx: PlacementContext, params: FlexMoeParams | None = None):
        # replicas need room: with exactly E/G slots nothing can be expanded and no replica exists to shrink
        require(ctx.slots_per_rank > ctx.num_experts // ctx.num_ranks, "placement.slots_per_gpu",
                ctx.slots_per_rank, f"more than experts / ep ({ctx.num_experts // ctx.num_ranks}) for flexmoe: its "
                                    "replicas live in the spare slots")
        self.ctx = ctx
        self.params = params or FlexMoeParams()
        self._history: deque[np.ndarray] = deque(maxlen=self.params.history_steps)
        self.accepted_changes = 0  # steps at which the placement changed
        self.last_moves: tuple[Move, ...] = ()  # the moves of the latest decision (empty: none)

    def initial(self) -> Placement:
        # contiguous experts; the spare slots stay EMPTY until an expand fills them
        return contiguous(self.ctx.num_experts, self.ctx.num_ranks, self.ctx.slots_per_rank)

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        """loads [M, G_src, E] of this step (only recorded, not used for this step's decision)."""
        step_load = np.asarray(loads, dtype=np.float64).reshape(-1, self.ctx.num_ranks, self.ctx.num_experts).sum(0)
        new, moves = current, ()
        if self._history:
            new, moves = _plan(self.ctx, current, np.mean(self._history, axis=0), self.params)
        self._history.append(step_load)
        self.last_moves = moves
        if not new.same_as(current):
            self.accepted_changes += 1
        return new

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        return loads
