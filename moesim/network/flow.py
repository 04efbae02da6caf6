"""Flow-level network model: every (src, dst) message is a flow over the links of moesim.network.topology.
Implements CollectiveModel through CollectiveTimes (algorithms in moesim.network.algorithms).

A direct exchange among G concurrent groups (the EP groups of one stage, the rings of all TP groups) is timed
with the groups sharing links:
- BOUND: a group ends when the busiest link it uses has drained everything every group put on it
  (max over its links of total bytes / capacity): exact for the fluid makespan of one group and never below
  a fair share when groups overlap; O(flows), vectorised.
- MAXMIN: progressive filling over all flows of all groups (moesim.network.maxmin); a group ends with its last
  flow. Exact fluid max-min fairness, slow at scale.
Each exchange adds the latency of the slowest tier it crosses and a per-peer issue cost (the profile's
`*_peer_overhead_us`, LogGP's o): the busiest member's intra-node peers x NVLink overhead + inter-node peers x
NIC overhead, sends or receives, whichever is larger. Rings pay one tier latency per step and no peer cost.
"""

from __future__ import annotations

import numpy as np

from moesim.network.algorithms import hierarchical_all_to_all, ring_step_matrix
from moesim.network.collectives import CollectiveTimes
from moesim.network.maxmin import flow_completion_times
from moesim.network.topology import Topology, build_topology, paths
from moesim.spec.hardware import ClusterSpec
from moesim.spec.network import AllToAllAlgorithm, CrossRail, FlowSolver, NetworkSpec

_CHUNK_ELEMENTS = 1 << 24  # cap on [exchanges, groups, links] floats held at once (128 MiB)


class FlowNetwork(CollectiveTimes):
    def __init__(self, cluster: ClusterSpec, spec: NetworkSpec = NetworkSpec(), reallocation_rtol: float = 1e-12):
        self.topology: Topology = build_topology(cluster)
        self.spec = spec
        self.gpus_per_node = self.topology.gpus_per_node
        self.nvlink_peer_overhead_s = cluster.profile.node.nvlink_peer_overhead_s
        self.nic_peer_overhead_s = cluster.profile.fabric.nic_peer_overhead_s
        self.nvlink_bytes_per_s = float(self.topology.link_capacity_bytes_per_s[0])  # link 0: GPU 0's NVLink out
        self.nvlink_latency_s = self.topology.nvlink_latency_s
        self.nic_latency_s = self.topology.nic_latency_s
        # one ring step's latency: a calibrated all-reduce's alpha spread over its 2(n-1) steps, else the tier's
        cal = self.calibration = cluster.profile.calibration
        self._ring_latency_s = {}
        for tier, default in (("intra_node", self.nvlink_latency_s), ("inter_node", self.nic_latency_s)):
            fit = cal.collective("all_reduce", tier) if cal is not None else None
            self._ring_latency_s[tier] = fit.alpha_s / (2 * (fit.ranks - 1)) if fit is not None else default
        # > 1e-12 batches completion events that fall within this relative time of each other (maxmin docs)
        self.reallocation_rtol = reallocation_rtol
        self._blocks: dict = {}
        self._p2p: dict = {}
        # every link of a tier has the same capacity: a transfer's time depends on where its ends sit in their
        # nodes and on what they share (node, leaf group), not on which nodes they are (checked here, relied on
        # by p2p_s)
        cap, tier = self.topology.link_capacity_bytes_per_s, self.topology.link_tier
        self._uniform_tiers = all(np.ptp(cap[tier == t]) == 0 for t in np.unique(tier))

    def p2p_s(self, nbytes: float, src: int, dst: int) -> float:
        """One transfer between two ranks (CollectiveTimes.p2p_s), remembered by the pair's kind: local GPU
        indices, same node, same leaf group. static_work asks for every rank of every stage boundary."""
        if not self._uniform_tiers:
            return super().p2p_s(nbytes, src, dst)
        g, per_leaf = self.gpus_per_node, self.topology.nodes_per_leaf
        key = (float(nbytes), src % g, dst % g, src // g == dst // g, src // g // per_leaf == dst // g // per_leaf)
        if key not in self._p2p:
            self._p2p[key] = super().p2p_s(nbytes, src, dst)
        return self._p2p[key]

    @property
    def num_links(self) -> int:
        return len(self.topology.link_capacity_bytes_per_s)

    # link loads ---------------------------------------------------------------------------------------------
    def link_bytes(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """[..., G, n, n] with ranks [G, n] -> [..., links]: bytes every link carries for this all-to-all (all
        groups, every phase of the configured algorithm). For accounting: per-tier bytes and utilisation."""
        m = np.asarray(bytes_matrix, dtype=np.float64)
        ranks = np.asarray(ranks, dtype=np.int64)
        G, n = ranks.shape
        k = int(np.prod(m.shape[:-3], dtype=np.int64))
        total = np.zeros((k, self.num_links))
        for p in self._phases(m, ranks):
            total += self._group_loads(p.reshape(k, G, n, n), ranks).sum(1)
        return total.reshape(m.shape[:-3] + (self.num_links,))

    def all_to_all_and_link_bytes(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(all_to_all_s, link_bytes) of one exchange [..., G, n, n], ranks [G, n], with every group's link loads
        computed once for both (the same numbers, bit for bit, as the two calls)."""
        m = np.asarray(bytes_matrix, dtype=np.float64)
        ranks = np.asarray(ranks, dtype=np.int64)
        G, n = ranks.shape
        k = int(np.prod(m.shape[:-3], dtype=np.int64))
        total = np.zeros((k, self.num_links))
        phases = self._phases(m, ranks)
        # the same expressions as CollectiveTimes.all_to_all_s, so the times are identical
        t = sum(self._direct_s(p, ranks, link_bytes=total) for p in phases) if len(phases) > 1 \
            else self._direct_s(m, ranks, link_bytes=total)
        return t, total.reshape(m.shape[:-3] + (self.num_links,))

    def _phases(self, m: np.ndarray, ranks: np.ndarray) -> list[np.ndarray]:
        if self.spec.all_to_all is AllToAllAlgorithm.HIERARCHICAL:
            return hierarchical_all_to_all(m, ranks, self.gpus_per_node)
        return [m]

    def _members_per_node(self, ranks: np.ndarray) -> int | None:
        """m when every group lists its members node by node, m per node (the usual EP / DP group): then the
        intra-node part of a byte matrix is its diagonal m x m blocks. None otherwise."""
        key = (ranks.shape, ranks.tobytes())
        if key not in self._blocks:
            node = ranks // self.gpus_per_node
            m = int((node[0] == node[0, 0]).sum())
            n = ranks.shape[1]
            ok = n % m == 0
            if ok:
                per = node.reshape(len(ranks), n // m, m)
                ok = bool((per == per[:, :, :1]).all()) and all(len(np.unique(row)) == n // m for row in per[:, :, 0])
            self._blocks[key] = m if ok else None
        return self._blocks[key]

    def _split(self, mats: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, n, n] -> (inter [B, n, n] with every same-node entry exactly 0, intra [B, n, n] or [B, nb, m, m]
        node blocks, self-sends zeroed). Node blocks avoid an n x n `where`, the slowest step at 2,048 GPUs."""
        B, n, _ = mats.shape
        m = self._members_per_node(ranks[:1]) if (ranks == ranks[:1]).all() else None
        inter = np.array(mats, dtype=np.float64, copy=True)
        if m is not None:
            view = np.einsum("bimin->bimn", inter.reshape(B, n // m, m, n // m, m))  # writeable diagonal blocks
            intra = view.copy()
            view[...] = 0.0
            intra[:, :, np.arange(m), np.arange(m)] = 0.0
            return inter, intra
        node = ranks // self.gpus_per_node
        same = node[:, :, None] == node[:, None, :]
        intra = np.where(same, inter, 0.0)
        intra[:, np.arange(n), np.arange(n)] = 0.0
        inter[same] = 0.0
        return inter, intra

    def _group_loads(self, mats: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """[k, G, n, n], ranks [G, n] -> [k, G, links] (self-sends excluded)."""
        k, G, n, _ = mats.shape
        flat = mats.reshape(k * G, n, n)
        rk = np.broadcast_to(ranks, (k, G, n)).reshape(k * G, n)
        topo = self.topology
        if topo.rail_optimized and self.spec.cross_rail is CrossRail.PXN:
            loads = self._pxn_loads(*self._split(flat, rk), rk)
        else:
            flat = flat.copy()
            flat[:, np.arange(n), np.arange(n)] = 0.0
            b, s, d = np.nonzero(flat)
            route = paths(topo, rk[b, s], rk[b, d], self.spec.cross_rail)
            valid = route >= 0
            idx = (route + b[:, None] * self.num_links)[valid]
            w = np.broadcast_to(flat[b, s, d][:, None], route.shape)[valid]
            loads = np.bincount(idx, w, k * G * self.num_links).reshape(k * G, self.num_links)
        return loads.reshape(k, G, self.num_links)

    def _pxn_loads(self, inter: np.ndarray, intra: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """Link loads of direct exchanges with PXN on rails straight from the byte matrices (no per-flow paths;
        the same loads as `paths` + bincount): one batched product of the inter-node bytes [B, n, n] with a
        one-hot [n, rails x leaf groups] gives every source's bytes by destination rail and leaf group; every
        link load follows. `intra` is [B, n, n] or node blocks [B, nodes, m, m]."""
        topo = self.topology
        g, nics, groups = topo.gpus_per_node, topo.nics_per_node, topo.num_leaf_groups
        B, n, _ = inter.shape
        size = self.num_links
        node, nic = ranks // g, topo.nic_of(ranks)
        rail, group = nic % nics, node // topo.nodes_per_leaf
        intra_out, intra_in = intra.sum(-1).reshape(B, n), intra.sum(-2).reshape(B, n)
        by = self._by_rail_and_group(inter, ranks, rail, group)  # [B, src, destination rail, dst leaf group]
        by_rail = by.sum(-1)
        own = rail[:, :, None] == np.arange(nics)
        hop = np.where(own, 0.0, by_rail)  # bytes that first hop over NVLink to the rail's proxy GPU
        proxy = node[:, :, None] * g + np.arange(nics) * g // nics
        src_nic = node[:, :, None] * nics + np.arange(nics)
        load = np.zeros((B, size))
        rows = np.arange(B)

        def add(links: np.ndarray, first: np.ndarray, width: int, weights: np.ndarray) -> None:
            """Bytes onto one family of links [first, first + width): a bincount over that family only (the
            same sums in the same order as over all links, without touching the others)."""
            first = int(first)
            idx = links - first + (rows * width).reshape((B,) + (1,) * (links.ndim - 1))
            w = np.broadcast_to(weights, links.shape).ravel()
            load[:, first:first + width] += np.bincount(idx.ravel(), w, B * width).reshape(B, width)

        gpus, nic_links, leaves = topo.num_gpus, topo.num_nodes * nics, topo.num_leaves
        add(topo.nvl_out(ranks), topo.nvl_out(0), gpus, intra_out + hop.sum(2))
        add(topo.nvl_in(ranks), topo.nvl_in(0), gpus, intra_in)
        add(topo.nvl_in(proxy), topo.nvl_in(0), gpus, hop)
        add(topo.nic_out(src_nic), topo.nic_out(0), nic_links, by_rail)
        add(topo.nic_in(nic), topo.nic_in(0), nic_links, inter.sum(1))
        if groups > 1:  # on one rail, only node groups under different leaves cross the spine
            other = group[:, :, None, None] != np.arange(groups)  # [B, src, 1, dst group]
            spine = np.where(other, by, 0.0)
            # reductions first, so the bincount sees [B, src, rail] (up) and nothing at all (down): the leaf
            # links of one rail and node group are unique
            add(topo.leaf_up(group[:, :, None] * nics + np.arange(nics)), topo.leaf_up(0), leaves, spine.sum(-1))
            down = spine.sum(1).transpose(0, 2, 1).reshape(B, groups * nics)  # [B, dst group x rail] = leaf
            load[:, topo.leaf_down(0):topo.leaf_down(0) + leaves] += down
        return load

    def _by_rail_and_group(self, inter: np.ndarray, ranks: np.ndarray, rail: np.ndarray,
                           group: np.ndarray) -> np.ndarray:
        """[B, n, n] bytes -> [B, src, rail, leaf group] of the destination. Members that are whole consecutive
        nodes (the usual EP group) sum by reshape; others by a product with a one-hot [n, rails x groups]."""
        topo = self.topology
        g, nics, groups = topo.gpus_per_node, topo.nics_per_node, topo.num_leaf_groups
        B, n, _ = inter.shape
        first = int(ranks[0, 0])
        if (g % nics == 0 and n % g == 0 and first % g == 0 and (ranks == ranks[:1]).all()
                and np.array_equal(ranks[0], np.arange(first, first + n))):
            nodes = first // g + np.arange(n // g)
            # GPU l of a node uses NIC l * nics // g: consecutive GPUs share a NIC
            per_rail = inter.reshape(B, n, n // g, nics, g // nics).sum(-1)  # [B, src, node, rail]
            node_group = nodes // topo.nodes_per_leaf  # non-decreasing: consecutive nodes
            starts = np.flatnonzero(np.r_[True, node_group[1:] != node_group[:-1]])
            by = np.zeros((B, n, nics, groups))
            by[:, :, :, node_group[starts]] = np.add.reduceat(per_rail, starts, axis=2).transpose(0, 1, 3, 2)
            return by
        onehot = np.zeros((B, n, nics * groups))
        onehot[np.arange(B)[:, None], np.arange(n)[None, :], rail * groups + group] = 1.0
        return np.matmul(inter, onehot).reshape(B, n, nics, groups)

    def _peer_overhead_s(self, mats: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """[k, G, n, n] -> [k, G]: the busiest member's per-peer issue cost, sends or receives."""
        k, G, n, _ = mats.shape
        inter, intra = self._split(mats.reshape(k * G, n, n), np.broadcast_to(ranks, (k, G, n)).reshape(k * G, n))
        o_nvl, o_nic = self.nvlink_peer_overhead_s, self.nic_peer_overhead_s
        # node blocks [B, nodes, m, m] count per member of their node either way, so both reshape to [B, n]
        cost = [o_nvl * np.count_nonzero(intra, axis=ax).reshape(k * G, n)
                + o_nic * np.count_nonzero(inter, axis=ax) for ax in (-1, -2)]
        return np.maximum(cost[0].max(-1), cost[1].max(-1)).reshape(k, G)

    # timing -------------------------------------------------------------------------------------------------
    def _ring_hop_latency_s(self, tier: str) -> float:
        return self._ring_latency_s[tier]

    def _direct_s(self, matrices: np.ndarray, ranks: np.ndarray, peer_overhead: bool = True,
                  ring_step: bool = False, link_bytes: np.ndarray | None = None) -> np.ndarray:
        """`link_bytes` [k, links], when given, accumulates the exchange's link loads (all groups)."""
        m = np.asarray(matrices, dtype=np.float64)
        G, n = ranks.shape
        lead = m.shape[:-3]
        k = int(np.prod(lead, dtype=np.int64))
        flat = m.reshape(k, G, n, n)
        if self.spec.solver is FlowSolver.BOUND:
            drain = np.zeros((k, G))
            cap = self.topology.link_capacity_bytes_per_s
            step = max(1, _CHUNK_ELEMENTS // max(1, G * self.num_links))
            for lo in range(0, k, step):
                loads = self._group_loads(flat[lo:lo + step], ranks)  # [c, G, L]
                if link_bytes is not None:
                    link_bytes[lo:lo + step] += loads.sum(1)
                total = loads.sum(1, keepdims=True) / cap
                drain[lo:lo + step] = np.where(loads > 0, total, 0.0).max(-1)
        else:
            drain = np.array([self._maxmin_groups(x, ranks) for x in flat]).reshape(k, G)
            if link_bytes is not None:
                link_bytes += self._group_loads(flat, ranks).sum(1)
        inter_any, any_bytes = self._crossings(flat, ranks)
        nic_s, nvl_s = (self._ring_latency_s["inter_node"], self._ring_latency_s["intra_node"]) if ring_step \
            else (self.topology.nic_latency_s, self.topology.nvlink_latency_s)
        total = drain + np.where(inter_any, nic_s, np.where(any_bytes, nvl_s, 0.0))
        if peer_overhead and (self.nvlink_peer_overhead_s or self.nic_peer_overhead_s):
            total = total + self._peer_overhead_s(flat, ranks)
        return total.reshape(lead + (G,))

    def _crossings(self, mats: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[k, G, n, n] -> ([k, G] some byte crosses nodes, [k, G] some byte leaves its rank)."""
        node = ranks // self.gpus_per_node
        cross = node[:, :, None] != node[:, None, :]  # [G, n, n]
        off = ~np.eye(ranks.shape[1], dtype=bool)
        sends = mats > 0
        return (sends & cross).any((-1, -2)), (sends & off).any((-1, -2))

    def _maxmin_groups(self, mats: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """[G, n, n] -> [G]: completion of each group's last flow, all groups' flows sharing links fairly."""
        G, n, _ = mats.shape
        g, s, d = np.nonzero(mats * ~np.eye(n, dtype=bool))
        out = np.zeros(G)
        if not len(g):
            return out
        topo = self.topology
        route = paths(topo, ranks[g, s], ranks[g, d], self.spec.cross_rail)
        nbytes = mats[g, s, d]
        # identical (path, bytes) rows always get identical rates: solve each such class once, weighted
        key = np.concatenate([route, nbytes.view(np.int64)[:, None]], axis=1)
        uniq, inverse, weight = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        route_u, bytes_u = uniq[:, :-1], uniq[:, -1].view(np.float64)
        valid = route_u >= 0
        indptr = np.concatenate([[0], np.cumsum(valid.sum(1))])
        done = flow_completion_times((indptr, route_u[valid]), bytes_u, weight, topo.link_capacity_bytes_per_s,
                                     reallocation_rtol=self.reallocation_rtol)
        np.maximum.at(out, g, done[inverse.ravel()])
        return out

    def _ring_s(self, passes: int, nbytes: float, ranks: np.ndarray, op: str | None = None) -> np.ndarray:
        ranks = np.asarray(ranks, dtype=np.int64)
        n = ranks.shape[-1]
        if n == 1 or nbytes <= 0:
            return np.zeros(len(ranks))
        step_s = self._direct_s(nbytes * ring_step_matrix(ranks, self.gpus_per_node), ranks, peer_overhead=False,
                                ring_step=True)
        return self._measured_ring_s(passes * (n - 1) * step_s, passes, nbytes, ranks, op)
