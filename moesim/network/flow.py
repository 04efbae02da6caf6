"""Flow-level network model: every (src, dst) message is a flow over the links of moesim.network.topology,
sharing bandwidth max-min fairly (progressive filling, moesim.network.maxmin). Implements CollectiveModel.

- all-to-all(v), direct (NCCL-like: all pairs at once): the collective ends when its last flow ends, plus
  the latency of the slowest tier it used;
- ring all-reduce / all-gather: the n ring flows of one step run concurrently; the slowest sets the step;
  2(n-1) or (n-1) steps, each with its tier's latency;
- point-to-point: one flow.
Groups in one call are solved one after another, each alone on the network (contention between groups of
the same call is not modelled yet).
"""

from __future__ import annotations

import numpy as np

from moesim.network.maxmin import flow_completion_times
from moesim.network.topology import CrossRail, Topology, build_topology, paths
from moesim.spec.hardware import ClusterSpec


class FlowNetwork:
    def __init__(self, cluster: ClusterSpec, cross_rail: CrossRail = CrossRail.PXN, reallocation_rtol: float = 1e-12):
        self.topology: Topology = build_topology(cluster)
        self.cross_rail = cross_rail
        # > 1e-12 batches completion events that fall within this relative time of each other (maxmin docs)
        self.reallocation_rtol = reallocation_rtol

    def _makespan_s(self, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray) -> float:
        """Completion of all flows plus the latency of the slowest tier crossed."""
        keep = (src != dst) & (nbytes > 0)
        src, dst, nbytes = src[keep], dst[keep], nbytes[keep]
        if not len(src):
            return 0.0
        topo = self.topology
        route = paths(topo, src, dst, self.cross_rail)
        # identical (path, bytes) rows always get identical rates: solve each such class once, weighted
        key = np.concatenate([route, nbytes.view(np.int64)[:, None]], axis=1)
        uniq, weight = np.unique(key, axis=0, return_counts=True)
        route, nbytes = uniq[:, :-1], uniq[:, -1].view(np.float64)
        valid = route >= 0
        indptr = np.concatenate([[0], np.cumsum(valid.sum(1))])
        done = flow_completion_times((indptr, route[valid]), nbytes, weight, topo.link_capacity_bytes_per_s,
                                     reallocation_rtol=self.reallocation_rtol)
        inter = (src // topo.gpus_per_node != dst // topo.gpus_per_node).any()
        return float(done.max()) + (topo.nic_latency_s if inter else topo.nvlink_latency_s)

    def all_to_all_s(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        m = np.asarray(bytes_matrix, dtype=np.float64)
        ranks = np.broadcast_to(np.asarray(ranks), m.shape[:-1])
        n = m.shape[-1]
        flat_m, flat_r = m.reshape(-1, n, n), ranks.reshape(-1, n)
        out = np.empty(len(flat_m))
        for i, (mat, rk) in enumerate(zip(flat_m, flat_r)):
            s, d = np.nonzero(mat)
            out[i] = self._makespan_s(rk[s], rk[d], mat[s, d])
        return out.reshape(m.shape[:-2])

    def _ring_s(self, passes: int, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        ranks = np.asarray(ranks)
        n = ranks.shape[-1]
        flat = ranks.reshape(-1, n)
        out = np.zeros(len(flat))
        if n > 1 and nbytes > 0:
            for i, ring in enumerate(flat):
                step_s = self._makespan_s(ring, np.roll(ring, -1), np.full(n, nbytes / n))
                out[i] = passes * (n - 1) * step_s
        return out.reshape(ranks.shape[:-1])

    def all_reduce_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        return self._ring_s(2, nbytes, ranks)

    def all_gather_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        return self._ring_s(1, nbytes, ranks)

    def p2p_s(self, nbytes: float, src: int, dst: int) -> float:
        return self._makespan_s(np.array([src]), np.array([dst]), np.array([float(nbytes)]))
