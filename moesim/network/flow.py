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

from enum import Enum

from moesim.network.maxmin import flow_completion_times
from moesim.network.topology import CrossRail, Topology, build_topology, paths
from moesim.spec.hardware import ClusterSpec


class FlowSolver(Enum):
    MAXMIN = "maxmin"  # event-driven max-min fair sharing (exact fluid model of TCP/IB-like fairness)
    BOUND = "bound"  # max over links of bytes / capacity: the optimal fluid makespan for these routes; O(flows)


class FlowNetwork:
    def __init__(self, cluster: ClusterSpec, cross_rail: CrossRail = CrossRail.PXN, reallocation_rtol: float = 1e-12,
                 solver: FlowSolver = FlowSolver.MAXMIN):
        self.topology: Topology = build_topology(cluster)
        self.cross_rail = cross_rail
        self.solver = solver
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
        inter = (src // topo.gpus_per_node != dst // topo.gpus_per_node).any()
        latency_s = topo.nic_latency_s if inter else topo.nvlink_latency_s
        if self.solver is FlowSolver.BOUND:
            valid = route >= 0
            load = np.bincount(route[valid], weights=np.broadcast_to(nbytes[:, None], route.shape)[valid],
                               minlength=len(topo.link_capacity_bytes_per_s))
            return float((load / topo.link_capacity_bytes_per_s).max()) + latency_s
        # identical (path, bytes) rows always get identical rates: solve each such class once, weighted
        key = np.concatenate([route, nbytes.view(np.int64)[:, None]], axis=1)
        uniq, weight = np.unique(key, axis=0, return_counts=True)
        route, nbytes = uniq[:, :-1], uniq[:, -1].view(np.float64)
        valid = route >= 0
        indptr = np.concatenate([[0], np.cumsum(valid.sum(1))])
        done = flow_completion_times((indptr, route[valid]), nbytes, weight, topo.link_capacity_bytes_per_s,
                                     reallocation_rtol=self.reallocation_rtol)
        return float(done.max()) + latency_s

    def all_to_all_s(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        m = np.asarray(bytes_matrix, dtype=np.float64)
        ranks = np.broadcast_to(np.asarray(ranks), m.shape[:-1])
        n = m.shape[-1]
        flat_m, flat_r = m.reshape(-1, n, n), ranks.reshape(-1, n)
        out = np.empty(len(flat_m))
        for i, (mat, rk) in enumerate(zip(flat_m, flat_r)):
            if self.solver is FlowSolver.BOUND and self.topology.rail_optimized and self.cross_rail is CrossRail.PXN:
                out[i] = self._direct_pxn_bound_s(mat, rk)
                continue
            s, d = np.nonzero(mat)
            out[i] = self._makespan_s(rk[s], rk[d], mat[s, d])
        return out.reshape(m.shape[:-2])

    def _direct_pxn_bound_s(self, mat: np.ndarray, ranks: np.ndarray) -> float:
        """Link loads of a direct all-to-all with PXN on rails, straight from the byte matrix (no per-flow
        paths; the same loads as `paths` + bincount): one [n, n] x [n, rails * leaf groups] product gives every
        source's inter-node bytes by destination rail and leaf group, and every link load follows from it."""
        topo = self.topology
        g, nics, groups = topo.gpus_per_node, topo.nics_per_node, topo.num_leaf_groups
        n = len(ranks)
        node, nic = ranks // g, topo.nic_of(ranks)
        rail, group = nic % nics, node // topo.nodes_per_leaf
        mat = mat.copy()
        mat[np.arange(n), np.arange(n)] = 0.0
        same = node[:, None] == node[None, :]
        intra = np.where(same, mat, 0.0)
        inter = mat - intra
        load = np.zeros(len(topo.link_capacity_bytes_per_s))
        size = len(load)
        onehot = np.zeros((n, nics * groups))
        onehot[np.arange(n), rail * groups + group] = 1.0
        by = (inter @ onehot).reshape(n, nics, groups)  # [src, destination rail, destination leaf group]
        by_rail = by.sum(-1)
        src_nic = node[:, None] * nics + np.arange(nics)[None, :]  # [src, rail]: PXN leaves on that rail
        own = rail[:, None] == np.arange(nics)[None, :]
        hop = np.where(own, 0.0, by_rail)  # bytes that first hop over NVLink to the rail's proxy GPU
        proxy = node[:, None] * g + np.arange(nics)[None, :] * g // nics
        load += np.bincount(topo.nvl_out(ranks), intra.sum(1) + hop.sum(1), size)
        load += np.bincount(topo.nvl_in(ranks), intra.sum(0), size)
        load += np.bincount(topo.nvl_in(proxy).ravel(), hop.ravel(), size)
        load += np.bincount(topo.nic_out(src_nic).ravel(), by_rail.ravel(), size)
        load += np.bincount(topo.nic_in(nic), inter.sum(0), size)
        if groups > 1:  # on one rail, only node groups under different leaves cross the spine
            other = group[:, None, None] != np.arange(groups)[None, None, :]  # [src, 1, dst group]
            spine = np.where(other, by, 0.0)  # [src, rail, dst group]
            leaf = lambda grp, r: grp * nics + r  # noqa: E731 - leaf id of (node group, rail), rail-optimised
            up = np.broadcast_to(leaf(group[:, None, None], np.arange(nics)[None, :, None]), spine.shape)
            down = np.broadcast_to(leaf(np.arange(groups)[None, None, :], np.arange(nics)[None, :, None]), spine.shape)
            load += np.bincount(topo.leaf_up(up).ravel(), spine.ravel(), size)
            load += np.bincount(topo.leaf_down(down).ravel(), spine.ravel(), size)
        peak = float((load / topo.link_capacity_bytes_per_s).max())
        if peak == 0:
            return 0.0
        return peak + (topo.nic_latency_s if inter.any() else topo.nvlink_latency_s)

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
