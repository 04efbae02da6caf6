"""The simulator's routing of one (step, MoE layer, micro-batch) -> what one rank sends, receives and computes.

Pure numpy. Every rank builds its own view from the same LayerRouting (moesim.sim.simulate), so no counts are
exchanged at run time and measured and simulated runs move exactly the same rows:

- the router's choices: rank q asked for ``loads[q, e]`` assignments of expert e; its T tokens get them as
  ``ids = repeat(experts, loads).reshape(k, T).T`` (token t takes slots t, T + t, ...: k distinct experts whenever
  no expert is asked for more than T times, which the simulator's top-k cap makes the rule);
- the gate: ``sent[q, e]`` rows go to expert e: the first ``min(loads, sent)`` of its assignments in token order
  are kept, the others dropped (they add nothing to the token's output), and ``sent - kept`` zero rows are
  capacity padding (padding per source); ``computed[e] - sum_q sent[q, e]`` more zero rows are padding at the
  expert (padding per EP group);
- the placement: expert e lives in one slot of one EP rank (a placement with replicas is refused).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement.base import EMPTY, Placement
from moesim.spec.errors import SpecError


@dataclass(frozen=True)
class RankRouting:
    """One rank's rows of one (step, layer, micro-batch). Slot ids are ``t * k + j`` (token t, choice j)."""

    expert_ids: np.ndarray  # [T, k] the router's choices
    send_slots: np.ndarray  # [rows sent] slot id of each dispatched row, -1 for a padding row; by destination
    # rank, then its slot, then token order
    send_splits: list[int]  # [ep] rows to each EP rank
    recv_splits: list[int]  # [ep] rows from each EP rank
    expert_rows: tuple[np.ndarray, ...]  # per local slot: indices into the received rows it computes
    expert_padding: tuple[int, ...]  # per local slot: extra zero rows computed (padding at the expert)
    dropped: int  # assignments dropped by the gate


def expert_holders(placement: Placement | None, num_experts: int, ep: int) -> tuple[np.ndarray, np.ndarray]:
    """(EP rank, slot) holding each expert: ([E], [E]). None = contiguous: expert e in slot e % (E / ep) of
    rank e // (E / ep). A placement with several copies of an expert is refused (not executed yet)."""
    if placement is None:
        per = num_experts // ep
        e = np.arange(num_experts)
        return e // per, e % per
    se = placement.slot_expert
    if np.any(placement.transient) or np.any(placement.copies > 1) or \
            np.any(np.bincount(se[se != EMPTY], minlength=num_experts) != 1):
        raise SpecError("placement", "replicas or shadows", "a placement with one copy of each expert: moesim "
                        "execute does not run replicated experts yet (EPLB's redundant_experts, FasterMoE shadows)")
    rank, slot = np.nonzero(se != EMPTY)
    holder_rank, holder_slot = np.empty(num_experts, np.int64), np.empty(num_experts, np.int64)
    holder_rank[se[rank, slot]], holder_slot[se[rank, slot]] = rank, slot
    return holder_rank, holder_slot


def rank_routing(loads: np.ndarray, sent: np.ndarray, computed: np.ndarray, sources: np.ndarray, me: int,
                 top_k: int, holder_rank: np.ndarray, holder_slot: np.ndarray) -> RankRouting:
    """loads, sent [q, E] of one micro-batch (the stage's local ranks); computed [E] of this rank's EP group;
    sources [ep]: the group's local ranks in EP order; me: this rank's EP index."""
    q_me = int(sources[me])
    demand = _whole(loads[q_me], "routing loads")
    rows = _whole(sent, "gate rows")
    E = demand.size
    tokens, rem = divmod(int(demand.sum()), top_k)
    if rem:
        raise SpecError("routing", int(demand.sum()), f"assignments that are a multiple of top_k ({top_k})")
    ids = np.repeat(np.arange(E), demand).reshape(top_k, tokens).T
    by_expert = np.argsort(ids.reshape(-1), kind="stable")  # slot ids grouped by expert, token order inside
    start = np.concatenate([[0], np.cumsum(demand)])
    kept = np.minimum(demand, rows[q_me])
    ep = len(sources)
    send_slots, send_splits = [], [0] * ep
    order = np.lexsort((holder_slot, holder_rank))  # experts by destination rank, then slot
    for e in order:
        real = by_expert[start[e]:start[e] + kept[e]]
        pad = int(rows[q_me, e] - kept[e])
        send_slots.append(np.concatenate([real, np.full(pad, -1, np.int64)]))
        send_splits[holder_rank[e]] += int(rows[q_me, e])
    local = [e for e in np.argsort(holder_slot) if holder_rank[e] == me]  # my experts in slot order
    per_source = rows[sources][:, local]  # [ep, my experts] rows from each source, slot order
    recv_splits = per_source.sum(1).astype(int).tolist()
    offsets = np.concatenate([[0], np.cumsum(per_source.reshape(-1))]).reshape(-1)
    expert_rows, padding = [], []
    for j, e in enumerate(local):
        idx = [np.arange(offsets[s * len(local) + j], offsets[s * len(local) + j] + per_source[s, j])
               for s in range(ep)]
        expert_rows.append(np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64))
        padding.append(max(0, int(_whole(computed, "computed rows")[e] - per_source[:, j].sum())))
    return RankRouting(ids, np.concatenate(send_slots) if send_slots else np.zeros(0, np.int64), send_splits,
                       recv_splits, tuple(expert_rows), tuple(padding), int((demand - kept).sum()))


def _whole(counts: np.ndarray, what: str) -> np.ndarray:
    """Row counts must be whole numbers (simulation.routing_draws: expected gives fractions, not executable)."""
    arr = np.asarray(counts, dtype=np.float64)
    rounded = np.rint(arr)
    if np.any(np.abs(arr - rounded) > 1e-6):
        raise SpecError("simulation.routing_draws", "expected", f"exact or normal draws: moesim execute needs whole "
                        f"{what}, not expected values")
    return rounded.astype(np.int64)
