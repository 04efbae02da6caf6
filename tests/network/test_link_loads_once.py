"""`FlowNetwork.all_to_all_and_link_bytes` (what moe_layer_work calls: each group's link loads computed once for
timing and byte accounting) gives exactly, bit for bit, the separate `all_to_all_s` and `link_bytes`."""

import numpy as np
import pytest

from moesim.network import FlowNetwork
from moesim.spec import ClusterSpec
from moesim.spec.network import AllToAllAlgorithm, CrossRail, FlowSolver, NetworkSpec

from helpers import h100

SPECS = [
    NetworkSpec(),
    NetworkSpec(cross_rail=CrossRail.SPINE),
    NetworkSpec(all_to_all=AllToAllAlgorithm.HIERARCHICAL),
    NetworkSpec(solver=FlowSolver.MAXMIN),
]


def _uneven(rng, lead, G, n):
    """Skewed byte matrices with holes (some pairs send nothing) and one hot receiver per group."""
    m = rng.exponential(1e6, size=(*lead, G, n, n)) * (rng.random((*lead, G, n, n)) < 0.6)
    m[..., rng.integers(n)] *= 20.0
    return m


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.solver.value}-{s.cross_rail.value}-{s.all_to_all.value}")
@pytest.mark.parametrize("nodes,ranks", [
    (4, np.arange(32).reshape(2, 16)),  # two EP groups of 2 nodes x 8, node-contiguous
    (4, np.arange(32).reshape(16, 2).T),  # two interleaved groups, 4 members on each node
    (66, np.arange(66 * 8).reshape(66, 8)[::2, :4].reshape(3, 44)),  # 3 groups, the last across two leaves
])
def test_once_per_exchange_equals_separate_timing_and_link_bytes(spec, nodes, ranks):
    if spec.solver is FlowSolver.MAXMIN and nodes > 4:
        pytest.skip("max-min over hundreds of flows: slow, and the small cases cover its branch")
    net = FlowNetwork(ClusterSpec(h100(), nodes), spec)
    rng = np.random.default_rng(nodes)
    G, n = ranks.shape
    for lead in [(3,), (2, 2)]:
        m = _uneven(rng, lead, G, n)
        t, links = net.all_to_all_and_link_bytes(m, ranks)
        assert t.shape == (*lead, G) and links.shape == (*lead, net.num_links)
        assert np.array_equal(t, net.all_to_all_s(m, ranks))
        assert np.array_equal(links, net.link_bytes(m, ranks))


def test_shared_nics_once_equals_separate():
    net = FlowNetwork(ClusterSpec(h100().replace(fabric=h100().fabric.replace(nics_per_node=4)), 4), NetworkSpec())
    m = _uneven(np.random.default_rng(3), (4,), 1, 32)
    t, links = net.all_to_all_and_link_bytes(m, np.arange(32)[None])
    assert np.array_equal(t, net.all_to_all_s(m, np.arange(32)[None]))
    assert np.array_equal(links, net.link_bytes(m, np.arange(32)[None]))


@pytest.mark.parametrize("nodes,first_node,members", [(66, 0, 16), (66, 28, 64), (66, 30, 8), (4, 1, 24)])
def test_whole_node_members_sum_by_rail_and_group_as_the_one_hot_product(nodes, first_node, members):
    # consecutive whole nodes take the reshape path; it must equal the general product, leaf groups crossed or not
    net = FlowNetwork(ClusterSpec(h100(), nodes), NetworkSpec())
    topo = net.topology
    ranks = np.broadcast_to(np.arange(first_node * 8, first_node * 8 + members), (5, members))
    inter = np.random.default_rng(0).exponential(1e6, size=(5, members, members))
    node, rail = ranks // 8, topo.nic_of(ranks) % topo.nics_per_node
    group = node // topo.nodes_per_leaf
    got = net._by_rail_and_group(inter, ranks, rail, group)
    onehot = np.zeros((5, members, topo.nics_per_node * topo.num_leaf_groups))
    onehot[np.arange(5)[:, None], np.arange(members), rail * topo.num_leaf_groups + group] = 1.0
    want = np.matmul(inter, onehot).reshape(got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    assert got.sum() == pytest.approx(inter.sum(), rel=1e-13)


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.cross_rail.value)
def test_remembered_p2p_times_equal_the_computed_ones(spec):
    net = FlowNetwork(ClusterSpec(h100(), 66), spec)  # 66 nodes: three leaf groups, the last one partial
    fresh = FlowNetwork(ClusterSpec(h100(), 66), spec)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 66 * 8, size=(300, 2))
    for src, dst in pairs:
        want = super(FlowNetwork, fresh).p2p_s(1e6, int(src), int(dst))
        assert net.p2p_s(1e6, int(src), int(dst)) == want
    assert len(net._p2p) < 300  # kinds repeat
