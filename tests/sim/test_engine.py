"""Invariants of the SimPy engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cost import compute as cc
from moesim.metrics.summary import per_rank_breakdown, summarize
from moesim.sim.engine import one_f_one_b
from moesim.sim.records import Phase
from moesim.sim.simulate import simulate
from moesim.sim.workload import layer_costs
from moesim.spec import ParallelLayout

from helpers import scenario, tiny_model


@pytest.mark.parametrize("stages,mbs", [(1, 3), (4, 8), (4, 2), (3, 3)])
def test_one_f_one_b_runs_each_micro_batch_forward_then_backward(stages, mbs):
    for stage in range(stages):
        order = one_f_one_b(stage, stages, mbs)
        assert sorted(order, key=lambda x: (x[1], x[0].value)) == sorted(
            [(p, m) for m in range(mbs) for p in (Phase.FORWARD, Phase.BACKWARD)], key=lambda x: (x[1], x[0].value))
        for mb in range(mbs):
            assert order.index((Phase.FORWARD, mb)) < order.index((Phase.BACKWARD, mb))
        warmup = next(i for i, (p, _) in enumerate(order) if p is Phase.BACKWARD)
        assert warmup == min(stages - stage, mbs)  # warm-up forwards + the first steady-state forward


def test_one_gpu_without_communication_is_the_sum_of_its_compute():
    # One expert, top-1: every token goes to it, so the expert rows are known exactly.
    model = tiny_model(num_experts=1, top_k=1, num_layers=2, first_k_dense=1)
    sc = scenario(gpus_per_node=1, layout=ParallelLayout(), model=model, global_batch=3, steps=1)
    result = simulate(sc)
    lc = layer_costs(sc)
    prof, dt = sc.cluster.profile, sc.training.dtype
    expert_fwd, expert_bwd = (float(x) for x in cc.expert_time_s(np.array([sc.tokens_per_micro_batch]), model,
                                                                  prof, dt, 1))
    rows = sc.tokens_per_micro_batch
    dense_layer = (lc.attention_fwd_s + lc.dense_ffn_fwd_s + lc.memory_bound_fwd_s[0] + lc.launch_fwd_s[0]
                   + lc.attention_bwd_s + lc.dense_ffn_bwd_s + lc.memory_bound_bwd_s[0] + lc.launch_bwd_s[0])
    moe_layer = (lc.attention_fwd_s + lc.router_fwd_s + expert_fwd + lc.memory_bound_fwd_s[1] + lc.launch_fwd_s[1]
                 + lc.attention_bwd_s + lc.router_bwd_s + expert_bwd + lc.memory_bound_bwd_s[1] + lc.launch_bwd_s[1]
                 + rows * (lc.expert_row_memory_bound_s + lc.expert_row_memory_bound_bwd_s))
    head = lc.lm_head_fwd_s + sum(lc.lm_head_extra_fwd_s) + lc.lm_head_bwd_s + sum(lc.lm_head_extra_bwd_s)
    per_mb = dense_layer + moe_layer + head
    rec = result.records
    optimizer = float((rec.end_s - rec.start_s)[rec.op == "optimizer"].sum())
    assert result.step_times_s[0] == pytest.approx(3 * per_mb + optimizer, rel=1e-12)
    comm = rec[rec.op.isin(["dispatch", "combine", "tp_comm", "pp_wait", "dp_sync_dense", "dp_sync_expert"])]
    assert float((comm.end_s - comm.start_s).sum()) == 0.0


def _p50(**kw) -> float:
    return summarize(simulate(scenario(**kw))).step_time_s


def test_more_bandwidth_is_never_slower():
    base = scenario(nodes=2, gpus_per_node=4, zipf_s=1.0, layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4))
    times = []
    for scale in (0.25, 1.0, 4.0):
        sc = scenario(nodes=2, gpus_per_node=4, zipf_s=1.0, layout=base.layout, bandwidth_scale=scale)
        times.append(simulate(sc).step_times_s)
    assert np.all(times[0] >= times[1]) and np.all(times[1] >= times[2])
    assert times[0].sum() > times[2].sum()  # and bandwidth does matter here


def test_more_skew_is_never_faster():
    lay = ParallelLayout(tp=1, pp=1, dp=8, ep=8)
    model = tiny_model(num_experts=16)
    p50 = [_p50(layout=lay, model=model, zipf_s=s, seq_len=1024) for s in (0.0, 0.5, 1.0, 1.5, 2.0)]
    assert all(a < b for a, b in zip(p50, p50[1:])), p50


def test_same_seed_same_results_and_other_seed_differs():
    a, b = simulate(scenario(zipf_s=1.0, seed=7)), simulate(scenario(zipf_s=1.0, seed=7))
    assert a.records.equals(b.records)
    assert json.dumps(summarize(a).to_dict()) == json.dumps(summarize(b).to_dict())
    c = simulate(scenario(zipf_s=1.0, seed=8))
    assert not a.records.equals(c.records)


def test_permuting_process_start_order_does_not_change_anything():
    sc = scenario(zipf_s=1.2, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2))
    plain = simulate(sc)
    shuffled = simulate(sc, shuffle_start_order=True)
    assert plain.records.equals(shuffled.records)
    assert json.dumps(summarize(plain).to_dict()) == json.dumps(summarize(shuffled).to_dict())


def test_tokens_dispatched_equal_tokens_combined():
    sc = scenario(zipf_s=1.5, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2, etp=1))
    rec = simulate(sc).records
    keys = ["step", "layer", "micro_batch", "phase"]
    sent = rec[rec.op == "dispatch"].groupby(keys, observed=True)["rows"].sum()
    back = rec[rec.op == "combine"].groupby(keys, observed=True)["rows"].sum()
    assert sent.equals(back)
    expected = sc.tokens_routed_per_rank * sc.model.top_k * sc.layout.ranks_per_stage
    assert (sent == expected).all()


def test_breakdown_buckets_add_up_to_each_ranks_step_time():
    result = simulate(scenario(zipf_s=1.0, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=4)))
    per_rank = per_rank_breakdown(result)
    assert np.allclose(per_rank.sum(axis=1), result.step_times_s.mean(), rtol=1e-12)
    s = summarize(result)
    assert sum(s.breakdown_s.values()) == pytest.approx(s.step_time_mean_s, rel=1e-12)


def test_skew_shows_up_as_straggler_wait_not_transfer():
    lay = ParallelLayout(tp=1, pp=1, dp=8, ep=8)
    flat = summarize(simulate(scenario(layout=lay, model=tiny_model(num_experts=16), seq_len=1024)))
    hot = summarize(simulate(scenario(layout=lay, model=tiny_model(num_experts=16), seq_len=1024, zipf_s=2.0)))
    assert hot.breakdown_s["straggler_wait"] > 3 * flat.breakdown_s["straggler_wait"]
    assert hot.expert_load_max_over_mean > 3 * flat.expert_load_max_over_mean


def test_the_summary_breaks_the_busiest_ranks_memory_down():
    s = summarize(simulate(scenario(zipf_s=1.5, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2))))
    parts = s.peak_memory_breakdown_bytes
    assert parts["total_bytes"] == pytest.approx(s.peak_memory_bytes_max, rel=1e-12)
    assert sum(v for k, v in parts.items() if k != "total_bytes") == pytest.approx(parts["total_bytes"], rel=1e-12)
    assert set(parts) >= {"weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes"}
