
import numpy as np

from moesim.network.topology import build_topology, paths
from moesim.spec.network import CrossRail
from moesim.spec import ClusterSpec

from helpers import h100


def topo(nodes=2, **fabric):
    prof = h100()
    prof = prof.replace(fabric=prof.fabric.replace(**fabric))
    return build_topology(ClusterSpec(prof, nodes))


def links(t, src, dst, cross=CrossRail.PXN):
    row = paths(t, np.array([src]), np.array([dst]), cross)[0]
    return [int(x) for x in row if x >= 0]


def test_link_counts_and_capacities():
    t = topo(4)
    assert len(t.link_capacity_bytes_per_s) == 2 * 32 + 2 * 32 + 2 * 8  # NVLink, NICs, one leaf per rail
    nvl = 450e9 * 0.82
    nic = 50e9 * 0.95
    assert np.allclose(t.link_capacity_bytes_per_s[t.link_tier == 0], nvl)
    assert np.allclose(t.link_capacity_bytes_per_s[t.link_tier == 1], nic)
    assert np.allclose(t.link_capacity_bytes_per_s[t.link_tier == 2], 4 * nic)  # 4 nodes' NICs on a rail leaf


def test_intra_node_flow_uses_nvlink_only():
    t = topo()
    assert links(t, 0, 5) == [int(t.nvl_out(0)), int(t.nvl_in(5))]


def test_rail_matched_flow_uses_one_nic_each_side():
    t = topo()
    assert links(t, 3, 11) == [int(t.nic_out(3)), int(t.nic_in(11))]


def test_cross_rail_flow_hops_over_nvlink_with_pxn_or_crosses_the_spine():
    t = topo()
    pxn = links(t, 3, 13)  # node 0 local 3 -> node 1 local 5: proxy is local 5 on node 0
    assert pxn == [int(t.nvl_out(3)), int(t.nvl_in(5)), int(t.nic_out(5)), int(t.nic_in(13))]
    spine = links(t, 3, 13, CrossRail.SPINE)
    assert spine == [int(t.nic_out(3)), int(t.leaf_up(3)), int(t.leaf_down(5)), int(t.nic_in(13))]


def test_nodes_under_different_leaves_cross_the_spine_even_on_one_rail():
    t = topo(64)
    far = links(t, 0, 8 * 40)  # node 0 and node 40 sit under different leaves of rail 0
    assert int(t.leaf_up(0)) in far and int(t.leaf_down(8)) in far


def test_oversubscription_divides_spine_capacity_and_shared_nics():
    assert np.allclose(topo(4, oversubscription=2.0).link_capacity_bytes_per_s[-1],
                       topo(4).link_capacity_bytes_per_s[-1] / 2)
    t = topo(2, nics_per_node=4, rail_optimized=False)
    assert int(t.nic_of(0)) == int(t.nic_of(1)) != int(t.nic_of(2))  # two GPUs per NIC
    assert t.num_leaves == 1
