"""Communication/compute overlap (comm: overlap options, Megatron-LM's flags): what stays exposed, what is hidden
(records' hidden_s, the summary's hidden_s), and the contention it costs the compute, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.metrics.summary import summarize
from moesim.network import build_network
from moesim.sim.engine import one_f_one_b
from moesim.sim.simulate import simulate
from moesim.sim.workload import dp_overlap, layer_costs, static_work
from moesim.spec import ParallelLayout
from moesim.spec.comm import CommSpec
from moesim.spec.errors import SpecError
from moesim.spec.training import OptimizerSpec

from helpers import scenario, tiny_model


def _with(sc, **comm):
    return sc.replace(comm=CommSpec(**comm))


def _run(sc):
    result = simulate(sc)
    return result, summarize(result)


def test_in_one_f_one_b_only_warm_up_and_cool_down_passes_lack_a_partner():
    order = one_f_one_b(0, 2, 4)  # F0 F1 B0 F2 B1 F3 B2 B3
    paired = [any(0 <= j < len(order) and order[j][0] is not op[0] for j in (i - 1, i + 1))
              for i, op in enumerate(order)]
    assert paired == [False, True, True, True, True, True, True, False]


def test_a2a_overlap_hides_what_the_partner_compute_covers_and_pays_contention():
    base = scenario(layout=ParallelLayout(tp=1, pp=1, dp=8, ep=8), global_batch=16, seq_len=1024)
    plain, s_plain = _run(base)
    over, s_over = _run(_with(base, moe_a2a_overlap=True))
    a2a = s_plain.breakdown_s["all_to_all"]
    # pp 1: every pass has a partner; the exposed and hidden parts add up to the all-to-all without overlap
    assert s_over.breakdown_s["all_to_all"] + s_over.hidden_s["all_to_all"] == pytest.approx(a2a, rel=1e-9)
    assert s_over.hidden_s["all_to_all"] > 0.8 * a2a
    rec = over.records
    fwd = rec[rec.op.isin(["dispatch", "combine"]) & (rec.phase == "fwd")]
    assert float((fwd.end_s - fwd.start_s - fwd.wait_s).abs().max()) < 1e-12  # a backward's compute covers it
    slowdown = base.cluster.profile.efficiency.overlap_slowdown
    assert slowdown > 0
    assert s_over.breakdown_s["compute"] - s_plain.breakdown_s["compute"] == pytest.approx(
        slowdown * s_over.hidden_s["all_to_all"], rel=1e-6)
    assert s_over.step_time_s < s_plain.step_time_s


def test_a2a_overlap_leaves_exposed_what_exceeds_the_partner_compute():
    base = scenario(layout=ParallelLayout(tp=1, pp=1, dp=8, ep=8), global_batch=8, seq_len=1024,
                    bandwidth_scale=0.001)  # a slow network: the all-to-all outlasts the compute
    result = simulate(_with(base, moe_a2a_overlap=True))
    rec = result.records
    lc = layer_costs(base)
    d = rec[(rec.op == "dispatch") & (rec.phase == "fwd") & (rec.layer == 0) & (rec.micro_batch == 0)]
    c = rec[(rec.op == "combine") & (rec.phase == "fwd") & (rec.layer == 0) & (rec.micro_batch == 0)]
    total = (d.end_s - d.start_s - d.wait_s).to_numpy() + (c.end_s - c.start_s - c.wait_s).to_numpy() \
        + d.hidden_s.to_numpy() + c.hidden_s.to_numpy()
    hidden = d.hidden_s.to_numpy() + c.hidden_s.to_numpy()
    moe = rec[(rec.op == "expert") & (rec.phase == "bwd") & (rec.layer == 0) & (rec.micro_batch == 0)]
    budget = lc.attention_bwd_s + lc.router_bwd_s + (moe.end_s - moe.start_s).to_numpy()
    assert np.all(total > budget.min())
    np.testing.assert_allclose(hidden, np.full(len(hidden), budget.min()), rtol=1e-9)  # the group's least busy


def test_shared_expert_overlap_hides_the_dispatch_behind_the_shared_experts():
    model = tiny_model(num_shared_experts=1)
    base = scenario(model=model, layout=ParallelLayout(tp=1, pp=1, dp=8, ep=8), global_batch=8, seq_len=1024)
    plain = simulate(base).records
    over = simulate(_with(base, shared_expert_overlap=True)).records
    shared_fwd = layer_costs(base).shared_expert_s[0]
    pick = lambda r: r[(r.op == "dispatch") & (r.phase == "fwd")]  # noqa: E731
    d = (pick(plain).end_s - pick(plain).start_s - pick(plain).wait_s).to_numpy()
    hidden = pick(over).hidden_s.to_numpy()
    np.testing.assert_allclose(hidden, np.minimum(d, shared_fwd), rtol=1e-9)


def test_tp_comm_overlap_hides_the_collectives_behind_the_projections():
    base = scenario(layout=ParallelLayout(tp=2, pp=1, dp=4, ep=4), global_batch=8, seq_len=1024)
    st = static_work(base, build_network(base.cluster, base.network))
    lc = layer_costs(base)
    rec = simulate(_with(base, tp_comm_overlap=True)).records
    tp = rec[(rec.op == "tp_comm") & (rec.phase == "fwd") & (rec.layer == 0)]
    hidden = tp.hidden_s.to_numpy()
    want = np.minimum(st.tp_comm_s[0, 0, 1], lc.tp_overlap_budget_s[1][0])
    np.testing.assert_allclose(hidden, want, rtol=1e-9)


def test_dp_overlap_closed_form():
    base = _with(scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4)), overlap_grad_reduce=True)
    lc = layer_costs(base)
    sync = np.full((2, 2, 4), 1.0)  # 1 s of all-reduce, far more than a micro-batch's backward
    exposed, hidden = dp_overlap(base, lc, sync)
    bwd_stage0 = sum(lc.attention_bwd_s + (lc.router_bwd_s if base.model.is_moe_layer(i) else lc.dense_ffn_bwd_s)
                     + lc.memory_bound_bwd_s[int(base.model.is_moe_layer(i))] for i in range(2))
    # no distributed optimizer: the whole all-reduce is the reduction, hidden up to one backward of the stage
    assert hidden[0, 0, 0] == pytest.approx(bwd_stage0)
    assert exposed[0, 0, 0] + hidden[0, 0, 0] == pytest.approx(1.0)
    small = np.full((2, 2, 4), 1e-6)
    exposed, _ = dp_overlap(base, lc, small)
    assert exposed[0, 0, 0] == pytest.approx(1e-6 / 2)  # the last layer's bucket (2 layers per stage) stays


def test_param_gather_overlap_hides_the_all_gather_half_behind_one_forward():
    base = scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4))
    base = base.replace(training=base.training.replace(optimizer=OptimizerSpec(distributed=True)))
    lc = layer_costs(base)
    moe = [base.model.is_moe_layer(i) for i in range(2)]
    fwd = sum(lc.attention_fwd_s + (lc.router_fwd_s if m else lc.dense_ffn_fwd_s) + lc.memory_bound_fwd_s[int(m)]
              for m in moe)
    bwd = sum(lc.attention_bwd_s + (lc.router_bwd_s if m else lc.dense_ffn_bwd_s) + lc.memory_bound_bwd_s[int(m)]
              for m in moe)
    sync = np.full((2, 2, 4), 1.0)
    exposed, hidden = dp_overlap(_with(base, overlap_param_gather=True), lc, sync)
    assert hidden[0, 0, 0] == pytest.approx(fwd)  # the all-gather: half of the all-reduce, under one forward
    exposed, hidden = dp_overlap(_with(base, overlap_param_gather=True, overlap_grad_reduce=True), lc, sync)
    assert hidden[0, 0, 0] == pytest.approx(fwd + bwd)  # and the reduce-scatter half under one backward
    assert exposed[0, 0, 0] == pytest.approx(1.0 - fwd - bwd)


@pytest.mark.parametrize("comm, layout, expected", [
    (dict(overlap_param_gather=True), ParallelLayout(tp=1, pp=2, dp=4, ep=4), "optimizer.distributed: true"),
    (dict(tp_comm_overlap=True), ParallelLayout(tp=1, pp=2, dp=4, ep=4), "layout.tp > 1"),
    (dict(moe_a2a_overlap=True), ParallelLayout(tp=1, pp=2, dp=4, ep=1), "layout.ep > 1"),
    (dict(shared_expert_overlap=True), ParallelLayout(tp=1, pp=2, dp=4, ep=4), "num_shared_experts > 0"),
])
def test_overlap_options_are_refused_where_megatron_refuses_them(comm, layout, expected):
    with pytest.raises(SpecError) as err:
        _with(scenario(layout=layout), **comm)
    assert expected in err.value.one_line()
