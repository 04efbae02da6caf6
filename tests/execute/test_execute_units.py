"""The pure parts of moesim execute: scaling a plan, one rank's view of the simulator's routing, the records
assembled from the ranks' timelines, the comparison; and a long run whose timings exceed a pipe's buffer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.execute.compare import compare, phase_seconds
from moesim.execute.records import ExecuteError, assemble
from moesim.execute.routing_plan import flex_routing, group_slots, rank_routing
from moesim.execute.scale import ScaleLimits, scale_plan
from moesim.io.profile import load_profile, resolve_profile
from moesim.loader import load_scenario
from moesim.placement.base import Placement
from moesim.sim.records import OpKind, Phase
from moesim.spec.errors import SpecError
from moesim.spec.layout import ParallelLayout

from helpers import scenario

ROOT = Path(__file__).resolve().parents[2]
CPU = load_profile(resolve_profile("cpu-gloo-2c"))


def test_scale_plan_says_what_it_changed_and_keeps_what_runs():
    sc = load_scenario(ROOT / "scenarios" / "deepseek-v3-256.yaml")
    scaled = scale_plan(sc, 4, CPU, steps=2)
    s = scaled.scenario
    assert (s.layout.tp, s.layout.pp, s.layout.dp, s.layout.ep) == (1, 2, 2, 2)  # 2 layers: 2 stages of 2
    assert s.cluster.num_gpus == 4 and s.cluster.profile.name == "cpu-gloo-2c"
    assert s.model.first_k_dense == 1 and s.model.num_layers == 2 and s.model.num_shared_experts == 1
    assert s.routing == sc.routing and s.gate == sc.gate and s.simulation.seed == sc.simulation.seed
    assert s.simulation.steps == 2 and s.simulation.warmup_steps == 1
    said = "\n".join(scaled.changes)
    for key in ("layout.pp: 16 -> 2", "layout.ep: 16 -> 2", "model.num_experts: 256 -> 8", "model.kv_lora_rank",
                "training.dtype: bf16 -> fp32", "cluster: 32 x 8 GPUs of dgx-h100 -> 1 x 4 ranks of cpu-gloo-2c"):
        assert key in said
    # ep is the largest divisor of the ranks and the experts up to the plan's
    assert scale_plan(sc, 3, CPU).scenario.layout.ep == 2 or 8 % 3 != 0
    with pytest.raises(SpecError, match="--nproc"):
        scale_plan(sc, 0, CPU)


def test_rank_routing_follows_the_counts_drops_and_pads():
    loads = np.array([[3, 1, 0, 2], [0, 2, 2, 2]])  # [q, E]: 2 ranks, 4 experts, T = 3 tokens, k = 2
    sent = np.array([[2, 1, 0, 3], [0, 2, 1, 2]])  # rank 0 drops one of expert 0, pads one row to expert 3
    computed = np.array([2, 4, 1, 5])  # expert 1 computes one row of padding at the expert (3 arrive)
    slots = group_slots(None, 4, 2)
    r0 = rank_routing(loads, sent, computed, np.array([0, 1]), 0, 2, slots)
    assert np.bincount(r0.expert_ids.ravel(), minlength=4).tolist() == [3, 1, 0, 2]
    assert r0.dropped == 1 and r0.send_splits == [3, 3] and r0.recv_splits == [3, 2]
    assert (r0.send_slots == -1).sum() == 1  # the padding row
    assert r0.send_dest.tolist() == [0, 0, 0, 1, 1, 1] and r0.send_expert.tolist() == [0, 0, 1, 3, 3, 3]
    assert r0.local_experts == (0, 1) and [len(rows) for rows in r0.expert_rows] == [2, 3]
    assert r0.expert_padding == (0, 1) and r0.expert_computed == (2, 4)
    r1 = rank_routing(loads, sent, computed, np.array([0, 1]), 1, 2, slots)
    assert r1.recv_splits == [3, 3] and r1.send_splits == [2, 3]
    assert [len(rows) for rows in r1.expert_rows] == [1, 5] and r1.expert_padding == (0, 0)
    with pytest.raises(SpecError, match="routing_draws"):
        rank_routing(loads + 0.5, sent, computed, np.array([0, 1]), 0, 2, slots)


def test_a_replicated_expert_splits_each_source_in_whole_rows():
    # expert 0 on both ranks (rank 0's slot 1, rank 1's slot 0), experts 1 and 2 once each
    slots = group_slots(Placement(np.array([[1, 0], [0, 2]])), 3, 2)
    assert slots.experts == ((1, 0), (0, 2)) and slots.owners(0) == [0, 1] and slots.shadows(0) == []
    loads = np.array([[5, 1, 0], [2, 2, 2]])  # T = 3, k = 2
    sent = np.array([[5, 1, 0], [2, 2, 2]])  # dropless
    computed = np.array([7, 4, 2])  # expert 1 pads one row at the expert (3 arrive)
    r0 = rank_routing(loads, sent, computed, np.array([0, 1]), 0, 2, slots)
    # rank 0's 5 rows of expert 0: 3 to its first copy (largest remainder, ties to the lower rank), 2 to the other
    assert r0.send_splits == [1 + 3, 2] and r0.send_expert.tolist() == [1, 0, 0, 0, 0, 0]
    assert sorted(r0.send_slots.tolist()) == sorted(np.flatnonzero(r0.expert_ids.ravel() != 2).tolist())
    r1 = rank_routing(loads, sent, computed, np.array([0, 1]), 1, 2, slots)
    assert r1.send_splits == [2 + 1, 1 + 2] and r1.local_experts == (0, 2)
    # expert 0 computes 7 rows, 3.5 per copy: 4 arrive at rank 0 (3 + 1), 3 at rank 1 (2 + 1)
    assert r0.expert_computed == (3 + 1, 4) and r0.expert_padding == (1, 0) and r1.expert_computed == (3, 2)
    shadowed = group_slots(Placement(np.array([[0, 1], [2, 0]]), transient=np.array([[False, False],
                                                                                    [False, True]])), 3, 2)
    assert shadowed.owners(0) == [0] and shadowed.shadows(0) == [1] and shadowed.shadow_any


def test_flex_sends_a_token_once_per_destination_rank_with_its_gates():
    """DeepEP inside a node: a token whose two choices are on the same rank sends one row there, whose gate mask
    holds both choices; a dropped choice has no gate; capacity padding does not travel but is computed at the
    expert."""
    loads = np.array([[2, 2, 1, 1], [1, 1, 2, 2]])  # [q, E]: 2 ranks, 4 experts, T = 3 tokens, k = 2
    sent = np.array([[3, 1, 1, 1], [1, 1, 2, 2]])  # rank 0 pads one row to expert 0, drops one of expert 1
    computed = sent.sum(0)
    slots = group_slots(None, 4, 2)
    r0, r1 = (rank_routing(loads, sent, computed, np.array([0, 1]), q, 2, slots) for q in (0, 1))
    # rank 0's tokens: 0 -> experts (0, 1), 1 -> (0, 2), 2 -> (1, 3); token 2's choice of expert 1 is dropped
    assert r0.expert_ids.tolist() == [[0, 1], [0, 2], [1, 3]]
    assert r0.send_splits == [4, 2]  # alltoall: expert 0's two rows and its padding row, expert 1's kept row
    f0 = flex_routing([r0, r1], 0, 2)
    assert f0.send_splits == [2, 2]  # tokens 0 (once, for two experts) and 1 to rank 0; tokens 1 and 2 to rank 1
    assert f0.send_tokens.tolist() == [0, 1, 1, 2]
    assert f0.send_choices.tolist() == [[True, True], [True, False], [False, True], [False, True]]
    r1_tokens = r1.expert_ids.tolist()  # rank 1's tokens: 0 -> (0, 2), 1 -> (1, 3), 2 -> (2, 3)
    assert r1_tokens == [[0, 2], [1, 3], [2, 3]]
    assert f0.recv_splits == [2, 2]  # from rank 0 its tokens 0 and 1; from rank 1 its tokens 0 and 1
    # expert 0: rank 0's tokens 0 and 1 (rows 0, 1; choice 0) and rank 1's token 0 (row 2), plus the padding row
    assert f0.expert_rows[0].tolist() == [0, 1, 2] and f0.expert_gates[0].tolist() == [0, 2, 4]
    assert f0.expert_padding == (1, 0)
    # expert 1: rank 0's token 0 (choice 1) and rank 1's token 1 (row 3, choice 0)
    assert f0.expert_rows[1].tolist() == [0, 3] and f0.expert_gates[1].tolist() == [1, 6]
    f1 = flex_routing([r0, r1], 1, 2)
    assert f1.recv_splits == f0.send_splits[1:] + f1.send_splits[1:]  # rank 0's 2 tokens, then rank 1's own
    # rank 1's token 2 has both choices (experts 2, 3) on itself: one row where alltoall sends two
    assert r1.send_splits == [2, 4] and f1.send_splits == [2, 3] and f1.expert_padding == (0, 0)


def _timeline(starts, ends):
    ops = [(0, 0, -1, Phase.FORWARD.value, OpKind.ATTENTION.value), (0, 0, 0, Phase.FORWARD.value,
                                                                        OpKind.DISPATCH.value)]
    return [(*k, s, e, 0.0, 0) for k, s, e in zip(ops, starts, ends)]


def test_assemble_computes_waits_on_the_shared_clock_and_idles():
    lay = ParallelLayout(dp=2, ep=2)
    # rank 0 computes 1 s, rank 1 3 s; the dispatch ends for both at 3.5: rank 0 waited 2 s of its 2.5
    timelines = [_timeline([10.0, 11.0], [11.0, 13.5]), _timeline([10.0, 13.0], [13.0, 13.5])]
    records, steps = assemble(lay, timelines, [[10.0], [10.0]])
    assert steps.tolist() == [3.5]
    d = records[records["op"] == "dispatch"].set_index("rank")
    assert d.loc[0, "wait_s"] == pytest.approx(2.0) and d.loc[1, "wait_s"] == 0.0
    assert d.loc[0, "start_s"] == pytest.approx(1.0) and d.loc[0, "end_s"] == pytest.approx(3.5)
    with pytest.raises(ExecuteError, match="diverged"):
        assemble(lay, [timelines[0], timelines[1][:1]], [[10.0], [10.0]])


def test_compare_reads_both_sides_alike():
    lay = ParallelLayout(dp=2, ep=2)
    measured, m_steps = assemble(lay, [_timeline([0.0, 1.0], [1.0, 2.0])] * 2, [[0.0], [0.0]])
    predicted, p_steps = assemble(lay, [_timeline([0.0, 0.8], [0.8, 1.6])] * 2, [[0.0], [0.0]])
    assert phase_seconds(measured, [0], 2)["0:forward compute"] == pytest.approx(1.0)
    c = compare(predicted, p_steps, measured, m_steps, [0], 2)
    assert c.step_error_pct == pytest.approx(-20.0)
    row = c.table.set_index("phase").loc["forward dispatch"]
    assert row.predicted_s == pytest.approx(0.8) and row.error_pct == pytest.approx(-20.0)


def test_a_long_run_returns_every_step(tmp_path):
    """Rank 0's timings of 40 steps (about half a megabyte) come back whole: a pipe would have blocked it."""
    pytest.importorskip("torch")
    from moesim.execute.run import execute
    from moesim.sim.simulate import simulate

    sc = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    limits = ScaleLimits(hidden_size=32, head_dim=16, num_layers=2, num_experts=4, ffn_size=32, vocab_size=64,
                         seq_len=16, num_micro_batches=2)
    scaled = scale_plan(sc, 2, CPU, steps=40, limits=limits).scenario
    routing = []
    simulate(scaled, routing_log=routing)
    run = execute(scaled, routing, timeout_s=120)
    assert len(run.step_times_s) == 41 and set(run.records["step"]) == set(range(41))
    assert (run.step_times_s > 0).all()


def test_gpu_event_marks_resolve_onto_the_host_clock():
    from moesim.execute.train import Timeline

    class Mark:  # a CUDA event's interface: elapsed_time(other) in ms, from self to other
        def __init__(self, ms: float):
            self.ms = ms

        def elapsed_time(self, other: Mark) -> float:
            return other.ms - self.ms

    timeline = Timeline()
    timeline.add(0, 0, 0, Phase.FORWARD, OpKind.ATTENTION, 1.0, 2.0)  # an earlier step's seconds stay
    timeline.add(1, 0, 0, Phase.FORWARD, OpKind.EXPERT, Mark(105.0), Mark(112.5), 8.0, 3)
    timeline.add(1, -1, -1, Phase.STEP, OpKind.OPTIMIZER, 20.25, Mark(120.0))  # a host time beside a mark
    timeline.resolve(1, Mark(100.0), 50.0)
    assert timeline.rows[0][5:7] == (1.0, 2.0)
    assert timeline.rows[1] == (1, 0, 0, Phase.FORWARD.value, "expert", 50.005, 50.0125, 8.0, 3, "")
    assert timeline.rows[2][5:7] == (20.25, 50.02)


def test_scale_plan_keeps_expert_tensor_parallelism_beside_expert_parallelism():
    sc = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    plan = sc.replace(layout=ParallelLayout(tp=2, pp=1, dp=8, ep=4, etp=2))
    lay = scale_plan(plan, 4, CPU).scenario.layout
    assert (lay.tp, lay.dp, lay.ep, lay.etp) == (2, 2, 2, 2)
    wide = scale_plan(plan.replace(layout=ParallelLayout(tp=1, pp=1, dp=16, ep=2, etp=8)), 4, CPU)
    assert (wide.scenario.layout.ep, wide.scenario.layout.etp) == (2, 2)  # etp yields 2 ranks to ep
    gathered = scale_plan(plan.replace(comm=plan.comm.replace(dispatcher="allgather")), 4, CPU)
    assert gathered.scenario.layout.etp == 1
    said = "layout.etp: 2 -> 1 (expert tensor parallelism runs with the alltoall"
    assert any(c.startswith(said) for c in gathered.changes)
    flex = scale_plan(plan.replace(comm=plan.comm.replace(dispatcher="flex")), 4, CPU)  # flex runs, without etp
    assert flex.scenario.comm.dispatcher.value == "flex" and flex.scenario.layout.etp == 1
    assert any(c.startswith(said) for c in flex.changes) and not any("comm.dispatcher" in c for c in flex.changes)


def test_scale_plan_keeps_interleaved_stages_growing_the_layers():
    sc = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    plan = sc.replace(layout=ParallelLayout(tp=2, pp=2, dp=4, ep=8, vpp=4))
    scaled = scale_plan(plan, 2, CPU)
    lay, m = scaled.scenario.layout, scaled.scenario.model
    assert (lay.pp, lay.vpp, m.num_layers) == (2, 2, 4)  # at most 2 chunks beyond the 2-layer limit
    assert any(c.startswith("layout.vpp: 4 -> 2") for c in scaled.changes)
    one_stage = scale_plan(plan, 1, CPU).scenario
    assert (one_stage.layout.pp, one_stage.layout.vpp, one_stage.model.num_layers) == (1, 1, 2)


def test_scale_plan_keeps_eplbs_share_of_redundant_experts():
    from moesim.loader import load_scenarios

    _, points = load_scenarios(ROOT / "scenarios" / "placement-compare.yaml")
    plan = next(sc for _, sc in points if sc.placement.policy.value == "eplb")
    scaled = scale_plan(plan, 8, CPU)  # 64 experts on ep 16 with 32 redundant: half a copy per expert
    said = [c for c in scaled.changes if c.startswith("placement.eplb.redundant_experts")]
    assert said == ["placement.eplb.redundant_experts: 32 -> 8 (the plan's proportion of the experts (4), rounded "
                    "to a multiple of the 8 EP ranks (at least 8) within the slots)"]


@pytest.mark.parametrize("user_value", [None, "glibc.malloc.arena_max=2"])
def test_spawned_cpu_ranks_keep_freed_memory_mapped_and_the_parent_env_is_put_back(monkeypatch, user_value):
    """gloo ranks start with CPU_RANK_MALLOC (or the user's own GLIBC_TUNABLES); this process's env is unchanged."""
    import os

    import torch.multiprocessing as mp

    from moesim.execute import run as run_mod

    seen = {}

    class Started(Exception):
        pass

    def fake_start(*args, **kwargs):
        seen["tunables"] = os.environ.get("GLIBC_TUNABLES")
        raise Started

    if user_value is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", user_value)
    monkeypatch.setattr(mp, "start_processes", fake_start)
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.36")
    sc = scenario(nodes=1, gpus_per_node=2, layout=ParallelLayout(tp=1, pp=1, dp=2, ep=2))
    with pytest.raises(Started):
        run_mod._spawn(sc, [], "gloo", 1, 10.0, None, "unused")
    assert seen["tunables"] == (user_value or run_mod.CPU_RANK_MALLOC)
    assert os.environ.get("GLIBC_TUNABLES") == user_value


def test_rank_env_sets_the_allocator_for_gloo_ranks_on_a_glibc_that_takes_it(monkeypatch):
    import os

    from moesim.execute.run import CPU_RANK_MALLOC, rank_env

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for version, backend, expected in (("glibc 2.36", "gloo", {"GLIBC_TUNABLES": CPU_RANK_MALLOC}),
                                       ("glibc 2.40", "gloo", {"GLIBC_TUNABLES": CPU_RANK_MALLOC}),
                                       ("glibc 2.35", "gloo", {}), ("glibc 2.36", "nccl", {})):
        monkeypatch.setattr(os, "confstr", lambda name, v=version: v)
        assert rank_env(backend) == expected, (version, backend)

    def no_glibc(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(os, "confstr", no_glibc)
    assert rank_env("gloo") == {}
