"""Expert placement: which physical slot of which expert-parallel (EP) rank holds which logical expert, and how
a source rank's tokens for an expert split among that expert's replicas.

Shapes: G = EP ranks, S = slots per rank, E = logical experts, M = micro-batches.
A policy sees the router's demand `loads [M, G_src, E]` (assignments from each source EP rank to each expert,
one layer, one step, before capacity) and returns the placement that serves that step. Pure numpy, no SimPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np

from moesim.spec.errors import require
from moesim.spec.hardware import Dtype
from moesim.units import GB_PER_S, GBIT_PER_S, TFLOP

EMPTY = -1  # slot_expert value of an unused slot


class ReplicaSplit(Enum):
    EVEN = "even"  # every source splits an expert's tokens evenly over its physical copies (EPLB, FlexMoE)
    LOCAL = "local"  # a source holding a replica keeps its tokens on it; other sources split evenly (shadows)


class PlacementError(ValueError):
    """A placement that breaks an invariant: a policy bug, never user input."""


@dataclass(frozen=True, eq=False)
class Placement:
    """slot_expert [G, S]: logical expert in each slot (EMPTY if unused).
    transient [G, S]: slots that hold a per-step copy (FasterMoE shadow): its weights are broadcast from the
    owner and its gradients reduced back every step; it is never migrated. Persistent slots carry weights,
    gradients and optimizer state, so moving one moves all of it.
    copies [G, S]: physical copies of its expert a slot stands for (default 1; 0 in EMPTY slots). EPLB may put
    k of an expert's copies on one GPU; they are kept as one slot with copies = k, so that the GPU gets k shares
    of the expert's tokens (as EPLB's plan implies) while a rank still holds each expert in at most one slot.
    Each copy occupies a slot's memory: copies per rank, not slots, count against the budget."""

    slot_expert: np.ndarray
    transient: np.ndarray | None = None
    split: ReplicaSplit = ReplicaSplit.EVEN
    copies: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        se = np.asarray(self.slot_expert, dtype=np.int64)
        se.setflags(write=False)
        object.__setattr__(self, "slot_expert", se)
        tr = np.zeros(se.shape, bool) if self.transient is None else np.asarray(self.transient, bool)
        tr.setflags(write=False)
        object.__setattr__(self, "transient", tr)
        cp = np.ones(se.shape, np.int64) if self.copies is None else np.asarray(self.copies, dtype=np.int64)
        if cp.shape != se.shape:
            raise PlacementError(f"copies has shape {cp.shape}, slot_expert {se.shape}")
        cp = np.where(se == EMPTY, 0, cp)  # an empty slot stands for no copy
        cp.setflags(write=False)
        object.__setattr__(self, "copies", cp)

    @classmethod
    def from_phy2log(cls, phy2log: np.ndarray, num_ranks: int, slots_per_rank: int | None = None) -> Placement:
        """EPLB's layout -> Placement. phy2log [P]: logical expert of each physical slot (EMPTY for an unused
        one); slot p lives on rank p // (P / num_ranks). Each rank gets one slot per distinct expert, in order of
        first appearance, with copies = how many of its physical slots hold it; slots past those stay EMPTY.
        S = slots_per_rank, default P / num_ranks."""
        phy2log = np.asarray(phy2log, dtype=np.int64)
        if phy2log.ndim != 1 or phy2log.size % num_ranks:
            raise PlacementError(f"phy2log of shape {phy2log.shape} does not split over {num_ranks} ranks")
        per_rank = phy2log.reshape(num_ranks, -1)
        slots = per_rank.shape[1] if slots_per_rank is None else slots_per_rank
        slot_expert = np.full((num_ranks, slots), EMPTY)
        copies = np.zeros((num_ranks, slots), np.int64)
        for rank, row in enumerate(per_rank):
            experts, first, count = np.unique(row[row != EMPTY], return_index=True, return_counts=True)
            order = np.argsort(first)
            if len(order) > slots:
                raise PlacementError(f"rank {rank} holds {len(order)} experts in {slots} slots")
            slot_expert[rank, :len(order)] = experts[order]
            copies[rank, :len(order)] = count[order]
        return cls(slot_expert, copies=copies)

    @property
    def num_ranks(self) -> int:
        return self.slot_expert.shape[0]

    @property
    def slots_per_rank(self) -> int:
        return self.slot_expert.shape[1]

    def copy_matrix(self, num_experts: int) -> np.ndarray:
        """[E, G] physical copies of expert e on rank g (read-only)."""
        key = ("copies", num_experts)
        if key not in self._cache:
            c = np.zeros((num_experts, self.num_ranks), np.int64)
            g, s = np.nonzero(self.slot_expert != EMPTY)
            np.add.at(c, (self.slot_expert[g, s], g), self.copies[g, s])
            c.setflags(write=False)
            self._cache[key] = c
        return self._cache[key]

    def replicas(self, num_experts: int) -> np.ndarray:
        """[E] physical copies of each expert (EPLB's logcnt); a rank may hold several of one expert's copies."""
        return self.copy_matrix(num_experts).sum(-1)

    def holders(self, num_experts: int) -> np.ndarray:
        """[E, G] bool: rank g holds expert e in some slot."""
        return self.copy_matrix(num_experts) > 0

    def validate(self, num_experts: int, slots_per_rank: int | None = None) -> None:
        """Every expert has a slot; no rank holds one expert in two slots; copies per rank within budget."""
        se = self.slot_expert
        if se.ndim != 2:
            raise PlacementError(f"slot_expert must be [ranks, slots], got shape {se.shape}")
        if slots_per_rank is not None and se.shape[1] > slots_per_rank:
            raise PlacementError(f"{se.shape[1]} slots per rank exceeds the budget of {slots_per_rank}")
        used = se[se != EMPTY]
        if used.size and (used.min() < 0 or used.max() >= num_experts):
            raise PlacementError(f"slot holds an expert outside 0..{num_experts - 1}")
        if (self.copies[se != EMPTY] < 1).any():
            raise PlacementError(f"a used slot stands for fewer than 1 copy: {self.copies.tolist()}")
        per_rank = self.copies.sum(1)
        if slots_per_rank is not None and per_rank.max(initial=0) > slots_per_rank:
            raise PlacementError(f"ranks hold {per_rank.tolist()} copies; the budget is {slots_per_rank} slots")
        missing = np.flatnonzero(self.replicas(num_experts) == 0)
        if missing.size:
            raise PlacementError(f"experts {missing.tolist()} have no slot")
        for g in range(se.shape[0]):
            row = se[g][se[g] != EMPTY]
            if len(np.unique(row)) != len(row):
                raise PlacementError(f"rank {g} holds one expert in two slots: {row.tolist()}")

    def even_matrix(self, num_experts: int) -> np.ndarray:
        """[E, G] fraction of an expert's tokens each rank gets when split evenly over its physical copies: a
        rank holding c of the expert's k copies gets c/k (EPLB's plan)."""
        key = ("even", num_experts)
        if key not in self._cache:
            c = self.copy_matrix(num_experts).astype(np.float64)  # [E, G]
            even = c / np.maximum(c.sum(-1, keepdims=True), 1.0)
            even.setflags(write=False)
            self._cache[key] = even
        return self._cache[key]

    def contiguous_block(self, num_experts: int) -> int | None:
        """k when every expert e is held by exactly one rank, e // k (expert parallelism without replicas, the
        `contiguous` layout): routing to ranks is then a sum over blocks of k experts. None otherwise."""
        key = ("block", num_experts)
        if key not in self._cache:
            per = num_experts // self.num_ranks if num_experts % self.num_ranks == 0 else 0
            block = None
            if per:
                want = np.zeros((num_experts, self.num_ranks))
                want[np.arange(num_experts), np.arange(num_experts) // per] = 1.0
                block = per if np.array_equal(self.even_matrix(num_experts), want) else None
            self._cache[key] = block
        return self._cache[key]

    def split_matrix(self, num_experts: int) -> np.ndarray:
        """[G_src, E, G] fraction of source g's tokens for expert e that go to rank g' (rows sum to 1). With an
        EVEN split every source splits alike: a read-only broadcast view of even_matrix, no copy per source."""
        even = self.even_matrix(num_experts)
        shape = (self.num_ranks, num_experts, self.num_ranks)
        if self.split is ReplicaSplit.EVEN:
            return np.broadcast_to(even, shape)
        key = ("local", num_experts)
        if key not in self._cache:
            w = np.broadcast_to(even, shape).copy()
            own = self.holders(num_experts).T  # [G_src, E]: the source itself holds e
            src, e = np.nonzero(own)
            w[src, e, :] = 0.0
            w[src, e, src] = 1.0
            w.setflags(write=False)
            self._cache[key] = w
        return self._cache[key]

    def rank_rows(self, loads: np.ndarray) -> np.ndarray:
        """loads [..., G_src, E] -> [..., G_src, G]: rows each source sends to each rank (tokens conserved)."""
        return np.einsum("...se,seg->...sg", loads, self.split_matrix(loads.shape[-1]))

    def slot_rows(self, loads: np.ndarray) -> np.ndarray:
        """loads [..., G_src, E] -> [..., G, S]: rows each slot computes (empty slots compute nothing)."""
        per_expert_rank = np.einsum("...se,seg->...eg", loads, self.split_matrix(loads.shape[-1]))  # [..., E, G]
        se = self.slot_expert
        g = np.broadcast_to(np.arange(self.num_ranks)[:, None], se.shape)
        rows = per_expert_rank[..., np.where(se == EMPTY, 0, se), g]
        return np.where(se == EMPTY, 0.0, rows)

    def rank_load(self, loads: np.ndarray) -> np.ndarray:
        """loads [..., G_src, E] -> [..., G] rows each rank computes."""
        return self.slot_rows(loads).sum(-1)

    def same_as(self, other: Placement) -> bool:
        return (self.slot_expert.shape == other.slot_expert.shape
                and np.array_equal(self.slot_expert, other.slot_expert)
                and np.array_equal(self.transient, other.transient) and self.split is other.split
                and np.array_equal(self.copies, other.copies))


def contiguous(num_experts: int, num_ranks: int, slots_per_rank: int | None = None) -> Placement:
    """The expert-parallel baseline: rank g holds experts g*E/G .. (g+1)*E/G - 1; extra slots stay empty."""
    if num_experts % num_ranks:
        raise PlacementError(f"{num_experts} experts do not divide over {num_ranks} ranks")
    per = num_experts // num_ranks
    slots = per if slots_per_rank is None else slots_per_rank
    if slots < per:
        raise PlacementError(f"{slots} slots per rank cannot hold {per} experts each")
    se = np.full((num_ranks, slots), EMPTY)
    se[:, :per] = np.arange(num_experts).reshape(num_ranks, per)
    return Placement(se)


def balance_ratio(rank_load: np.ndarray) -> np.ndarray:
    """[..., G] -> [...]: max rank load / mean rank load (1 = perfectly balanced)."""
    mean = rank_load.mean(-1)
    return np.where(mean > 0, rank_load.max(-1) / np.where(mean > 0, mean, 1.0), 1.0)


@dataclass(frozen=True)
class PlacementContext:
    """What a policy may know about one MoE layer's EP group and the hardware (all per EP rank)."""

    num_experts: int
    num_ranks: int  # G
    slots_per_rank: int  # S >= E / G: the memory budget in expert slots
    node_of_rank: np.ndarray  # [G] node index of each EP rank
    bandwidth_bytes_per_s: np.ndarray  # [G, G] point-to-point bandwidth between EP ranks (diagonal: local copy)
    row_bytes: float  # one dispatched row (hidden x dtype)
    expert_weight_bytes: float  # one expert's weights on one rank (its etp shard)
    expert_state_bytes: float  # weights + gradients + optimizer state: what moving a persistent replica carries
    row_compute_s: float  # forward + backward compute of one row in one expert (3x forward)

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.num_ranks

    @classmethod
    def uniform(cls, num_experts: int, num_ranks: int, slots_per_rank: int | None = None, gpus_per_node: int = 8,
                *, nvlink_bytes_per_s: float = 450 * GB_PER_S * 0.82, nic_bytes_per_s: float = 400 * GBIT_PER_S * 0.95,
                hidden_size: int = 7168, expert_ffn_size: int = 2048, dtype: Dtype = Dtype.BF16,
                state_bytes_per_param: float = 16.0, flop_per_s: float = 989.4 * TFLOP * 0.80) -> PlacementContext:
        """A context without a Scenario: EP rank g on node g // gpus_per_node, one bandwidth inside a node and one
        across nodes; slots_per_rank defaults to E / G (no spare slot). The defaults describe a DGX H100 (the
        dgx-h100 profile: NVLink 450 GB/s x 0.82 measured efficiency, one 400 Gb/s NIC per GPU x 0.95) running
        DeepSeek-V3's experts (hidden 7168, expert FFN 2048, SwiGLU: 3 matrices) in bf16. state_bytes_per_param:
        what moving a persistent replica carries besides its weights (fp32 gradients + Adam's fp32 master, m,
        v: 16, spec placement.md section 9). flop_per_s: achieved GEMM throughput (989.4 TFLOP/s bf16 dense x
        0.80, the H100's measured matmul ceiling). Only placement decisions use these numbers."""
        def positive_int(value: object) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1

        require(positive_int(num_ranks), "num_ranks", num_ranks, "an integer >= 1 (EP ranks)")
        require(positive_int(num_experts) and num_experts % num_ranks == 0, "num_experts", num_experts,
                f"a positive multiple of the {num_ranks} EP ranks")
        slots = num_experts // num_ranks if slots_per_rank is None else slots_per_rank
        require(positive_int(slots) and slots >= num_experts // num_ranks, "slots_per_rank", slots_per_rank,
                f"an integer >= {num_experts // num_ranks} (experts per EP rank) or None")
        require(positive_int(gpus_per_node), "gpus_per_node", gpus_per_node, "an integer >= 1")
        for key, value in (("nvlink_bytes_per_s", nvlink_bytes_per_s), ("nic_bytes_per_s", nic_bytes_per_s),
                           ("flop_per_s", flop_per_s)):
            require(value > 0, key, value, "a positive rate")
        node = np.arange(num_ranks) // gpus_per_node
        expert_params = 3.0 * hidden_size * expert_ffn_size  # SwiGLU: gate, up and down projections
        row_forward_flop = 2.0 * expert_params  # one multiply-add per weight per row
        return cls(num_experts=num_experts, num_ranks=num_ranks, slots_per_rank=slots, node_of_rank=node,
                   bandwidth_bytes_per_s=np.where(node[:, None] == node[None, :], nvlink_bytes_per_s,
                                                  nic_bytes_per_s),
                   row_bytes=float(hidden_size * dtype.activation_bytes),
                   expert_weight_bytes=expert_params * dtype.weight_bytes,
                   expert_state_bytes=expert_params * (dtype.weight_bytes + state_bytes_per_param),
                   row_compute_s=3.0 * row_forward_flop / flop_per_s)  # backward = 2x forward


def layer_time_s(ctx: PlacementContext, placement: Placement, loads: np.ndarray) -> float:
    """A roofline model of one MoE layer's forward + backward for policies' decisions (the simulator itself
    times everything properly): slowest rank's compute + 4 all-to-alls, each bound by the busiest sender's or
    receiver's bytes over its slowest link. loads [M, G_src, E] or [G_src, E]; summed over micro-batches."""
    loads = loads.reshape(-1, *loads.shape[-2:]).sum(0)
    compute = placement.rank_load(loads).max() * ctx.row_compute_s
    rows = placement.rank_rows(loads)  # [G_src, G]
    off = ~np.eye(ctx.num_ranks, dtype=bool)
    link_s = np.where(off, rows * ctx.row_bytes / ctx.bandwidth_bytes_per_s, 0.0)
    a2a = max(link_s.sum(1).max(), link_s.sum(0).max())
    return float(compute + 4.0 * a2a)


def moved_slots(old: Placement, new: Placement) -> np.ndarray:
    """[G, S] bool: persistent slots of `new` whose expert differs from what `old` held there (they must be
    filled by a transfer). A slot that empties costs nothing."""
    if old.slot_expert.shape != new.slot_expert.shape:
        raise PlacementError("placements of different shapes")
    changed = (old.slot_expert != new.slot_expert) & (new.slot_expert != EMPTY) & ~new.transient
    return changed


class PlacementPolicy(Protocol):
    """One instance serves one MoE layer; it may keep state (history, the step of its last decision).

    `place(step, loads, current)` is called once per step before the step runs, with this step's router demand
    `loads [M, G_src, E]`. It returns the placement for this step (`current` itself when nothing changes).
    Only policies that decide from the current gate output (FasterMoE shadows) may look at `loads`; history-
    based policies must decide from earlier steps and then record `loads` for later decisions.
    `route(loads, placement)` lets routing-side policies (TA-MoE, FasterMoE's topology gate) transform the
    demand before the gate; others return it unchanged."""

    def initial(self) -> Placement: ...

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement: ...

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray: ...
