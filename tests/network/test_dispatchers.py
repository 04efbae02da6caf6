"""Token dispatchers (comm.dispatcher, Megatron --moe-token-dispatcher-type): what each puts on the wire, against
closed forms."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from moesim.network.dispatch import allgather_rows, flex_rows, relay_index, tokens_reaching
from moesim.spec.errors import SpecError

T, K, E = 4096, 8, 256  # tokens per source, top-k, experts: DeepSeek-V3's router


def _uniform(ep: int) -> np.ndarray:
    """Rows each source sends to each destination under uniform routing (E / ep experts per GPU)."""
    return np.full((ep, ep), T * K / ep)


def test_top8_over_4_nodes_reaches_each_node_with_the_hypergeometric_probability():
    per_node = T * K / 4  # 64 of 256 experts per node
    p_miss = comb(E - 64, K) / comb(E, K)
    assert float(tokens_reaching(np.array(per_node), T, K, E)) == pytest.approx(T * (1 - p_miss), rel=1e-12)
    # remote copies per token: 3 remote nodes x P(hit) = 2.71, against 8 x 3/4 = 6 rows under all-to-all
    assert 3 * (1 - p_miss) == pytest.approx(2.7107, abs=1e-4)


def test_flex_sends_one_copy_per_token_and_remote_node_then_forwards_over_nvlink():
    ep, gpus = 32, 8
    ranks = np.arange(ep)
    node, local = ranks // gpus, ranks % gpus
    rows = _uniform(ep)
    wire = flex_rows(rows, T, K, E, node, local)
    per_gpu = float(tokens_reaching(np.array(T * K / ep), T, K, E))
    per_node = float(tokens_reaching(np.array(T * K / 4), T, K, E))
    src = 0  # node 0, local rank 0; its relays are ranks 8, 16, 24
    # inside its node one copy per (token, GPU), and as the relay of the other nodes' local-0 GPUs (8, 16, 24)
    # it forwards theirs: 1 + 3 copies per (token, GPU)
    assert wire[src, 1:8] == pytest.approx(np.full(7, 4 * per_gpu))
    assert wire[src, 8] == pytest.approx(per_node)  # to a relay: one copy per (token, node)
    assert wire[1, 9] == pytest.approx(per_node)  # local rank 1 sends through local rank 1 of node 1
    remote_bytes = wire[np.ix_(node == 0, node != 0)].sum()
    assert remote_bytes == pytest.approx(8 * 3 * per_node)  # only relays cross nodes: one copy per (token, node)
    assert remote_bytes / rows[np.ix_(node == 0, node != 0)].sum() == pytest.approx(per_node / (T * K / 4))


def test_flex_copies_follow_each_sources_routing_not_an_average():
    ep, gpus = 16, 8
    node, local = np.arange(ep) // gpus, np.arange(ep) % gpus
    rows = np.zeros((ep, ep))
    rows[0, 8] = T * K  # source 0 sends every assignment to GPU 8 (all its experts there)
    rows[1, 8:] = T * K / 8  # source 1 spreads over node 1
    wire = flex_rows(rows, T, K, E, node, local)
    assert wire[0, 8] == pytest.approx(T)  # every token crosses once, not k times
    assert wire[1, 9] == pytest.approx(float(tokens_reaching(np.array(T * K), T, K, E)))  # its node copy to relay 9
    assert wire[0, 9:].sum() == 0 and wire[8, 9:].sum() == 0  # relay 8 keeps source 0's rows


def test_allgather_sends_every_token_to_every_member_whatever_the_routing():
    wire = allgather_rows((2, 4, 4), 100)
    assert wire.shape == (2, 4, 4) and wire[0].tolist() == [[0 if i == j else 100 for j in range(4)] for i in range(4)]


def test_flex_needs_ep_groups_of_whole_nodes():
    with pytest.raises(SpecError) as err:
        relay_index(np.array([0, 0, 1]), np.array([0, 1, 0]))
    assert "comm.dispatcher" in err.value.one_line() and "no local rank 1 on node 1" in err.value.one_line()
