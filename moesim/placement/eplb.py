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
from dataclasses import dataclass

import numpy as np

from moesim.placement.base import EMPTY, Placement, PlacementContext, ReplicaSplit
from moesim.spec.errors import require


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Split n weighted items into `num_packs` packs of exactly n/num_packs items each, greedily (LPT).

    weight [L, n] -> pack_index [L, n] (the pack of each item), rank_in_pack [L, n] (its position in that pack,
    in the order items were put in: heaviest first)."""
    weight = np.asarray(weight, dtype=np.float64)
    layers, n = weight.shape
    if num_packs < 1 or n % num_packs:
        raise ValueError(f"{n} items do not split into {num_packs} equal packs")
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
    if num_phy < num_log:
        raise ValueError(f"{num_phy} physical experts cannot hold {num_log} logical ones")
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
    groups_per_node = num_groups // num_nodes
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


def rebalance_experts(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point. weight [L, E] estimated loads -> phy2log [L, P], log2phy [L, E, maxcnt] (physical
    slots of each logical expert by replica index, -1 padded), logcnt [L, E]; P = num_replicas.

    Physical slot p lives on GPU p // (P / num_gpus); GPUs are node-major (GPU g on node g // (G / N)).
    Uses the hierarchical policy when num_groups % num_nodes == 0, else the global one (1 group, 1 node).
    Two replicas of one expert can land on the same GPU: the reference's packing ignores which expert a
    physical one copies (deepseek-ai/EPLB issue #22); it is kept here so the output matches the reference."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2:
        raise ValueError(f"weight must be [layers, experts], got shape {weight.shape}")
    layers, num_log = weight.shape
    if num_replicas < num_log or num_replicas % num_gpus:
        raise ValueError(f"{num_replicas} physical experts must be >= {num_log} and a multiple of {num_gpus} GPUs")
    if num_groups < 1 or num_log % num_groups:
        raise ValueError(f"{num_log} experts do not split into {num_groups} groups")
    if num_nodes < 1 or num_gpus % num_nodes:
        raise ValueError(f"{num_gpus} GPUs do not split over {num_nodes} nodes")
    if num_groups % num_nodes:
        num_groups = num_nodes = 1  # global policy: replicas may go to any GPU
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


@dataclass(frozen=True)
class EplbParams:
    """redundant_experts: physical experts beyond E per layer (P = E + redundant_experts, a multiple of G).
    period_steps: steps between rebalances (DeepSeek-V3: "periodically"). history_steps: steps in the moving
    average that estimates the loads. num_groups: expert groups of group-limited routing (1 = none).
    hierarchical: allow the node-aware policy (used only when num_groups % nodes == 0, as in EPLB)."""

    redundant_experts: int = 0
    period_steps: int = 100
    history_steps: int = 100
    num_groups: int = 1
    hierarchical: bool = True

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        require(is_int(self.redundant_experts) and self.redundant_experts >= 0, "redundant_experts",
                self.redundant_experts, "an integer >= 0 (extra expert replicas per layer)")
        require(is_int(self.period_steps) and self.period_steps >= 1, "period_steps", self.period_steps,
                "an integer >= 1 (steps)")
        require(is_int(self.history_steps) and self.history_steps >= 1, "history_steps", self.history_steps,
                "an integer >= 1 (steps)")
        require(is_int(self.num_groups) and self.num_groups >= 1, "num_groups", self.num_groups,
                "an integer >= 1 (expert groups)")
        require(isinstance(self.hierarchical, bool), "hierarchical", self.hierarchical, "true or false")


class EplbPolicy:
    """PlacementPolicy: every `period_steps` steps, re-run EPLB on the mean per-expert load of the last
    `history_steps` steps. Tokens split evenly over an expert's replicas (the repo leaves the split open).

    The policy fixes two things the reference leaves open, both without changing which experts a GPU holds:
    replicas of one expert that EPLB packs onto the same GPU (frequent under skew, EPLB issue #22) collapse into
    one slot, the spare slot staying EMPTY as memory EPLB would waste too (with two replicas on one GPU the GPU
    computes the same rows; with more, the even split over holding ranks differs slightly from EPLB's split over
    physical copies), and an expert that stays on its GPU keeps its slot index, so only experts that really
    change GPU count as moved."""

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
        if not self.params.hierarchical or not node_major or self.params.num_groups % nodes:
            return 1, 1
        return self.params.num_groups, nodes

    def _rows(self, weight: np.ndarray) -> list[np.ndarray]:
        """weight [E] -> per GPU, the distinct experts EPLB puts there, in EPLB's slot order."""
        phy2log, _, _ = rebalance_experts(weight[None], self.num_phy, self.num_groups, self.num_nodes,
                                          self.ctx.num_ranks)
        per_gpu = phy2log[0].reshape(self.ctx.num_ranks, -1)
        return [row[np.sort(np.unique(row, return_index=True)[1])] for row in per_gpu]

    def initial(self) -> Placement:
        """[G, S]: EPLB on uniform loads (no statistics yet); slots past P/G stay EMPTY."""
        slot_expert = np.full((self.ctx.num_ranks, self.ctx.slots_per_rank), EMPTY)
        for gpu, row in enumerate(self._rows(np.ones(self.ctx.num_experts))):
            slot_expert[gpu, :len(row)] = row
        return Placement(slot_expert, split=ReplicaSplit.EVEN)

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        """loads [M, G_src, E]: this step's demand. The decision uses only earlier steps; then it is recorded."""
        new = current
        if step > 0 and step % self.params.period_steps == 0 and self.history:
            weight = np.mean(np.stack(self.history), axis=0)  # moving average, as the EPLB README suggests
            new = self._aligned(self._rows(weight), current)
            if new.same_as(current):
                new = current
        self.history.append(np.asarray(loads, dtype=np.float64).sum(axis=(0, 1)))
        return new

    def _aligned(self, rows: list[np.ndarray], current: Placement) -> Placement:
        """Per-GPU expert lists -> [G, S] placement that keeps every expert already on a GPU in its slot."""
        slots = self.ctx.slots_per_rank
        slot_expert = np.full((self.ctx.num_ranks, slots), EMPTY)
        same_shape = current.slot_expert.shape == slot_expert.shape
        for gpu, row in enumerate(rows):
            if same_shape:
                old = current.slot_expert[gpu]
                keep = np.isin(old, row) & (old != EMPTY)
                slot_expert[gpu, keep] = old[keep]
                row = row[~np.isin(row, old[keep])]
            free = np.flatnonzero(slot_expert[gpu] == EMPTY)
            slot_expert[gpu, free[:len(row)]] = row
        return Placement(slot_expert, split=ReplicaSplit.EVEN)

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        """loads [M, G_src, E] unchanged: EPLB moves experts, not tokens."""
        return loads
