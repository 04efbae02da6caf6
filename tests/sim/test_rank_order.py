"""Rank order (layout.order, Megatron's parallel_state order; --use-tp-pp-dp-mapping): which GPUs each group holds
and so which groups cross nodes."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.network import build_network
from moesim.sim.simulate import simulate
from moesim.sim.workload import static_work
from moesim.spec import ParallelLayout
from moesim.spec.errors import SpecError
from moesim.spec.layout import RankOrder

from helpers import scenario

PP_DP = RankOrder.TP_CP_EP_PP_DP


def test_tp_pp_dp_mapping_puts_a_pipelines_stages_next_to_each_other():
    lay = ParallelLayout(tp=2, pp=2, dp=2, ep=2, order=PP_DP)
    assert sorted(lay.physical(np.arange(8)).tolist()) == list(range(8))  # a permutation of the GPUs
    # stage 0 holds GPUs 0, 1 (dp 0) and 4, 5 (dp 1); stage 1 the blocks between them
    assert lay.physical(np.arange(4)).tolist() == [0, 1, 4, 5]
    assert lay.physical(np.arange(4, 8)).tolist() == [2, 3, 6, 7]
    assert lay.tp_groups()[0].tolist() == [[0, 1], [4, 5]]
    assert lay.dp_groups()[0].tolist() == [[0, 4], [1, 5]]
    assert lay.ep_groups()[0].reshape(-1, 2).tolist() == [[0, 1], [4, 5]]  # the expert grid agrees
    default = ParallelLayout(tp=2, pp=2, dp=2, ep=2)
    assert default.dp_groups()[0].tolist() == [[0, 2], [1, 3]]


def test_the_order_decides_which_of_pipeline_and_data_parallel_crosses_nodes():
    layout = dict(tp=2, pp=2, dp=2, ep=2)
    plain = scenario(nodes=2, gpus_per_node=4, layout=ParallelLayout(**layout), global_batch=8)
    swapped = scenario(nodes=2, gpus_per_node=4, layout=ParallelLayout(**layout, order=PP_DP), global_batch=8)
    a = static_work(plain, build_network(plain.cluster, plain.network))
    b = static_work(swapped, build_network(swapped.cluster, swapped.network))
    # default: the pipeline hop 0 -> 4 crosses nodes and data parallel stays inside; swapped: the other way
    assert a.p2p_s[0, 0] > b.p2p_s[0, 0]
    assert a.dp_dense_s[0, 0] < b.dp_dense_s[0, 0]
    assert simulate(swapped).step_times_s[0] > 0


def test_pp_inside_dp_needs_expert_blocks_of_tp_x_cp_gpus():
    with pytest.raises(SpecError) as err:
        ParallelLayout(tp=2, pp=2, dp=2, ep=4, order=PP_DP)
    assert err.value.one_line().startswith("order: got 'tp-cp-ep-pp-dp'")
    ParallelLayout(tp=2, pp=1, dp=2, ep=4, order=PP_DP)  # one stage: nothing to disagree on
