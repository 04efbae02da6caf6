"""Alpha-beta model per tier: NVLink inside a node, the NIC(s) across nodes. No links, no sharing between groups.

T = alpha + bytes / (bandwidth * efficiency), per tier, with the tiers running concurrently (max). For an
uneven all-to-all the slowest member sets the time: per tier, max over members of max(sent, received).
Bandwidths are per GPU and one direction; a GPU's share of its node's NICs is nics*nic_bw/gpus_per_node.
Inter-node bandwidth is divided by the spine oversubscription (every inter-node byte is charged as if it
crossed the spine). The same per-peer issue cost as the flow model is added to all-to-alls.
A calibrated profile's size tables (moesim calibrate) replace a tier's alpha + bytes / bandwidth with the
measured busbw at that size (nccl-tests conventions), for all-to-all, all-reduce and all-gather.
"""

from __future__ import annotations

import numpy as np

from moesim.network.collectives import CollectiveTimes
from moesim.spec.hardware import ClusterSpec
from moesim.spec.network import NetworkSpec


class AlphaBetaNetwork(CollectiveTimes):
    def __init__(self, cluster: ClusterSpec, spec: NetworkSpec = NetworkSpec()):
        p = cluster.profile
        self.spec = spec
        self.gpus_per_node = p.node.gpus_per_node
        self.nvlink_bytes_per_s = p.node.nvlink_bandwidth_bytes_per_s * p.node.nvlink_efficiency
        self.nvlink_latency_s = p.node.nvlink_latency_s
        self.nic_bytes_per_s = (p.nic_bandwidth_per_gpu_bytes_per_s * p.fabric.nic_efficiency
                                / p.fabric.oversubscription)
        self.nic_latency_s = p.fabric.nic_latency_s
        self.nvlink_peer_overhead_s = p.node.nvlink_peer_overhead_s
        self.nic_peer_overhead_s = p.fabric.nic_peer_overhead_s
        self.calibration = p.calibration

    def _measured_s(self, op: str, tier: str, moved_bytes: np.ndarray, n: int, factor: float) -> np.ndarray | None:
        """Time from a calibrated size table: moved_bytes = size x factor(n) (what crosses the tier), so
        time = moved / busbw(size). None when the profile has no table for (op, tier)."""
        cal = self.calibration.collective(op, tier) if self.calibration is not None else None
        if cal is None or n < 2:
            return None
        moved = np.asarray(moved_bytes, dtype=np.float64)
        t = np.vectorize(lambda m: cal.time_s(m / factor, factor), otypes=[float])(moved)
        return np.where(moved > 0, t, 0.0)

    def _ring_hop_latency_s(self, tier: str) -> float:
        """The per-step latency the ring time holds: none when a measured table gives the whole time."""
        if self.calibration is not None and self.calibration.collective("all_reduce", tier) is not None:
            return 0.0
        return self.nic_latency_s if tier == "inter_node" else self.nvlink_latency_s

    def _direct_s(self, matrices: np.ndarray, ranks: np.ndarray, peer_overhead: bool = True) -> np.ndarray:
        m = np.asarray(matrices, dtype=np.float64)
        nodes = np.asarray(ranks) // self.gpus_per_node
        same_node = nodes[..., :, None] == nodes[..., None, :]
        n = m.shape[-1]
        off_diag = ~np.eye(n, dtype=bool)
        intra = np.where(same_node & off_diag, m, 0.0)
        inter = np.where(~same_node, m, 0.0)
        intra_peak = np.maximum(intra.sum(-1), intra.sum(-2)).max(-1)  # busiest member, send or receive
        inter_peak = np.maximum(inter.sum(-1), inter.sum(-2)).max(-1)
        t_nvl = np.where(intra_peak > 0, self.nvlink_latency_s + intra_peak / self.nvlink_bytes_per_s, 0.0)
        t_net = np.where(inter_peak > 0, self.nic_latency_s + inter_peak / self.nic_bytes_per_s, 0.0)
        factor = (n - 1) / n if n > 1 else 1.0
        measured = self._measured_s("all_to_all", "intra_node", intra_peak, n, factor)
        t_nvl = t_nvl if measured is None else measured
        measured = self._measured_s("all_to_all", "inter_node", inter_peak, n, factor)
        t_net = t_net if measured is None else measured
        t = np.maximum(t_nvl, t_net)
        if peer_overhead:
            cost = np.where(same_node, self.nvlink_peer_overhead_s, self.nic_peer_overhead_s) * ((m > 0) & off_diag)
            t = t + np.maximum(cost.sum(-1).max(-1), cost.sum(-2).max(-1))
        return t

    def _ring_s(self, passes: int, nbytes: float, ranks: np.ndarray, op: str | None = None) -> np.ndarray:
        """A ring over each group [G, n]: (n-1) latency hops per pass; NCCL runs one ring per NIC, so a group
        with m members per node has m NICs' worth of inter-node bandwidth, capped by NVLink."""
        ranks = np.asarray(ranks)
        n = ranks.shape[-1]
        if n == 1 or nbytes <= 0:
            return np.zeros(len(ranks))
        nodes = ranks // self.gpus_per_node
        spans_nodes = (nodes != nodes[:, :1]).any(-1)
        members_per_node = n / np.array([len(np.unique(row)) for row in nodes])
        inter_bw = np.minimum(self.nvlink_bytes_per_s, members_per_node * self.nic_bytes_per_s)
        bw = np.where(spans_nodes, inter_bw, self.nvlink_bytes_per_s)
        alpha = np.where(spans_nodes, self.nic_latency_s, self.nvlink_latency_s)
        t = passes * (n - 1) * alpha + passes * (n - 1) / n * nbytes / bw
        return self._measured_ring_s(t, passes, nbytes, ranks, op)
