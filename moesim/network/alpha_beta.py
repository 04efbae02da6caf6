"""Alpha-beta model per tier: NVLink inside a node, the NIC(s) across nodes.

T = alpha + bytes / (bandwidth * efficiency), per tier, with the tiers running concurrently (max). For an
uneven all-to-all the slowest member sets the time: per tier, max over members of max(sent, received).
Bandwidths are per GPU and one direction; a GPU's share of its node's NICs is nics*nic_bw/gpus_per_node.
Inter-node bandwidth is divided by the spine oversubscription (every inter-node byte is charged as if it
crossed the spine: conservative until the flow-level model lands).
"""

from __future__ import annotations

import numpy as np

from moesim.spec.hardware import ClusterSpec


class AlphaBetaNetwork:
    def __init__(self, cluster: ClusterSpec):
        p = cluster.profile
        self._gpus_per_node = p.node.gpus_per_node
        self.nvlink_bytes_per_s = p.node.nvlink_bandwidth_bytes_per_s * p.node.nvlink_efficiency
        self.nvlink_latency_s = p.node.nvlink_latency_s
        self.nic_bytes_per_s = (p.nic_bandwidth_per_gpu_bytes_per_s * p.fabric.nic_efficiency
                                / p.fabric.oversubscription)
        self.nic_latency_s = p.fabric.nic_latency_s

    def _nodes(self, ranks: np.ndarray) -> np.ndarray:
        return np.asarray(ranks) // self._gpus_per_node

    def all_to_all_s(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        m = np.asarray(bytes_matrix, dtype=np.float64)
        nodes = self._nodes(ranks)
        same_node = nodes[..., :, None] == nodes[..., None, :]
        n = m.shape[-1]
        off_diag = ~np.eye(n, dtype=bool)
        intra = np.where(same_node & off_diag, m, 0.0)
        inter = np.where(~same_node, m, 0.0)
        intra_peak = np.maximum(intra.sum(-1), intra.sum(-2)).max(-1)  # busiest member, send or receive
        inter_peak = np.maximum(inter.sum(-1), inter.sum(-2)).max(-1)
        t_nvl = np.where(intra_peak > 0, self.nvlink_latency_s + intra_peak / self.nvlink_bytes_per_s, 0.0)
        t_net = np.where(inter_peak > 0, self.nic_latency_s + inter_peak / self.nic_bytes_per_s, 0.0)
        return np.maximum(t_nvl, t_net)

    def _ring_s(self, wire_bytes_factor: float, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        """A ring over the group: (n-1) latency hops per pass; NCCL runs one ring per NIC, so a group with
        m members per node has m NICs' worth of inter-node bandwidth, capped by NVLink."""
        ranks = np.asarray(ranks)
        n = ranks.shape[-1]
        if n == 1:
            return np.zeros(ranks.shape[:-1])
        nodes = self._nodes(ranks)
        spans_nodes = (nodes != nodes[..., :1]).any(-1)
        members_per_node = n / np.array([len(np.unique(row)) for row in nodes.reshape(-1, n)]).reshape(nodes.shape[:-1])
        inter_bw = np.minimum(self.nvlink_bytes_per_s, members_per_node * self.nic_bytes_per_s)
        bw = np.where(spans_nodes, inter_bw, self.nvlink_bytes_per_s)
        alpha = np.where(spans_nodes, self.nic_latency_s, self.nvlink_latency_s)
        passes = wire_bytes_factor  # 2 for all-reduce (reduce-scatter + all-gather), 1 otherwise
        return passes * (n - 1) * alpha + passes * (n - 1) / n * nbytes / bw

    def all_reduce_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        return self._ring_s(2.0, nbytes, ranks)

    def all_gather_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        return self._ring_s(1.0, nbytes, ranks)

    def p2p_s(self, nbytes: float, src: int, dst: int) -> float:
        if src == dst or nbytes <= 0:
            return 0.0
        if src // self._gpus_per_node == dst // self._gpus_per_node:
            return self.nvlink_latency_s + nbytes / self.nvlink_bytes_per_s
        return self.nic_latency_s + nbytes / self.nic_bytes_per_s
