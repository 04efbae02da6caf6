"""SmartMoE's online stage (spec placement.md section 4.2): periodic greedy re-placement of whole experts over
fixed slots, no replication. Shapes: G = EP ranks, S = slots per rank, E = logical experts, M = micro-batches.

Only the online stage is modelled; the offline search over hybrid-parallel plans is a layout choice made before
the run, outside any placement policy.
"""

from __future__ import annotations

import numpy as np

from moesim.placement.base import EMPTY, Placement, PlacementContext, PlacementError, contiguous
from moesim.spec.placement_params import SmartMoeParams


def greedy_replace(history_load: np.ndarray, current: Placement) -> Placement:
    """One SmartMoE decision. history_load [E] estimated load per expert; current [G, S] with every expert in
    exactly one slot. Each rank keeps as many experts as it holds now (the slots are fixed).

    Experts go, heaviest first (stable order), to the least-loaded rank with a free slot (ties to the lowest
    rank), except that an expert stays on its current rank when that rank has a free slot and is tied for the
    minimum. An expert that stays keeps its slot index; newcomers fill the rank's vacated slots in index order.
    Returns the new placement only if its max rank load is strictly below the current one, else `current`."""
    load = np.asarray(history_load, dtype=np.float64)
    num_experts = load.shape[0]
    se = current.slot_expert
    if not np.array_equal(current.replicas(num_experts), np.ones(num_experts, np.int64)):
        raise PlacementError("SmartMoE re-places single copies: every expert needs exactly one slot")
    rank_of = np.empty(num_experts, np.int64)
    ranks, slots = np.nonzero(se != EMPTY)
    rank_of[se[ranks, slots]] = ranks
    capacity = np.bincount(ranks, minlength=current.num_ranks)  # used slots per rank stay the used slots

    cur_max = np.bincount(rank_of, weights=load, minlength=current.num_ranks).max()
    assigned = np.zeros(current.num_ranks)
    count = np.zeros(current.num_ranks, np.int64)
    new_rank = np.empty(num_experts, np.int64)
    for e in np.argsort(-load, kind="stable"):
        open_ranks = np.flatnonzero(count < capacity)
        best = open_ranks[np.argmin(assigned[open_ranks])]
        home = rank_of[e]
        if count[home] < capacity[home] and assigned[home] == assigned[best]:
            best = home  # stickiness: among equally good ranks, not moving is free
        new_rank[e] = best
        assigned[best] += load[e]
        count[best] += 1
    if not assigned.max() < cur_max:  # the artifact adopts strict improvements only: a move costs a transfer
        return current

    slot_expert = np.full(se.shape, EMPTY)
    for rank in range(current.num_ranks):
        used = np.flatnonzero(se[rank] != EMPTY)
        stays = used[new_rank[se[rank, used]] == rank]
        slot_expert[rank, stays] = se[rank, stays]
        arrivals = np.flatnonzero((new_rank == rank) & (rank_of != rank))  # in expert-id order
        vacated = used[~np.isin(used, stays)]
        slot_expert[rank, vacated] = arrivals
    return Placement(slot_expert, split=current.split)




class SmartMoePolicy:
    """PlacementPolicy: at every step that is a positive multiple of `freq`, run `greedy_replace` on the mean
    load recorded over the previous `history_steps` steps, then forget that history.

    As in the artifact, a step's record is the first micro-batch's per-expert load, summed over sources (the
    artifact all-reduces its gate counts over the gate group); the other micro-batches are not looked at. Only
    E/G slots per rank are used, whatever the memory budget: SmartMoE does not replicate."""

    def __init__(self, ctx: PlacementContext, params: SmartMoeParams | None = None):
        self.ctx = ctx
        self.params = SmartMoeParams() if params is None else params
        self.history: list[np.ndarray] = []
        self.accepted_changes = 0  # decisions that adopted a new placement (the artifact's `changed_*` logs)

    def initial(self) -> Placement:
        """[G, S] contiguous placement; slots past E/G stay EMPTY for the whole run."""
        return contiguous(self.ctx.num_experts, self.ctx.num_ranks, self.ctx.slots_per_rank)

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        """loads [M, G_src, E]: this step's demand, recorded after the decision (decisions see earlier steps)."""
        freq, keep = self.params.freq, self.params.history_steps
        new = current
        if step > 0 and step % freq == 0:
            if self.history:
                new = greedy_replace(np.mean(np.stack(self.history), axis=0), current)
                self.accepted_changes += int(new is not current)
            self.history = []
        if step % freq >= freq - keep:
            self.history.append(np.asarray(loads, dtype=np.float64)[0].sum(axis=0))
        return new

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        """loads [M, G_src, E] unchanged: SmartMoE moves experts, not tokens."""
        return loads
