"""The flow-level network against closed forms (nccl-tests conventions)."""

import numpy as np
import pytest

from moesim.network.flow import FlowNetwork
from moesim.spec.network import CrossRail, FlowSolver, NetworkSpec
from moesim.spec import ClusterSpec

from helpers import h100, no_peer_overhead

NVL = 450e9 * 0.82
NIC = 50e9 * 0.95


def net(nodes=1, cross=CrossRail.PXN, solver=FlowSolver.MAXMIN, **fabric):
    return FlowNetwork(ClusterSpec(no_peer_overhead(h100(), **fabric), nodes),
                       NetworkSpec(cross_rail=cross, solver=solver))


def test_balanced_all_to_all_inside_a_node_is_busbw_over_nvlink():
    n, m = 8, 8e6  # m: bytes one rank sends in total, its own share included (nccl-tests)
    nw = net()
    t = nw.all_to_all_s(np.full((n, n), m / n), np.arange(n))
    assert t == pytest.approx(m * (n - 1) / n / NVL + nw.topology.nvlink_latency_s)


@pytest.mark.parametrize("nodes", [2, 4, 8])
def test_balanced_all_to_all_across_nodes_on_rails_gives_nic_times_n_over_n_minus_1(nodes):
    n, m = 8 * nodes, 64e6
    nw = net(nodes)
    t = nw.all_to_all_s(np.full((n, n), m / n), np.arange(n)) - nw.topology.nic_latency_s
    algbw = m / t
    assert algbw == pytest.approx(NIC * nodes / (nodes - 1), rel=1e-9)


def test_one_hot_receiver_takes_its_ingress_bytes_over_its_ingress_capacity():
    nw = net()
    matrix = np.zeros((8, 8))
    matrix[:, 3] = 5e6
    t = nw.all_to_all_s(matrix, np.arange(8))
    assert t == pytest.approx(7 * 5e6 / NVL + nw.topology.nvlink_latency_s)


def test_ring_all_reduce_closed_form():
    nw = net(2)
    ring = np.array([0, 8])  # one member per node: the ring crosses one NIC each way
    size = 1e9
    expected = 2 * (2 - 1) * (size / 2 / NIC + nw.topology.nic_latency_s)
    assert nw.all_reduce_s(size, ring) == pytest.approx(expected)
    inside = np.arange(8)
    assert nw.all_reduce_s(size, inside) == pytest.approx(2 * 7 * (size / 8 / NVL + nw.topology.nvlink_latency_s))


def test_oversubscribed_spine_bound_time_scales_with_the_ratio():
    n, m = 16, 64e6  # 2 nodes under one leaf per rail; cross-rail flows go through the spine
    matrix = np.full((n, n), m / n)
    times = {}
    for ratio in (1.0, 2.0, 4.0):
        nw = net(2, CrossRail.SPINE, oversubscription=ratio)
        times[ratio] = nw.all_to_all_s(matrix, np.arange(n)) - nw.topology.nic_latency_s
    # full bisection: NIC-bound, each NIC sends half of its GPU's bytes to the other node
    assert times[1.0] == pytest.approx(m / 2 / NIC)
    # rail r's leaf uplink carries both nodes' cross-rail bytes of GPU r: 2 x 7/8 x m/2, over 2 NICs / ratio
    assert times[2.0] == pytest.approx(2 * 7 / 8 * m / 2 / (2 * NIC / 2.0))
    assert times[4.0] == pytest.approx(2 * times[2.0])  # spine-bound: 2x the oversubscription, 2x the time


def test_more_bandwidth_never_slower_on_random_all_to_alls():
    rng = np.random.default_rng(0)
    slow = net(2, solver=FlowSolver.BOUND)
    fast = FlowNetwork(ClusterSpec(no_peer_overhead(h100(8, 1.5)), 2))
    for _ in range(20):
        m = rng.exponential(1e6, size=(16, 16)) * (rng.random((16, 16)) < 0.6)
        assert fast.all_to_all_s(m, np.arange(16)) <= slow.all_to_all_s(m, np.arange(16)) * (1 + 1e-12)


def test_p2p_and_vectorised_groups():
    nw = net(2)
    assert nw.p2p_s(1e6, 0, 1) == pytest.approx(1e6 / NVL + nw.topology.nvlink_latency_s)
    assert nw.p2p_s(1e6, 0, 8) == pytest.approx(1e6 / NIC + nw.topology.nic_latency_s)
    groups = np.stack([np.full((2, 2), 1e6), np.zeros((2, 2))])
    t = nw.all_to_all_s(groups, np.array([[0, 8], [1, 9]]))
    assert t.shape == (2,) and t[1] == 0.0 and t[0] > 0


def _paths_bound(nw, mat, ranks):
    """The link bound from per-flow paths + bincount, the definition the fast path must equal."""
    from moesim.network.topology import paths

    s, d = np.nonzero(mat * (1 - np.eye(len(ranks))))
    route = paths(nw.topology, ranks[s], ranks[d], nw.spec.cross_rail)
    valid = route >= 0
    load = np.bincount(route[valid], np.broadcast_to(mat[s, d][:, None], route.shape)[valid], nw.num_links)
    inter = (ranks[s] // 8 != ranks[d] // 8).any()
    return (load / nw.topology.link_capacity_bytes_per_s).max() + (nw.topology.nic_latency_s if inter else
                                                                    nw.topology.nvlink_latency_s)


@pytest.mark.parametrize("nodes,members", [(2, 16), (4, 12), (64, 96)])
def test_fast_link_loads_equal_the_per_flow_paths(nodes, members):
    rng = np.random.default_rng(nodes)
    nw = net(nodes, solver=FlowSolver.BOUND)
    for _ in range(5):
        ranks = np.sort(rng.choice(nodes * 8, size=members, replace=False))  # across leaves when nodes > 32
        mat = rng.exponential(1e6, size=(members, members)) * (rng.random((members, members)) < 0.7)
        assert nw.all_to_all_s(mat, ranks) == pytest.approx(_paths_bound(nw, mat, ranks), rel=1e-12)


def test_link_bound_never_exceeds_max_min_and_matches_it_on_balanced_traffic():
    rng = np.random.default_rng(1)
    bound, exact = (net(2, solver=s) for s in (FlowSolver.BOUND, FlowSolver.MAXMIN))
    for _ in range(10):
        mat = rng.exponential(1e6, size=(16, 16))
        assert bound.all_to_all_s(mat, np.arange(16)) <= exact.all_to_all_s(mat, np.arange(16)) * (1 + 1e-12)
    flat = np.full((16, 16), 1e6)
    assert bound.all_to_all_s(flat, np.arange(16)) == pytest.approx(exact.all_to_all_s(flat, np.arange(16)))


def test_shared_nics_fast_path_equals_per_flow_paths():
    """4 NICs for 8 GPUs: a GPU that shares the destination rail's NIC needs no NVLink hop on either path."""
    rng = np.random.default_rng(5)
    nw = net(4, solver=FlowSolver.BOUND, nics_per_node=4)
    for _ in range(5):
        ranks = np.arange(32)
        mat = rng.exponential(1e6, size=(32, 32)) * (rng.random((32, 32)) < 0.7)
        assert nw.all_to_all_s(mat, ranks) == pytest.approx(_paths_bound(nw, mat, ranks), rel=1e-12)
