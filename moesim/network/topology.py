"""The cluster as links: per-GPU NVLink egress/ingress (NVSwitch domain per node), NICs (one per GPU on rail
r = local rank when rail-optimised, else shared), one leaf switch per rail and group of nodes, and a spine
whose leaf up/down links are divided by the oversubscription ratio. Capacities are effective (efficiency
applied), bytes/s, one direction. Pure numpy: paths are built for many (src, dst) pairs at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.spec.hardware import ClusterSpec
from moesim.spec.network import CrossRail

NODES_PER_LEAF = 32  # a DGX SuperPOD scalable unit: 32 nodes under one leaf per rail


@dataclass(frozen=True)
class Topology:
    num_gpus: int
    gpus_per_node: int
    nics_per_node: int
    nodes_per_leaf: int
    rail_optimized: bool
    link_capacity_bytes_per_s: np.ndarray  # [num_links]
    link_tier: np.ndarray  # [num_links] 0 NVLink, 1 NIC, 2 spine
    nvlink_latency_s: float
    nic_latency_s: float

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.gpus_per_node

    @property
    def num_leaf_groups(self) -> int:
        return -(-self.num_nodes // self.nodes_per_leaf)

    @property
    def num_leaves(self) -> int:  # one leaf per rail per node group (rail-optimised), else per node group
        return self.num_leaf_groups * (self.nics_per_node if self.rail_optimized else 1)

    # link ids ---------------------------------------------------------------------------------------------
    def nvl_out(self, gpu):
        return np.asarray(gpu)

    def nvl_in(self, gpu):
        return self.num_gpus + np.asarray(gpu)

    def nic_of(self, gpu):
        """Global NIC index of a GPU's NIC (NICs are shared evenly when fewer than GPUs)."""
        gpu = np.asarray(gpu)
        local = gpu % self.gpus_per_node * self.nics_per_node // self.gpus_per_node
        return gpu // self.gpus_per_node * self.nics_per_node + local

    def nic_out(self, nic):
        return 2 * self.num_gpus + np.asarray(nic)

    def nic_in(self, nic):
        return 2 * self.num_gpus + self.num_nodes * self.nics_per_node + np.asarray(nic)

    def leaf_of_nic(self, nic):
        nic = np.asarray(nic)
        group = nic // self.nics_per_node // self.nodes_per_leaf
        return group * self.nics_per_node + nic % self.nics_per_node if self.rail_optimized else group

    def leaf_up(self, leaf):
        return 2 * self.num_gpus + 2 * self.num_nodes * self.nics_per_node + np.asarray(leaf)

    def leaf_down(self, leaf):
        return self.leaf_up(leaf) + self.num_leaves


def build_topology(cluster: ClusterSpec, nodes_per_leaf: int = NODES_PER_LEAF) -> Topology:
    p = cluster.profile
    g, n_nic, nodes = p.node.gpus_per_node, p.fabric.nics_per_node, cluster.num_nodes
    num_gpus = g * nodes
    nvl = p.node.nvlink_bandwidth_bytes_per_s * p.node.nvlink_efficiency
    nic = p.fabric.nic_bandwidth_bytes_per_s * p.fabric.nic_efficiency
    nvl_latency, nic_latency = p.node.nvlink_latency_s, p.fabric.nic_latency_s
    cal = p.calibration
    # a calibrated all-to-all's large-message busbw is what one GPU's link sustains; its alpha the latency
    intra = cal.collective("all_to_all", "intra_node") if cal is not None else None
    inter = cal.collective("all_to_all", "inter_node") if cal is not None else None
    if intra is not None:
        nvl = intra.bandwidth_bytes_per_s * (intra.ranks - 1) / intra.ranks
        nvl_latency = intra.alpha_s
    if inter is not None:  # per GPU measured; a NIC serves gpus_per_node / nics_per_node GPUs
        nic = inter.bandwidth_bytes_per_s * (inter.ranks - 1) / inter.ranks * g / n_nic
        nic_latency = inter.alpha_s
    per_leaf = min(nodes_per_leaf, nodes)
    groups = -(-nodes // per_leaf)
    leaves = groups * (n_nic if p.fabric.rail_optimized else 1)
    nics_per_leaf = per_leaf * (1 if p.fabric.rail_optimized else n_nic)
    uplink = nics_per_leaf * nic / p.fabric.oversubscription  # leaf-to-spine capacity, each direction
    capacity = np.concatenate([np.full(2 * num_gpus, nvl), np.full(2 * nodes * n_nic, nic),
                               np.full(2 * leaves, uplink)])
    tier = np.concatenate([np.zeros(2 * num_gpus, int), np.ones(2 * nodes * n_nic, int), np.full(2 * leaves, 2)])
    return Topology(num_gpus, g, n_nic, per_leaf, p.fabric.rail_optimized, capacity, tier, nvl_latency, nic_latency)


def paths(topo: Topology, src: np.ndarray, dst: np.ndarray, cross_rail: CrossRail = CrossRail.PXN) -> np.ndarray:
    """[F, 6] link ids each (src, dst) flow crosses, -1 padded, for the direct algorithm:
    same node: NVLink out, NVLink in; other node: (PXN hop over NVLink to the GPU on the destination's rail),
    NIC out, (leaf up, leaf down when the leaves differ), NIC in."""
    src, dst = np.asarray(src), np.asarray(dst)
    out = np.full((len(src), 6), -1, dtype=np.int64)
    g = topo.gpus_per_node
    same = src // g == dst // g
    out[same, 0] = topo.nvl_out(src[same])
    out[same, 1] = topo.nvl_in(dst[same])
    s, d = src[~same], dst[~same]
    nic_d = topo.nic_of(d)
    if topo.rail_optimized and cross_rail is CrossRail.PXN:
        # the proxy is the GPU on the source node whose NIC is the destination's rail
        proxy = s // g * g + (nic_d % topo.nics_per_node) * g // topo.nics_per_node
        hop = topo.nic_of(proxy) != topo.nic_of(s)  # a GPU sharing the rail's NIC needs no NVLink hop
        nic_s = topo.nic_of(proxy)
        cols = out[~same]
        cols[hop, 0] = topo.nvl_out(s[hop])
        cols[hop, 1] = topo.nvl_in(proxy[hop])
    else:
        nic_s = topo.nic_of(s)
        cols = out[~same]
    leaf_s, leaf_d = topo.leaf_of_nic(nic_s), topo.leaf_of_nic(nic_d)
    cross = leaf_s != leaf_d
    cols[:, 2] = topo.nic_out(nic_s)
    cols[cross, 3] = topo.leaf_up(leaf_s[cross])
    cols[cross, 4] = topo.leaf_down(leaf_d[cross])
    cols[:, 5] = topo.nic_in(nic_d)
    out[~same] = cols
    return out
