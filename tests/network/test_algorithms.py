"""Hierarchical all-to-all, ring channels, hierarchical all-reduce, contention between concurrent groups and the
per-peer issue cost, against closed forms."""


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from moesim.network import AlphaBetaNetwork, FlowNetwork, build_network
from moesim.network.algorithms import hierarchical_all_to_all, hierarchical_groups, ring_step_matrix
from moesim.spec import ClusterSpec
from moesim.spec.network import AllReduceAlgorithm, AllToAllAlgorithm, CrossRail, FlowSolver, NetworkModelKind, \
    NetworkSpec

from helpers import h100, no_peer_overhead

NVL = 450e9 * 0.82
NIC = 50e9 * 0.95


def flow(nodes, overhead=False, **spec):
    prof = h100() if overhead else no_peer_overhead(h100())
    return FlowNetwork(ClusterSpec(prof, nodes), NetworkSpec(**spec))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(2, 16), (4, 32), (4, 8)]))
def test_hierarchical_phases_deliver_every_byte_to_its_destination(seed, shape):
    nodes, n = shape
    rng = np.random.default_rng(seed)
    ranks = np.sort(rng.choice(nodes * 8, size=n, replace=False))[None]
    mat = rng.exponential(1.0, size=(3, 1, n, n)) * (rng.random((3, 1, n, n)) < 0.7)
    p1, p2, p3 = hierarchical_all_to_all(mat, ranks, 8)
    node = ranks[0] // 8
    cross = node[:, None] != node[None, :]
    off = ~np.eye(n, dtype=bool)
    # phase 1 moves every off-diagonal byte except those already on the rail member; only phase 2 crosses nodes
    assert not (p1[..., cross] > 0).any() and not (p3[..., cross] > 0).any()
    assert p2[..., cross].sum() == pytest.approx((mat * cross).sum())
    assert not (p2[..., ~cross & off] > 0).any()
    # every node receives, in phase 2, exactly the inter-node bytes the original matrix sends to it
    onehot = node[:, None] == np.unique(node)[None, :]  # [member, node]
    assert (p2 @ onehot).sum(-2) == pytest.approx(((mat * cross) @ onehot).sum(-2))
    # and phase 1 keeps each source's intra-node bytes plus the inter-node bytes it hands to a rail member
    assert p1.sum() <= (mat * off).sum() + 1e-9


def test_regular_groups_need_no_third_phase_and_send_one_message_per_remote_node():
    ranks = np.arange(32)[None]
    mat = np.ones((1, 32, 32))
    p1, p2, p3 = hierarchical_all_to_all(mat, ranks, 8)
    assert p3.sum() == 0
    peers = (p2[0] > 0).sum(-1)
    assert (peers == 3).all()  # 4 nodes: one aggregated message to each other node, on the own rail
    assert p2[0, 0, 8] == 8.0  # GPU 0 carries its node's 8 sources' bytes for GPU 8


def test_hierarchical_wins_small_messages_and_loses_large_ones_with_pxn():
    direct = flow(4, overhead=True)
    hier = flow(4, overhead=True, all_to_all=AllToAllAlgorithm.HIERARCHICAL)
    ranks = np.arange(32)
    small, large = np.full((32, 32), 4e3), np.full((32, 32), 4e6)
    assert hier.all_to_all_s(small, ranks) < direct.all_to_all_s(small, ranks)  # 3 peers instead of 24 remote
    assert hier.all_to_all_s(large, ranks) > direct.all_to_all_s(large, ranks)  # a serial NVLink phase


def test_hierarchical_avoids_the_spine_without_pxn():
    ranks = np.arange(32)
    m = np.full((32, 32), 4e6)
    direct = flow(4, cross_rail=CrossRail.SPINE)
    hier = flow(4, cross_rail=CrossRail.SPINE, all_to_all=AllToAllAlgorithm.HIERARCHICAL)
    assert direct.link_bytes(m[None], ranks[None])[direct.topology.link_tier == 2].sum() > 0
    assert hier.link_bytes(m[None], ranks[None])[hier.topology.link_tier == 2].sum() == 0
    prof = no_peer_overhead(h100(), oversubscription=4.0)
    slow_spine = [FlowNetwork(ClusterSpec(prof, 4), NetworkSpec(cross_rail=CrossRail.SPINE, all_to_all=a))
                  for a in AllToAllAlgorithm]
    t_direct, t_hier = (net.all_to_all_s(m, ranks) for net in slow_spine)
    assert t_hier < t_direct


def test_per_peer_overhead_counts_the_busiest_members_peers():
    base, over = flow(4), flow(4, overhead=True)
    m = np.full((32, 32), 1e3)
    extra = over.all_to_all_s(m, np.arange(32)) - base.all_to_all_s(m, np.arange(32))
    prof = h100()
    assert extra == pytest.approx(7 * prof.node.nvlink_peer_overhead_s + 24 * prof.fabric.nic_peer_overhead_s)


def test_concurrent_groups_share_a_nic():
    prof = no_peer_overhead(h100(), nics_per_node=1, rail_optimized=False)
    net = FlowNetwork(ClusterSpec(prof, 2))
    m = np.zeros((2, 2, 2))
    m[:, 0, 1] = 1e8  # GPU 0 -> 8 and GPU 1 -> 9 both leave node 0 through its only NIC
    together = net.all_to_all_s(m, np.array([[0, 8], [1, 9]]))
    alone = net.all_to_all_s(m[0], np.array([0, 8]))
    nic = prof.fabric.nic_bandwidth_bytes_per_s * prof.fabric.nic_efficiency
    assert alone == pytest.approx(1e8 / nic + prof.fabric.nic_latency_s)
    assert together == pytest.approx(2e8 / nic + prof.fabric.nic_latency_s)


def test_ring_channels_cross_nodes_on_every_nic():
    step = ring_step_matrix(np.arange(16)[None], 8)[0]
    assert step.sum(-1) == pytest.approx(np.full(16, 1 / 16))
    crossings = step[:8, 8:]  # node 0 -> node 1 entries
    assert (crossings > 0).sum() == 8  # 8 channels, each leaves node 0 from a different GPU
    src, dst = np.nonzero(crossings)
    assert (src == dst).all()  # ... and enters node 1 on the same rail (local rank)
    net = flow(2)
    size = 1e9
    t = net.all_reduce_s(size, np.arange(16))
    # rail-aligned crossings need no NVLink hop: per step each GPU sends 1/128 of the buffer in each of its 8
    # channels, 7 of them over NVLink and 1 over its own NIC: NIC-bound here
    per_step = max(size * 7 / 128 / NVL, size / 128 / NIC) + net.topology.nic_latency_s
    assert t == pytest.approx(2 * 15 * per_step)


def test_hierarchical_all_reduce_closed_form():
    size = 1e9
    net = flow(2, all_reduce=AllReduceAlgorithm.HIERARCHICAL)
    t = net.all_reduce_s(size, np.arange(16))
    intra = 7 * (size / 8 / NVL + net.topology.nvlink_latency_s)  # reduce-scatter (and all-gather) in the node
    inter = 2 * 1 * (size / 8 / 2 / NIC + net.topology.nic_latency_s)  # 1/8 of the buffer per rail, 2 nodes
    assert t == pytest.approx(2 * intra + inter)
    assert hierarchical_groups(np.array([[0, 1, 8]]), 8) is None  # uneven membership falls back to the ring
    assert net.all_reduce_s(size, np.array([0, 1, 8])) == pytest.approx(
        flow(2).all_reduce_s(size, np.array([0, 1, 8])))


@pytest.mark.parametrize("algorithm", list(AllToAllAlgorithm))
@pytest.mark.parametrize("model", list(NetworkModelKind))
def test_more_bandwidth_never_slower_for_any_collective(model, algorithm):
    rng = np.random.default_rng(3)
    spec = NetworkSpec(model=model, solver=FlowSolver.BOUND, all_to_all=algorithm)
    slow = build_network(ClusterSpec(h100(), 4), spec)
    fast_nvl = h100().replace(node=h100().node.replace(nvlink_bandwidth_bytes_per_s=900e9))
    for prof in (h100(8, 1.7), fast_nvl):
        fast = build_network(ClusterSpec(prof, 4), spec)
        for _ in range(10):
            ranks = np.sort(rng.choice(32, size=16, replace=False))
            m = rng.exponential(1e6, size=(16, 16)) * (rng.random((16, 16)) < 0.6)
            assert fast.all_to_all_s(m, ranks) <= slow.all_to_all_s(m, ranks) * (1 + 1e-12)
            assert fast.all_reduce_s(1e8, ranks) <= slow.all_reduce_s(1e8, ranks) * (1 + 1e-12)
            assert fast.all_gather_s(1e8, ranks) <= slow.all_gather_s(1e8, ranks) * (1 + 1e-12)


def test_alpha_beta_and_flow_agree_on_balanced_intra_node_traffic():
    m = np.full((8, 8), 1e6)
    ab = AlphaBetaNetwork(ClusterSpec(no_peer_overhead(h100()), 1))
    assert ab.all_to_all_s(m, np.arange(8)) == pytest.approx(flow(1).all_to_all_s(m, np.arange(8)))


def test_nvls_tree_all_reduce_closed_form_and_beats_the_ring_on_large_buffers():
    size = 8e9
    net = flow(4, all_reduce=AllReduceAlgorithm.NVLS_TREE)
    t = net.all_reduce_s(size, np.arange(32))
    nvls = 2 * net.nvlink_latency_s + size * 9 / 8 / NVL
    tree = 2 * 3 / 4 * (size / 8) / NIC + 2 * 2 * net.nic_latency_s  # 4 nodes: log2 = 2 hops each way
    assert t == pytest.approx(nvls + tree)
    inside = flow(1, all_reduce=AllReduceAlgorithm.NVLS_TREE).all_reduce_s(size, np.arange(8))
    ring = flow(1).all_reduce_s(size, np.arange(8))
    # H100 nccl-tests: NVLS busbw ~480 GB/s against ~370 for rings (hardware.md 2.1): NVLS is faster in a node
    assert inside < ring


def test_node_block_fast_path_equals_the_general_path():
    """Node-contiguous groups take their intra-node bytes from diagonal blocks; listing the same members in a
    shuffled order takes the general path. Both must time the same exchange identically."""
    rng = np.random.default_rng(7)
    net = flow(4, overhead=True)
    ranks = np.arange(32)
    perm = rng.permutation(32)
    for _ in range(5):
        m = rng.exponential(1e6, size=(32, 32)) * (rng.random((32, 32)) < 0.5)
        shuffled = m[np.ix_(perm, perm)]
        assert net.all_to_all_s(m, ranks) == pytest.approx(net.all_to_all_s(shuffled, ranks[perm]), rel=1e-12)
        assert net.link_bytes(m[None], ranks[None]) == pytest.approx(
            net.link_bytes(shuffled[None], ranks[perm][None]), rel=1e-12)
