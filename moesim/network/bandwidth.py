"""Collective bandwidth against message size, per tier, as the network models time it, in nccl-tests' terms.

nccl-tests conventions (what `moesim calibrate` measures and what users compare with): `size` is the per-rank buffer
(all-reduce: the buffer; all-gather / reduce-scatter: the gathered output; all-to-all: what one rank sends in total,
its own share included); algbw = size / time; busbw = algbw x factor(n) (BUSBW_FACTOR), the bandwidth a link must
carry, comparable across group sizes.

Tiers as the calibration measures them: "intra_node" is a group of ranks of one node (NVLink), "inter_node" one
rank per node, the same local rank on each (the NIC, nothing shared over NVLink).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.network import AlphaBetaNetwork, build_network
from moesim.spec.bounds import MAX_NODES
from moesim.spec.errors import SpecError
from moesim.spec.hardware import ClusterProfile, ClusterSpec
from moesim.spec.network import NetworkSpec

BUSBW_FACTOR: dict[str, Callable[[int], float]] = {  # nccl-tests: busbw = algbw x factor(n)
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "all_to_all_skewed": lambda n: (n - 1) / n,
    "p2p": lambda n: 1.0,
}
CURVE_OPS = ("all_to_all", "all_reduce", "all_gather", "reduce_scatter")  # what the network models time
TIERS = ("intra_node", "inter_node")


@dataclass(frozen=True)
class CollectiveCurve:
    op: str
    tier: str
    ranks: np.ndarray  # [n] the group's global ranks
    size_bytes: np.ndarray  # [S] nccl-tests' size
    time_s: np.ndarray  # [S]

    @property
    def algbw_bytes_per_s(self) -> np.ndarray:
        return np.divide(self.size_bytes, self.time_s, out=np.zeros_like(self.size_bytes), where=self.time_s > 0)

    @property
    def busbw_bytes_per_s(self) -> np.ndarray:
        return self.algbw_bytes_per_s * BUSBW_FACTOR[self.op](len(self.ranks))


def tier_group(profile: ClusterProfile, tier: str, members: int | None = None) -> tuple[ClusterSpec, np.ndarray]:
    """The cluster and the group's global ranks of a tier: `members` ranks of node 0 (default: the whole node), or
    local rank 0 of `members` nodes (default 2, nccl-tests' usual two-node run)."""
    gpn = profile.node.gpus_per_node
    if tier == "intra_node":
        n = gpn if members is None else members
        if not 2 <= n <= gpn:
            raise SpecError("members", n, f"2 to {gpn} ranks of one node (gpus_per_node of {profile.name})")
        return ClusterSpec(profile=profile, nodes=1), np.arange(n)
    if tier == "inter_node":
        n = 2 if members is None else members
        if not 2 <= n <= MAX_NODES:
            raise SpecError("members", n, f"2 to {MAX_NODES} nodes, one rank on each")
        return ClusterSpec(profile=profile, nodes=n), np.arange(n) * gpn
    raise SpecError("tier", tier, f"one of {', '.join(TIERS)}")


def collective_curve(profile: ClusterProfile, op: str, tier: str, size_bytes: Any, members: int | None = None,
                     network: NetworkSpec = NetworkSpec()) -> CollectiveCurve:
    """Time of `op` on a group of `tier` for each size (bytes, nccl-tests' meaning) under the network model
    `network` asks for; a calibrated profile's measured tables take part as they do in a simulation."""
    if op not in CURVE_OPS:
        raise SpecError("op", op, f"one of {', '.join(CURVE_OPS)}")
    sizes = np.asarray(size_bytes, dtype=np.float64).reshape(-1)
    if sizes.size == 0 or not np.all(np.isfinite(sizes)) or sizes.min() <= 0:
        raise SpecError("size_bytes", sizes.tolist()[:4], "message sizes in bytes, each > 0")
    cluster, ranks = tier_group(profile, tier, members)
    net = build_network(cluster, network)
    n = len(ranks)
    if op == "all_to_all":  # every member sends size / n to each member, its own share staying local
        matrices = np.broadcast_to((sizes / n)[:, None, None], (len(sizes), n, n))
        time_s = np.asarray(net.all_to_all_s(matrices, ranks), dtype=np.float64)
    elif op == "all_reduce":
        time_s = np.array([float(net.all_reduce_s(float(s), ranks[None])[0]) for s in sizes])
    else:  # reduce-scatter moves what all-gather does, the other way (CollectiveModel.all_gather_s)
        time_s = np.array([float(net.all_gather_s(float(s), ranks[None])[0]) for s in sizes])
    return CollectiveCurve(op, tier, ranks, sizes, time_s)


def tier_limit_bytes_per_s(profile: ClusterProfile, tier: str) -> float:
    """The busbw a large message approaches on a tier before any measured table: NVLink per GPU x its efficiency,
    or a GPU's share of its node's NICs x their efficiency over the spine oversubscription (the per-tier
    bandwidths of the alpha-beta model, read from it: one definition)."""
    if tier not in TIERS:
        raise SpecError("tier", tier, f"one of {', '.join(TIERS)}")
    net = AlphaBetaNetwork(ClusterSpec(profile=profile, nodes=1))
    return net.nvlink_bytes_per_s if tier == "intra_node" else net.nic_bytes_per_s
