"""DeepSeek EPLB (deepseek-ai/EPLB, spec placement.md section 6): redundant experts plus balanced packing.

Shapes: L = layers handed to the pure functions together, E = logical experts, P = physical experts
(E + redundant), G = GPUs (EP ranks), N = nodes. The pure functions follow the reference algorithm so that the
README test vector comes out bit-exactly; `EplbPolicy` wraps them as a periodic, history-based placement policy.

Tie rules (they decide the test vector): items are sorted with a *stable* descending sort, so equal weights
keep their index order; a packed item goes to the lightest non-full pack, ties to the lowest pack index; an
extra replica goes to the first expert with the largest per-replica load (np.argmax).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from moesim.placement.base import EMPTY, Placement, PlacementContext
from moesim.spec.errors import require
from moesim.spec.placement_params import EplbParams


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Split n weighted items into `num_packs` packs of exactly n/num_packs items each, greedily (LPT).

    weight [L, n] -> pack_index [L, n] (the pack of each item), rank_in_pack [L, n] (its position in that pack,
    in the order items were put in: heaviest first)."""
    weight = np.asarray(weight, dtype=np.float64)
    layers, n = weight.shape
    require(num_packs >= 1 and n % num_packs == 0, "num_packs", num_packs, f"a divisor of the {n} items")
    per_pack = n // num_packs
    if per_pack == 1:
        # One item per pack: the reference keeps items where they are rather than sorting them.
        return (np.broadcast_to(np.arange(n), (layers, n)).copy(), np.zeros((layers, n), np.int64))
    pack_index = np.empty((layers, n), np.int64)
    rank_in_pack = np.empty((layers, n), np.int64)
    for layer in range(layers):
        pack_weight = np.zeros(num_packs)
        pack_items = np.zeros(num_packs, np.int64)
        for item in np.argsort(-weight[layer], kind="stable"):  # stable: equal weights keep index order
            open_packs = np.flatnonzero(pack_items < per_pack)
            pack = open_packs[np.argmin(pack_weight[open_packs])]  # argmin: ties to the lowest pack index
            pack_index[layer, item] = pack
            rank_in_pack[layer, item] = pack_items[pack]
            pack_weight[pack] += weight[layer, item]
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spread `num_phy` physical experts over E logical ones, minimising the largest per-replica load.

    weight [L, E] -> phy2log [L, num_phy] (logical expert of each physical one: the E originals first, then the
    added replicas in the order they were added), rank [L, num_phy] (replica index of each physical expert
    within its logical expert), logcnt [L, E] (replicas per logical expert)."""
    weight = np.asarray(weight, dtype=np.float64)
    layers, num_log = weight.shape
    require(num_phy >= num_log, "num_phy", num_phy, f">= the {num_log} logical experts")
    rows = np.arange(layers)
    phy2log = np.empty((layers, num_phy), np.int64)
    rank = np.zeros((layers, num_phy), np.int64)
    phy2log[:, :num_log] = np.arange(num_log)
    logcnt = np.ones((layers, num_log), np.int64)
    for phy in range(num_log, num_phy):
        # The greedy that is optimal for the max per-replica load: feed the currently worst-off expert.
        hot = np.argmax(weight / logcnt, axis=-1)
        phy2log[:, phy] = hot
        rank[:, phy] = logcnt[rows, hot]
        logcnt[rows, hot] += 1
    return phy2log, rank, logcnt


def _rebalance_layer(weight: np.ndarray, num_phy: int, num_groups: int, num_nodes: int,
                     num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hierarchical EPLB for one layer. weight [E] -> phy2log [P], rank [P], logcnt [E]; GPU-major output."""
    num_log = weight.shape[0]
    group_size = num_log // num_groups
    gpus_per_node = num_gpus // num_nodes
    phy_per_node = num_phy // num_nodes
    phy_per_gpu = num_phy // num_gpus

    # 1. Whole expert groups go to nodes (group-limited routing keeps a token's experts on few nodes).
    group_weight = weight.reshape(num_groups, group_size).sum(-1)
    group_node, group_rank = balanced_packing(group_weight[None], num_nodes)
    phy2log = np.empty(num_phy, np.int64)
    rank = np.empty(num_phy, np.int64)
    logcnt = np.empty(num_log, np.int64)
    for node in range(num_nodes):
        # This node's logical experts, ordered by the position its group got in the node, then within the group.
        groups = np.flatnonzero(group_node[0] == node)
        groups = groups[np.argsort(group_rank[0, groups], kind="stable")]
        experts = (groups[:, None] * group_size + np.arange(group_size)).ravel()  # [E/N] logical ids

        # 2. Replicas stay inside the node, so redundancy never adds cross-node all-to-all traffic.
        local_phy, local_rank, local_cnt = replicate_experts(weight[experts][None], phy_per_node)
        logcnt[experts] = local_cnt[0]

        # 3. Physical experts (each carrying an even share w/cnt of its expert) are packed onto the node's GPUs.
        phy_weight = weight[experts][local_phy[0]] / local_cnt[0][local_phy[0]]
        gpu, slot = balanced_packing(phy_weight[None], gpus_per_node)
        position = node * phy_per_node + gpu[0] * phy_per_gpu + slot[0]  # GPU-major: slot p on GPU p // (P/G)
        phy2log[position] = experts[local_phy[0]]
        rank[position] = local_rank[0]
    return phy2log, rank, logcnt


def use_hierarchical(num_experts: int, num_groups: int, num_nodes: int) -> bool:
    """Whether EPLB can keep whole expert groups on nodes: the groups must split the experts and the nodes the
    groups. deepseek-ai/EPLB falls back to the global policy when num_groups % num_nodes != 0 and asserts on
    the other; moesim falls back on both, since either way no node-aligned group layout exists."""
    return num_experts % num_groups == 0 and num_groups % num_nodes == 0


def rebalance_experts(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point. weight [L, E] estimated loads -> phy2log [L, P], log2phy [L, E, maxcnt] (physical
    slots of each logical expert by replica index, -1 padded), logcnt [L, E]; P = num_replicas.

    Physical slot p lives on GPU p // (P / num_gpus); GPUs are node-major (GPU g on node g // (G / N)).
    Uses the hierarchical policy where `use_hierarchical`, else the global one (1 group, 1 node), as upstream.
    Two replicas of one expert can land on the same GPU: the reference's packing ignores which expert a
    physical one copies (deepseek-ai/EPLB issue #22). The output keeps them, so it matches the reference; such
    a GPU serves 2/k of the expert's tokens (`Placement.from_phy2log` keeps that share)."""
    weight = np.asarray(weight, dtype=np.float64)
    require(weight.ndim == 2, "weight", weight.shape, "a [layers, experts] array")
    layers, num_log = weight.shape
    require(num_gpus >= 1, "num_gpus", num_gpus, "an integer >= 1")
    require(num_replicas >= num_log and num_replicas % num_gpus == 0, "num_replicas", num_replicas,
            f"a multiple of the {num_gpus} GPUs, >= the {num_log} logical experts")
    require(num_groups >= 1, "num_groups", num_groups, "an integer >= 1 (expert groups)")
    require(num_nodes >= 1, "num_nodes", num_nodes, "an integer >= 1")
    if not use_hierarchical(num_log, num_groups, num_nodes):
        num_groups = num_nodes = 1  # global policy: replicas may go to any GPU
    require(num_gpus % num_nodes == 0, "num_nodes", num_nodes, f"a divisor of the {num_gpus} GPUs")
    phy2log = np.empty((layers, num_replicas), np.int64)
    rank = np.empty((layers, num_replicas), np.int64)
    logcnt = np.empty((layers, num_log), np.int64)
    for layer in range(layers):
        phy2log[layer], rank[layer], logcnt[layer] = _rebalance_layer(weight[layer], num_replicas, num_groups,
                                                                      num_nodes, num_gpus)
    log2phy = np.full((layers, num_log, int(logcnt.max())), -1, np.int64)
    layer_of = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    log2phy[layer_of, phy2log, rank] = np.arange(num_replicas)
    return phy2log, log2phy, logcnt


def gpu_load(weight: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """What EPLB's plan puts on each GPU. weight [L, E], phy2log [L, P] -> [L, G]: every physical expert carries
    an even share w_e / logcnt_e of its logical expert's load (EMPTY physical slots carry none)."""
    weight = np.asarray(weight, dtype=np.float64)
    phy2log = np.asarray(phy2log, dtype=np.int64)
    used = phy2log != EMPTY
    logcnt = np.stack([np.bincount(row[ok], minlength=weight.shape[-1]) for row, ok in zip(phy2log, used)])
    safe = np.where(used, phy2log, 0)
    share = np.where(used, np.take_along_axis(weight / np.maximum(logcnt, 1), safe, axis=-1), 0.0)
    return share.reshape(phy2log.shape[0], num_gpus, -1).sum(-1)


def keep_slots(new: Placement, current: Placement) -> Placement:
    """new with each rank's slots reordered so that an expert `current` already held on that rank keeps its
    slot index; the others fill the rank's free slots in `new`'s order, carrying their copies. Only experts
    that change rank then count as moved (vLLM's preserve_intragpu_slots does the same to EPLB's output).
    Both [G, S]; returns `new` itself when the shapes differ."""
    if new.slot_expert.shape != current.slot_expert.shape:
        return new
    slot_expert = np.full(new.slot_expert.shape, EMPTY)
    copies = np.zeros(new.slot_expert.shape, np.int64)
    for rank in range(new.num_ranks):
        used = new.slot_expert[rank] != EMPTY
        experts, counts = new.slot_expert[rank, used], new.copies[rank, used]
        old = current.slot_expert[rank]
        stays = np.isin(old, experts) & (old != EMPTY)
        slot_expert[rank, stays] = old[stays]
        order = np.argsort(experts)
        copies[rank, stays] = counts[order[np.searchsorted(experts[order], old[stays])]]
        arriving = ~np.isin(experts, old[stays])
        free = np.flatnonzero(~stays)[:int(arriving.sum())]
        slot_expert[rank, free] = experts[arriving]
        copies[rank, free] = counts[arriving]
    return Placement(slot_expert, split=new.split, copies=copies)




class EplbPolicy:
    """PlacementPolicy: every `period_steps` steps, re-run EPLB on the mean per-expert load of the last
    `history_steps` steps. Tokens split evenly over an expert's physical copies (the repo leaves the split
    open), so each rank computes exactly the load EPLB's plan gives it (`gpu_load`).

    Two things the reference leaves open are fixed without changing what a GPU computes: k copies of one expert
    that EPLB packs onto the same GPU (frequent under skew, EPLB issue #22) become one slot with copies = k (it
    gets k shares of the expert's tokens; the other k - 1 slots stay EMPTY, memory EPLB spends too), and an
    expert that stays on its GPU keeps its slot index (`keep_slots`), so only experts that change GPU count as
    moved."""

    def __init__(self, ctx: PlacementContext, params: EplbParams | None = None):
        self.ctx = ctx
        self.params = EplbParams() if params is None else params
        num_log, num_gpus = ctx.num_experts, ctx.num_ranks
        self.num_phy = num_log + self.params.redundant_experts
        # P/G physical experts per GPU must fit the memory budget of slots_per_rank expert slots.
        lowest = -num_log % num_gpus
        highest = ctx.slots_per_rank * num_gpus - num_log
        values = range(lowest, highest + 1, num_gpus)
        shown = [str(v) for v in values] if len(values) <= 4 else [str(values[0]), str(values[1]), "...",
                                                                    str(values[-1])]
        allowed = f"one of {', '.join(shown)}" if shown else "none fits these slots"
        require(self.num_phy % num_gpus == 0 and self.num_phy // num_gpus <= ctx.slots_per_rank,
                "redundant_experts", self.params.redundant_experts,
                f"an integer with E + redundant_experts a multiple of the {num_gpus} EP ranks and at most "
                f"{ctx.slots_per_rank} slots per rank (E = {num_log}): {allowed}")
        # The model's group-limited routing needs groups that split the experts: a mismatch is a config error
        # here, even though rebalance_experts itself would fall back to the global policy.
        require(num_log % self.params.num_groups == 0, "num_groups", self.params.num_groups,
                f"a divisor of the {num_log} experts")
        self.num_groups, self.num_nodes = self._hierarchy()
        self.history: deque[np.ndarray] = deque(maxlen=self.params.history_steps)

    def _hierarchy(self) -> tuple[int, int]:
        """(groups, nodes) handed to rebalance_experts: the hierarchical policy as EPLB picks it, or (1, 1), the
        global policy, when it is switched off, when num_groups % nodes != 0, or when the EP ranks are not
        node-major with equal counts, which the hierarchical layout (GPU g on node g // (G/N)) assumes."""
        _, node = np.unique(np.asarray(self.ctx.node_of_rank), return_inverse=True)
        nodes = int(node.max()) + 1
        node_major = (self.ctx.num_ranks % nodes == 0
                      and np.array_equal(node, np.arange(self.ctx.num_ranks) // (self.ctx.num_ranks // nodes)))
        if (not self.params.hierarchical or not node_major
                or not use_hierarchical(self.ctx.num_experts, self.params.num_groups, nodes)):
            return 1, 1
        return self.params.num_groups, nodes

    def plan(self, weight: np.ndarray) -> Placement:
        """weight [E] estimated load per expert -> the [G, S] placement EPLB picks for it, copies included."""
        phy2log, _, _ = rebalance_experts(np.asarray(weight, dtype=np.float64)[None], self.num_phy,
                                          self.num_groups, self.num_nodes, self.ctx.num_ranks)
        return Placement.from_phy2log(phy2log[0], self.ctx.num_ranks, self.ctx.slots_per_rank)

    def initial(self) -> Placement:
        """[G, S]: EPLB on uniform loads (no statistics yet); slots past the GPU's distinct experts stay EMPTY."""
        return self.plan(np.ones(self.ctx.num_experts))

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        """loads [M, G_src, E]: this step's demand. The decision uses only earlier steps; then it is recorded."""
        new = current
        if step > 0 and step % self.params.period_steps == 0 and self.history:
            weight = np.mean(np.stack(self.history), axis=0)  # moving average, as the EPLB README suggests
            new = keep_slots(self.plan(weight), current)
            if new.same_as(current):
                new = current
        self.history.append(np.asarray(loads, dtype=np.float64).sum(axis=(0, 1)))
        return new

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        """loads [M, G_src, E] unchanged: EPLB moves experts, not tokens."""
        return loads
