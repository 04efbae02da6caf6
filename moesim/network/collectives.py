"""The collective entry points every network model shares: shape handling and the choice of algorithm.
A model supplies `_direct_s` (a direct exchange of byte matrices among concurrent groups) and `_ring_s`."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from moesim.network.algorithms import hierarchical_all_to_all, hierarchical_groups
from moesim.spec.network import AllReduceAlgorithm, AllToAllAlgorithm, NetworkSpec


def groups_2d(ranks: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """ranks [..., n] -> ([G, n], leading shape): every group of one call runs at the same time."""
    ranks = np.asarray(ranks, dtype=np.int64)
    return ranks.reshape(-1, ranks.shape[-1]), ranks.shape[:-1]


class CollectiveTimes(ABC):
    """Implements moesim.network.model.CollectiveModel on top of the subclass's `_direct_s` and `_ring_s`."""

    spec: NetworkSpec
    gpus_per_node: int
    nvlink_bytes_per_s: float  # effective, per GPU, one direction
    nvlink_latency_s: float
    nic_latency_s: float

    @abstractmethod
    def _direct_s(self, matrices: np.ndarray, ranks: np.ndarray, peer_overhead: bool = True) -> np.ndarray:
        """matrices [..., G, n, n], ranks [G, n] -> [..., G] seconds; the G groups share the network."""

    @abstractmethod
    def _ring_s(self, passes: int, nbytes: float, ranks: np.ndarray, op: str | None = None) -> np.ndarray:
        """ranks [G, n] -> [G]: `passes` rounds of n-1 ring steps over a buffer of nbytes. `op` names the collective
        (all_reduce, all_gather, reduce_scatter) whose calibrated measurement, where the profile has one, times
        it instead; None: the whole collective of that many passes (2: all-reduce, 1: all-gather)."""

    calibration = None  # moesim.spec.calibration.Calibration of the profile, when it was measured

    def _measured_ring_s(self, modelled_s: np.ndarray, passes: int, nbytes: float, ranks: np.ndarray,
                         op: str | None) -> np.ndarray:
        """modelled_s [G] with the groups that lie in one tier timed by the profile's measured table of `op`
        (default: all_reduce for 2 passes, all_gather for 1) where it has one: the calibration measured that
        collective on that tier, all groups at once, so it replaces the formula (as for the all-to-all)."""
        op = op or ("all_reduce" if passes == 2 else "all_gather")
        cal = self.calibration.collective(op, "intra_node") if self.calibration is not None else None
        inter = self.calibration.collective(op, "inter_node") if self.calibration is not None else None
        n = ranks.shape[-1]
        if n < 2 or (cal is None and inter is None):
            return modelled_s
        nodes = np.asarray(ranks) // self.gpus_per_node
        spans = (nodes != nodes[:, :1]).any(-1)
        factor = passes * (n - 1) / n  # nccl-tests' bus factor: what crosses the tier per byte of the buffer
        t = np.asarray(modelled_s, dtype=np.float64)
        for fit, rows in ((cal, ~spans), (inter, spans)):
            if fit is not None:
                t = np.where(rows, fit.time_s(nbytes, factor), t)
        return t

    def all_to_all_s(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        m = np.asarray(bytes_matrix, dtype=np.float64)
        ranks = np.asarray(ranks, dtype=np.int64)
        single = ranks.ndim == 1
        if single:
            ranks, m = ranks[None], m[..., None, :, :]
        if self.spec.all_to_all is AllToAllAlgorithm.HIERARCHICAL:
            phases = hierarchical_all_to_all(m, ranks, self.gpus_per_node)
            t = sum(self._direct_s(p, ranks) for p in phases)
        else:
            t = self._direct_s(m, ranks)
        return t[..., 0] if single else t

    def all_reduce_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        flat, lead = groups_2d(ranks)
        if flat.shape[1] == 1 or nbytes <= 0:
            return np.zeros(lead)
        algorithm = self.spec.all_reduce
        n = flat.shape[1]
        in_one_node = bool((flat // self.gpus_per_node == flat[:, :1] // self.gpus_per_node).all())
        if algorithm is AllReduceAlgorithm.NVLS_TREE and in_one_node:
            return np.full(lead, self._nvls_s(nbytes, n))
        split = None if algorithm is AllReduceAlgorithm.RING else hierarchical_groups(flat, self.gpus_per_node)
        if split is None:
            return self._ring_s(2, nbytes, flat, "all_reduce").reshape(lead)
        intra, inter = split  # [G * nodes, m], [G * m, nodes]
        G, m = len(flat), intra.shape[1]
        nodes = inter.shape[1]
        t_inter = self._ring_s(2, nbytes / m, inter).reshape(G, -1).max(-1)  # each 1/m shard on its rail
        if algorithm is AllReduceAlgorithm.HIERARCHICAL:
            # reduce-scatter inside each node, all-reduce of the shards across nodes, all-gather
            t_intra = self._ring_s(1, nbytes, intra).reshape(G, -1).max(-1) if m > 1 else np.zeros(G)
            return (2.0 * t_intra + t_inter).reshape(lead)
        t_nvls = self._nvls_s(nbytes, m)
        # a tree per rail: the ring's bandwidth term with 2 log2(nodes) latency hops instead of 2 (nodes - 1)
        hops = 2.0 * np.ceil(np.log2(nodes))
        hop_s = self._ring_hop_latency_s("inter_node")
        t_tree = np.maximum(t_inter - (2.0 * (nodes - 1) - hops) * hop_s, 0.0)
        return (t_nvls + t_tree).reshape(lead)

    def _ring_hop_latency_s(self, tier: str) -> float:
        """The latency one ring step pays on this tier (a tree replaces 2(n-1) of them by 2 log2 n)."""
        return self.nic_latency_s if tier == "inter_node" else self.nvlink_latency_s

    def _nvls_s(self, nbytes: float, members: int) -> float:
        """NVLink SHARP all-reduce among `members` GPUs of one node: each pushes its buffer into the switch and
        pulls the reduced result, S(1 + 1/m) each way (it reduces and multicasts its own 1/m shard), over two
        passes of the switch."""
        if members <= 1:
            return 0.0
        return 2.0 * self.nvlink_latency_s + nbytes * (1.0 + 1.0 / members) / self.nvlink_bytes_per_s

    def all_gather_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        return self._one_pass_s(nbytes, ranks, "all_gather")

    def reduce_scatter_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        return self._one_pass_s(nbytes, ranks, "reduce_scatter")

    def _one_pass_s(self, nbytes: float, ranks: np.ndarray, op: str) -> np.ndarray:
        flat, lead = groups_2d(ranks)
        if flat.shape[1] == 1 or nbytes <= 0:
            return np.zeros(lead)
        return self._ring_s(1, nbytes, flat, op).reshape(lead)

    def p2p_s(self, nbytes: float, src: int, dst: int) -> float:
        if src == dst or nbytes <= 0:
            return 0.0
        m = np.array([[[0.0, float(nbytes)], [0.0, 0.0]]])
        return float(self._direct_s(m, np.array([[src, dst]]), peer_overhead=False)[0])
