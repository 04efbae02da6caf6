"""The simulator's routing of one (step, MoE layer, micro-batch) -> what one rank sends, receives and computes.

Pure numpy. Every rank builds its own view from the same LayerRouting (moesim.sim.simulate), so no counts are
exchanged at run time and measured and simulated runs move the same rows:

- the router's choices: rank q asked for ``loads[q, e]`` assignments of expert e; its T tokens get them as
  ``ids = repeat(experts, loads).reshape(k, T).T`` (token t takes slots t, T + t, ...: k distinct experts whenever
  no expert is asked for more than T times, which the simulator's top-k cap makes the rule);
- the gate: ``sent[q, e]`` rows go to expert e: the first ``min(loads, sent)`` of its assignments in token order
  are kept, the others dropped (they add nothing to the token's output), and ``sent - kept`` zero rows are
  capacity padding (padding per source); ``computed[e] - sum_q sent[q, e]`` more zero rows are padding at the
  expert (padding per EP group);
- the placement (moesim.placement.base.Placement): an expert may have several copies (EPLB's redundant experts,
  FlexMoE's replicas, FasterMoE's per-step shadows). A source splits its rows of an expert over the copies as the
  placement's split matrix says, in whole rows (the simulator splits fractions: largest remainders, so a copy's
  rows differ from the simulated share by less than one row per source); its kept rows go to the holders in EP
  order, each a consecutive run of them in token order, then the padding rows;
- the flex dispatcher (DeepEP inside a node; flex_routing): one row per (token, destination rank) that keeps a
  choice there, with the token's gates of those choices; no padding rows travel, each copy computes its
  padding at the expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moesim.placement.base import EMPTY, Placement, ReplicaSplit, contiguous
from moesim.sim.placement_driver import integer_rows
from moesim.spec.errors import SpecError


@dataclass(frozen=True)
class GroupSlots:
    """One EP group's placement as the ranks run it (every EP group of a stage holds the same)."""

    experts: tuple[tuple[int, ...], ...]  # [ep] each EP rank's experts in slot order (empty slots left out)
    shadow: tuple[tuple[bool, ...], ...]  # [ep] alike: the slot holds a per-step copy (FasterMoE's shadow)
    split: np.ndarray  # [ep_src, E, ep] fraction of a source's rows of expert e that each EP rank gets
    even: np.ndarray | None  # [E, ep] each copy's share of an expert's computed rows; None: by arrivals

    @property
    def shadow_any(self) -> bool:
        return any(any(row) for row in self.shadow)

    def owners(self, expert: int) -> list[int]:
        """EP ranks holding a persistent copy of `expert` (weights, gradients and optimizer state), in order."""
        return list(self._holders[0].get(expert, ()))

    def shadows(self, expert: int) -> list[int]:
        """EP ranks holding a per-step copy of `expert` (its weights broadcast by its first owner)."""
        return list(self._holders[1].get(expert, ()))

    @cached_property
    def _holders(self) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
        """(owners, shadows): expert -> EP ranks in order, by the kind of the expert's first slot on each rank;
        worked out once per placement (a trainer asks per step, layer and expert)."""
        owners: dict[int, list[int]] = {}
        shadows: dict[int, list[int]] = {}
        for g, (ex, sh) in enumerate(zip(self.experts, self.shadow)):
            for e in dict.fromkeys(ex):  # each expert once per rank, its first slot deciding
                (shadows if sh[ex.index(e)] else owners).setdefault(e, []).append(g)
        return owners, shadows


def group_slots(placement: Placement | None, num_experts: int, ep: int) -> GroupSlots:
    """None = contiguous expert parallelism: expert e in slot e % (E / ep) of EP rank e // (E / ep)."""
    place = placement if placement is not None else contiguous(num_experts, ep)
    se = place.slot_expert
    if se.shape[0] != ep:
        raise SpecError("placement", f"{se.shape[0]} EP ranks", f"a placement over the layout's {ep} EP ranks")
    used = se != EMPTY
    experts = tuple(tuple(int(e) for e in row[keep]) for row, keep in zip(se, used))
    shadow = tuple(tuple(bool(t) for t in row[keep]) for row, keep in zip(place.transient, used))
    even = place.even_matrix(num_experts) if place.split is ReplicaSplit.EVEN else None
    return GroupSlots(experts, shadow, np.asarray(place.split_matrix(num_experts)), even)


@dataclass(frozen=True)
class RankRouting:
    """One rank's rows of one (step, layer, micro-batch). Slot ids are ``t * k + j`` (token t, choice j)."""

    expert_ids: np.ndarray  # [T, k] the router's choices
    send_slots: np.ndarray  # [rows sent] slot id of each dispatched row, -1 for a padding row; by destination
    # rank, then its slots in order, then token order
    send_dest: np.ndarray  # [rows sent] the EP rank each row goes to
    send_expert: np.ndarray  # [rows sent] the expert each row goes to
    send_splits: list[int]  # [ep] rows to each EP rank
    recv_splits: list[int]  # [ep] rows from each EP rank
    local_experts: tuple[int, ...]  # this rank's experts in slot order (shadows included)
    expert_rows: tuple[np.ndarray, ...]  # per local slot: indices into the received rows it computes
    expert_padding: tuple[int, ...]  # per local slot: extra zero rows computed (padding at the expert)
    expert_computed: tuple[int, ...]  # per local slot: rows it computes, padding included
    dropped: int  # assignments dropped by the gate


def split_rows(loads: np.ndarray, sent: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loads, sent [ep_src, E] (whole) -> (kept rows, padding rows) [ep_src, E, ep] each source sends each EP rank:
    each total split over the expert's copies by `split` [ep_src, E, ep] in whole rows."""
    kept = np.minimum(loads, sent)
    return (integer_rows(kept[..., None] * split).astype(np.int64),
            integer_rows((sent - kept)[..., None] * split).astype(np.int64))


def rank_routing(loads: np.ndarray, sent: np.ndarray, computed: np.ndarray, sources: np.ndarray, me: int,
                 top_k: int, slots: GroupSlots) -> RankRouting:
    """loads, sent [q, E] of one micro-batch (the stage's local ranks); computed [E] of this rank's EP group;
    sources [ep]: the group's local ranks in EP order; me: this rank's EP index."""
    demand = _whole(loads, "routing loads")[sources]  # [ep, E]
    rows = _whole(sent, "gate rows")[sources]
    mine = demand[me]
    E, ep = mine.size, len(sources)
    tokens, rem = divmod(int(mine.sum()), top_k)
    if rem:
        raise SpecError("routing", int(mine.sum()), f"assignments that are a multiple of top_k ({top_k})")
    ids = np.repeat(np.arange(E), mine).reshape(top_k, tokens).T
    by_expert = np.argsort(ids.reshape(-1), kind="stable")  # slot ids grouped by expert, token order inside
    start = np.concatenate([[0], np.cumsum(mine)])
    real, pad = split_rows(demand, rows, slots.split)  # [ep_src, E, ep]
    before = np.cumsum(real[me], axis=-1) - real[me]  # [E, ep] my kept rows of e sent to earlier copies
    send_slots, send_dest, send_expert, send_splits = [], [], [], [0] * ep
    for g in range(ep):
        for e in slots.experts[g]:
            n, p = int(real[me, e, g]), int(pad[me, e, g])
            first = start[e] + before[e, g]
            send_slots.append(np.concatenate([by_expert[first:first + n], np.full(p, -1, np.int64)]))
            send_dest.append(np.full(n + p, g, np.int64))
            send_expert.append(np.full(n + p, e, np.int64))
            send_splits[g] += n + p
    local = slots.experts[me]
    per_source = (real + pad)[:, list(local), me]  # [ep, my slots] rows from each source, slot order
    recv_splits = per_source.sum(1).astype(int).tolist()
    offsets = np.concatenate([[0], np.cumsum(per_source.reshape(-1))])
    arriving = (real + pad).sum(0)  # [E, ep]
    target = _computed_per_copy(_whole(computed, "computed rows"), arriving, slots)
    expert_rows, padding, computed_rows = [], [], []
    for j, e in enumerate(local):
        idx = [np.arange(offsets[s * len(local) + j], offsets[s * len(local) + j] + per_source[s, j])
               for s in range(ep)]
        expert_rows.append(np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64))
        padding.append(max(0, int(target[e, me] - arriving[e, me])))
        computed_rows.append(int(arriving[e, me]) + padding[-1])
    empty = np.zeros(0, np.int64)

    def cat(parts: list) -> np.ndarray:
        return np.concatenate(parts) if parts else empty

    return RankRouting(ids, cat(send_slots), cat(send_dest), cat(send_expert), send_splits, recv_splits,
                       tuple(local), tuple(expert_rows), tuple(padding), tuple(computed_rows),
                       int((mine - np.minimum(mine, rows[me])).sum()))


def _computed_per_copy(computed: np.ndarray, arriving: np.ndarray, slots: GroupSlots) -> np.ndarray:
    """[E, ep] rows each copy computes, padding included: the expert's computed rows split as the simulator splits
    them (moesim.sim.workload.moe_layer_work): by the copies' shares (even split) or by where rows arrive."""
    total = arriving.sum(-1, keepdims=True)
    if slots.even is not None:
        share = slots.even
    else:
        held = slots.split.max(0) > 0  # [E, ep] copies (every source can reach every copy)
        even = held / np.maximum(held.sum(-1, keepdims=True), 1)
        share = np.where(total > 0, arriving / np.maximum(total, 1), even)
    return integer_rows(computed[:, None] * share)


def _whole(counts: np.ndarray, what: str) -> np.ndarray:
    """Row counts must be whole numbers (simulation.routing_draws: expected gives fractions, not executable)."""
    arr = np.asarray(counts, dtype=np.float64)
    rounded = np.rint(arr)
    if np.any(np.abs(arr - rounded) > 1e-6):
        raise SpecError("simulation.routing_draws", "expected", f"exact or normal draws: moesim execute needs whole "
                        f"{what}, not expected values")
    return rounded.astype(np.int64)


@dataclass(frozen=True)
class FlexRouting:
    """One rank's rows of one (step, layer, micro-batch) under the flex dispatcher (DeepEP's intra-node
    dispatch): a source sends one row per (token, destination EP rank) holding at least one kept choice of the
    token, and the token's k gates beside it (zeros for the choices that go elsewhere or were dropped); the
    destination expands each row into one row per local expert the token chose; capacity padding is not sent but
    computed at the expert (zero rows)."""

    send_tokens: np.ndarray  # [rows sent] the token of each row, by destination rank, then token order
    send_choices: np.ndarray  # [rows sent, k] bool: the row carries the token's choice j (kept, to that rank)
    send_splits: list[int]  # [ep] rows to each EP rank
    recv_splits: list[int]  # [ep] rows from each EP rank
    expert_rows: tuple[np.ndarray, ...]  # per local slot: indices into the received rows it computes
    expert_gates: tuple[np.ndarray, ...]  # per local slot: each row's gate in the received gates [rows, k] flat
    expert_padding: tuple[int, ...]  # per local slot: zero rows computed beside its real rows


def kept_to(rr: RankRouting, dest: int, expert: int | None = None) -> np.ndarray:
    """Slot ids of a source's kept choices that go to EP rank `dest` (to `expert` there, when given), in the order
    it sends them."""
    to = (rr.send_dest == dest) & (rr.send_slots >= 0)
    return rr.send_slots[to if expert is None else to & (rr.send_expert == expert)]


def flex_routing(sources: list[RankRouting], me: int, top_k: int) -> FlexRouting:
    """sources[j]: EP rank j's RankRouting of the same micro-batch and EP group (rank_routing with me = j);
    me: this rank's EP index. A choice goes to the copy its RankRouting sends it to (replicas, shadows)."""
    own, ep = sources[me], len(sources)
    kept_by_rank = [kept_to(own, g) for g in range(ep)]
    tokens = [np.unique(kept // top_k) for kept in kept_by_rank]  # sorted: token order
    send_tokens = np.concatenate(tokens).astype(np.int64)
    choices = np.zeros((len(send_tokens), top_k), dtype=bool)
    start = 0
    for kept, tok in zip(kept_by_rank, tokens):
        choices[start + np.searchsorted(tok, kept // top_k), kept % top_k] = True
        start += len(tok)
    arriving = [np.unique(kept_to(rr, me) // top_k) for rr in sources]  # each source's tokens to me
    recv_splits = [len(tok) for tok in arriving]
    offsets = np.concatenate([[0], np.cumsum(recv_splits)]).astype(np.int64)
    rows, gates, padding = [], [], []
    for j, e in enumerate(own.local_experts):
        idx, gidx = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for s, rr in enumerate(sources):
            kept = kept_to(rr, me, e)
            row = offsets[s] + np.searchsorted(arriving[s], kept // top_k)
            idx.append(row)
            gidx.append(row * top_k + kept % top_k)
        rows.append(np.concatenate(idx).astype(np.int64))
        gates.append(np.concatenate(gidx).astype(np.int64))
        padding.append(own.expert_computed[j] - len(rows[-1]))  # the padding sent and at the expert, both here
    return FlexRouting(send_tokens, choices, [len(tok) for tok in tokens], recv_splits, tuple(rows), tuple(gates),
                       tuple(padding))
