"""The per-stage engine (numpy vectors of per-rank clocks, one SimPy process per pipeline stage) gives the same
records, to the last bit, as the per-rank engine it replaced (tests/sim/per_rank_engine.py, one process per rank),
on the same precomputed work: every schedule path (pipeline waits, TP/EP/DP groups, expert tensor parallelism,
context parallelism, recompute, blocking and overlapped migrations, shadowed and replicated experts, interleaved
1F1B and uneven pipeline splits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy
import yaml

import moesim.sim.simulate as simulate_module
from moesim.loader import parse_scenario
from moesim.sim.simulate import simulate
from moesim.spec import ParallelLayout, Recompute
from moesim.spec.layout import RankOrder

from helpers import scenario, tiny_model
from sim import per_rank_engine

PLACEMENT = """
name: {policy}
cluster: {{profile: dgx-h100, nodes: 1}}
model: {{preset: olmoe-1b-7b, num_layers: 4}}
training: {{global_batch_size: 16, seq_len: 512, micro_batch_size: 1, dtype: bf16}}
layout: {{tp: 1, pp: 2, dp: 4, ep: 4}}
routing: {{distribution: zipf, zipf_s: 1.5, temporal: drift}}
gate: {{capacity_factor: null}}
placement: {placement}
simulation: {{steps: 3, warmup_steps: 0, seed: 5}}
"""
PLACEMENTS = {
    "flexmoe-overlapped": "{policy: flexmoe, slots_per_gpu: 18, migration: overlapped, "
                          "flexmoe: {threshold: 1.0, horizon_steps: 50, history_steps: 1}}",
    "flexmoe-blocking": "{policy: flexmoe, slots_per_gpu: 18, migration: blocking, "
                        "flexmoe: {threshold: 1.0, horizon_steps: 50, history_steps: 1}}",
    "fastermoe": "{policy: fastermoe}",
    "eplb": "{policy: eplb, slots_per_gpu: 18}",
}


def _cases():
    yield "tp2-pp2-ep2", scenario(zipf_s=1.2, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2))
    yield "pp4-skewed", scenario(zipf_s=1.5, layout=ParallelLayout(tp=1, pp=4, dp=2, ep=2), global_batch=12)
    yield "etp2-recompute", scenario(zipf_s=1.0, layout=ParallelLayout(tp=2, pp=1, dp=4, ep=2, etp=2),
                                     recompute=Recompute.SELECTIVE)
    yield "ep1-pp2", scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=1), model=tiny_model(first_k_dense=1))
    yield "two-nodes", scenario(nodes=2, gpus_per_node=4, zipf_s=1.0, layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4))
    # context parallelism across the two nodes: the ring's exchange is exposed and its members wait for each other
    yield "tp-pp-dp-mapping", scenario(nodes=2, gpus_per_node=4, zipf_s=1.2,
                                       layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2, order=RankOrder.TP_CP_EP_PP_DP))
    yield "cp2-across-nodes", scenario(nodes=2, gpus_per_node=4, zipf_s=1.2,
                                       layout=ParallelLayout(tp=2, cp=2, pp=2, dp=1, ep=4))
    # interleaved 1F1B across two nodes: the last stage's chunk 0 feeds stage 0's chunk 1 over the network; a dense
    # first layer makes stage 0's chunks differ
    yield "vpp2-two-nodes", scenario(nodes=2, gpus_per_node=4, zipf_s=1.2, model=tiny_model(first_k_dense=1),
                                     layout=ParallelLayout(tp=1, pp=2, dp=4, ep=2, vpp=2))
    # uneven split (Megatron --decoder-first/last-pipeline-num-layers) with interleaving: 2 + 2 x 2 + 2 layers
    yield "uneven-vpp2", scenario(zipf_s=1.0, model=tiny_model(num_layers=8), global_batch=8,
                                  layout=ParallelLayout(tp=1, pp=4, dp=2, ep=2, vpp=2, first_stage_layers=2,
                                                        last_stage_layers=2))
    yield "uneven-pp4", scenario(zipf_s=1.5, model=tiny_model(num_layers=8), global_batch=6,
                                 layout=ParallelLayout(tp=2, pp=4, dp=1, ep=2, first_stage_layers=1,
                                                       last_stage_layers=3))
    for name, placement in PLACEMENTS.items():
        doc = yaml.safe_load(PLACEMENT.format(policy=name, placement=placement))
        yield name, parse_scenario(doc, name, Path("."))


CASES = dict(_cases())


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_stage_engine_equals_per_rank_engine(name, monkeypatch):
    sc = CASES[name]
    fast = simulate(sc)
    monkeypatch.setattr(simulate_module, "simulate_step", per_rank_engine.simulate_step)
    oracle = simulate(sc)
    np.testing.assert_array_equal(fast.step_times_s, oracle.step_times_s)
    pd.testing.assert_frame_equal(fast.records, oracle.records, check_exact=True)
    assert len(fast.records) > 0


def test_the_cases_reach_every_op():
    ops = set().union(*(set(simulate(sc).records["op"].unique()) for sc in CASES.values()))
    assert ops >= {"attention", "dense_ffn", "router", "expert", "lm_head", "memory_bound", "kernel_launch",
                   "tp_comm", "dispatch", "combine",
                   "pp_wait", "dp_sync_dense", "dp_sync_expert", "optimizer", "migration", "shadow",
                   "replica_sync", "idle"}, ops


def test_oracle_rendezvous_starts_when_last_member_arrives():
    env = simpy.Environment()
    rdv = per_rank_engine.Rendezvous(env)
    done = {}

    def member(name, arrive_s):
        yield env.timeout(arrive_s)
        yield rdv.arrive("g", 3, 2.0)
        done[name] = env.now

    for name, t in (("a", 1.0), ("b", 5.0), ("c", 3.0)):
        env.process(member(name, t))
    env.run()
    assert done == {"a": 7.0, "b": 7.0, "c": 7.0}
    assert rdv.open_groups == 0
