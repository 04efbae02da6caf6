"""Context parallelism (layout.cp, Megatron --context-parallel-size): rank folding, the ring attention's split of
compute and its exposed key/value exchange, memory, and the checks on the layout."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost import compute as cc
from moesim.cost.memory import activation_bytes_per_layer
from moesim.network import build_network
from moesim.sim.simulate import simulate
from moesim.sim.workload import layer_costs, static_work
from moesim.spec import ParallelLayout
from moesim.spec.errors import SpecError

from helpers import scenario


def test_ranks_fold_tp_innermost_then_cp_then_dp():
    lay = ParallelLayout(tp=2, cp=2, dp=2, pp=1, ep=4)
    assert lay.tp_groups()[0].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lay.cp_groups()[0].tolist() == [[[0, 2], [1, 3]], [[4, 6], [5, 7]]]
    # dense gradients are reduced over dp x cp ranks of one tp index (Megatron's dp group with cp)
    assert lay.dp_groups()[0].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert (lay.ranks_per_stage, lay.dp_cp, lay.edp) == (8, 4, 2)


def test_a_rank_holds_one_cp_share_of_each_sequence_and_of_its_attention():
    folded = scenario(layout=ParallelLayout(tp=2, cp=1, pp=1, dp=4, ep=4), seq_len=4096)
    ring = scenario(layout=ParallelLayout(tp=2, cp=2, pp=1, dp=2, ep=4), seq_len=4096)
    assert ring.tokens_per_micro_batch * 2 == folded.tokens_per_micro_batch
    assert ring.num_micro_batches == 2 * folded.num_micro_batches  # same tokens per rank per step
    m = ring.model
    core = {sc.layout.cp: cc.attention_flop(m, sc.tokens_per_micro_batch, 4096, 2).core_flop for sc in (folded, ring)}
    assert core[2] == pytest.approx(core[1] / 2)  # load-balanced causal chunks: each rank half of the pairs
    act = {sc.layout.cp: activation_bytes_per_layer(sc, True, sc.tokens_routed_per_rank * m.top_k)
           for sc in (folded, ring)}
    assert act[2] == pytest.approx(act[1] / 2)


def test_the_exposed_exchange_is_what_each_ring_step_does_not_hide():
    sc = scenario(nodes=2, gpus_per_node=4, layout=ParallelLayout(tp=2, cp=2, pp=2, dp=1, ep=4), seq_len=4096)
    net = build_network(sc.cluster, sc.network)
    st = static_work(sc, net)
    lc = layer_costs(sc)
    m, lay = sc.model, sc.layout
    kv = sc.tokens_per_micro_batch * (m.k_width + m.v_width) / lay.tp * sc.training.dtype.activation_bytes
    for phase, sent in enumerate((kv, 2 * kv)):
        step_s = float(net.p2p_s(sent, 0, lay.tp))  # stage 0's rings [0, 2] and [1, 3]: every hop alike
        want = (lay.cp - 1) * max(0.0, step_s - lc.attention_core_s[phase] / lay.cp)
        assert st.cp_comm_s[0, :, phase] == pytest.approx(np.full(lay.ranks_per_stage, want))
    assert st.cp_bytes == pytest.approx((kv, 2 * kv))
    # ranks 0 and 2 of stage 0 share a node; a ring across nodes is slower
    assert float(net.p2p_s(kv, 0, 2)) < float(net.p2p_s(kv, 0, 4))


def test_a_ring_that_crosses_nodes_steps_at_its_slowest_hop():
    # tp 2, cp 4 on nodes of 4 GPUs: ring [0, 2, 4, 6] hops 0->2 and 4->6 over NVLink, 2->4 and 6->0 across nodes
    sc = scenario(nodes=2, gpus_per_node=4, layout=ParallelLayout(tp=2, cp=4, pp=1, dp=1, ep=4), seq_len=4096)
    net = build_network(sc.cluster, sc.network)
    st, lc = static_work(sc, net), layer_costs(sc)
    kv = st.cp_bytes[0] / 3
    across = float(net.p2p_s(kv, 2, 4))
    assert across > float(net.p2p_s(kv, 0, 2))
    assert st.cp_comm_s[0, 0, 0] == pytest.approx(3 * max(0.0, across - lc.attention_core_s[0] / 4))


def test_recomputed_attention_runs_its_forward_ring_again():
    from moesim.spec import Recompute

    layout = ParallelLayout(tp=2, cp=4, pp=1, dp=1, ep=4)
    plain = scenario(nodes=2, gpus_per_node=4, layout=layout, seq_len=4096)
    full = scenario(nodes=2, gpus_per_node=4, layout=layout, seq_len=4096, recompute=Recompute.FULL)
    net = build_network(plain.cluster, plain.network)
    a, b = static_work(plain, net), static_work(full, net)
    assert a.cp_comm_s[0, 0, 0] > 0
    assert b.cp_comm_s[0, 0, 1] == pytest.approx(b.cp_comm_s[0, 0, 0] + a.cp_comm_s[0, 0, 1])


def test_long_sequences_hide_the_exchange_inside_a_node():
    sc = scenario(layout=ParallelLayout(tp=1, cp=4, pp=1, dp=2, ep=4), seq_len=32768, global_batch=2)
    st = static_work(sc, build_network(sc.cluster, sc.network))
    assert not st.cp_comm_s.any()
    result = simulate(sc)
    assert (result.records.op == "cp_comm").any()  # the ring still synchronises its members


def test_cp_must_split_every_sequence_into_2_cp_chunks():
    with pytest.raises(SpecError) as err:
        scenario(layout=ParallelLayout(tp=1, cp=3, pp=1, dp=1, ep=1), gpus_per_node=3, seq_len=4096)
    assert "layout.cp" in err.value.one_line() and "2 x cp dividing training.seq_len (4096)" in err.value.one_line()
