import numpy as np
import pytest

from moesim.network import AlphaBetaNetwork
from moesim.spec import ClusterSpec

from helpers import h100, no_peer_overhead


def net(nodes=2, gpus_per_node=8, scale=1.0):
    return AlphaBetaNetwork(ClusterSpec(no_peer_overhead(h100(gpus_per_node, scale)), nodes))


def test_balanced_all_to_all_inside_a_node_follows_busbw_convention():
    n, per_peer = 8, 1e6
    nw = net(1)
    matrix = np.full((n, n), per_peer)
    sent_total = n * per_peer  # nccl-tests: bytes one rank sends in total, own share included
    expected = nw.nvlink_latency_s + sent_total * (n - 1) / n / nw.nvlink_bytes_per_s
    assert nw.all_to_all_s(matrix, np.arange(n)) == pytest.approx(expected)


def test_one_hot_receiver_sets_the_time():
    nw = net(1)
    matrix = np.zeros((8, 8))
    matrix[:, 3] = 1e6  # everyone sends to rank 3
    expected = nw.nvlink_latency_s + 7e6 / nw.nvlink_bytes_per_s  # its ingress, not the senders' egress
    assert nw.all_to_all_s(matrix, np.arange(8)) == pytest.approx(expected)


def test_cross_node_bytes_go_over_the_nic():
    nw = net(2)
    matrix = np.zeros((2, 2))
    matrix[0, 1] = 1e8
    t = nw.all_to_all_s(matrix, np.array([0, 8]))  # rank 0 on node 0, rank 8 on node 1
    assert t == pytest.approx(nw.nic_latency_s + 1e8 / nw.nic_bytes_per_s)


def test_local_bytes_cost_nothing_and_groups_are_vectorised():
    nw = net(1)
    matrices = np.stack([np.diag([5e6, 5e6]), np.full((2, 2), 1e6)])
    t = nw.all_to_all_s(matrices, np.array([[0, 1], [2, 3]]))
    assert t.shape == (2,) and t[0] == 0.0 and t[1] > 0


def test_ring_all_reduce_closed_form_inside_a_node():
    nw = net(1)
    n, size = 8, 1e9
    expected = 2 * (n - 1) * nw.nvlink_latency_s + 2 * (n - 1) / n * size / nw.nvlink_bytes_per_s
    assert nw.all_reduce_s(size, np.arange(n)) == pytest.approx(expected)
    assert nw.all_reduce_s(size, np.array([5])) == 0.0


def test_all_reduce_across_nodes_uses_one_nic_per_member_per_node():
    nw = net(2)
    one_per_node = nw.all_reduce_s(1e9, np.array([0, 8]))
    four_per_node = nw.all_reduce_s(1e9, np.array([0, 1, 2, 3, 8, 9, 10, 11]))
    assert one_per_node == pytest.approx(2 * nw.nic_latency_s + 1e9 / nw.nic_bytes_per_s)
    assert four_per_node < one_per_node


def test_more_bandwidth_never_slower_on_random_matrices():
    rng = np.random.default_rng(0)
    slow, fast = net(2, 4, 1.0), net(2, 4, 1.5)
    ranks = np.arange(8)
    for _ in range(50):
        m = rng.exponential(1e6, size=(8, 8)) * (rng.random((8, 8)) < 0.7)
        assert fast.all_to_all_s(m, ranks) <= slow.all_to_all_s(m, ranks)
        size = float(rng.exponential(1e8))
        assert fast.all_reduce_s(size, ranks) <= slow.all_reduce_s(size, ranks)


def test_p2p_tiers():
    nw = net(2)
    assert nw.p2p_s(1e6, 0, 0) == 0.0
    assert nw.p2p_s(1e6, 0, 1) < nw.p2p_s(1e6, 0, 8)
