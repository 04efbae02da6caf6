"""moesim plan: the closed-form screen against the simulator, the planner's choice against simulating every
candidate, pruning reasons, ranking over routing conditions, and the runnable plan it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.cli import main
from moesim.loader import load_scenario
from moesim.metrics.predict import predict
from moesim.network import build_network
from moesim.plan.estimate import estimate
from moesim.plan.run import Prediction, plan, score, screen
from moesim.plan.space import uneven_split
from moesim.spec import ParallelLayout
from moesim.spec.errors import SpecError
from moesim.spec.plan import PlanSpec, RankBy
from moesim.spec.simulation import RoutingDraws

from helpers import scenario, tiny_model

SMALL = """
name: small-plan
cluster: {profile: dgx-h100, nodes: 2}
model: {preset: mixtral-8x7b, num_layers: 4}
training: {global_batch_size: 32, seq_len: 2048, micro_batch_size: 1}
layout: {tp: 1, pp: 1, dp: 16, ep: 8}
routing: {preset: balanced}
simulation: {routing_draws: expected}
plan: {tp: [1, 2, 4], pp: [1, 2], ep: [2, 4, 8], micro_batch_size: [1], recompute: [none], moe_a2a_overlap: [false],
       routing: [balanced], shortlist: 3, steps: 1}
"""


CASES = {  # name -> (nodes, GPUs per node, layout, comm, tiny-model overrides)
    "pp2": (1, 8, ParallelLayout(tp=1, pp=2, dp=4, ep=4), {}, {}),
    "tp2-pp2": (1, 8, ParallelLayout(tp=2, pp=2, dp=2, ep=4), {}, {}),
    "ep8": (1, 8, ParallelLayout(tp=1, pp=1, dp=8, ep=8), {}, {}),
    "pp4": (1, 8, ParallelLayout(tp=1, pp=4, dp=2, ep=2), {}, {}),
    "vpp2": (1, 8, ParallelLayout(tp=2, pp=2, dp=2, ep=4, vpp=2), {}, {}),
    "2-nodes-pp4-a2a-overlap": (2, 8, ParallelLayout(tp=1, pp=4, dp=4, ep=4), dict(moe_a2a_overlap=True), {}),
    "2-nodes-flex-ep16": (2, 8, ParallelLayout(tp=1, pp=1, dp=16, ep=16), dict(dispatcher="flex"),
                          dict(num_experts=16)),
    "2-nodes-tp-pp-dp-order": (2, 8, ParallelLayout(tp=2, pp=2, dp=4, ep=2, order="tp-cp-ep-pp-dp"), {}, {}),
    "uneven-1-2-2-1": (1, 8, ParallelLayout(tp=1, pp=4, dp=2, ep=2, first_stage_layers=1, last_stage_layers=1),
                       {}, dict(num_layers=6)),
    "cp2-vpp2-2-nodes": (2, 8, ParallelLayout(tp=2, cp=2, pp=2, dp=2, ep=4, vpp=2), {}, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_estimate_is_within_10_percent_of_the_simulation_on_balanced_routing(name):
    nodes, gpn, layout, comm, model = CASES[name]
    sc = scenario(nodes=nodes, gpus_per_node=gpn, layout=layout, model=tiny_model(**model), global_batch=32,
                  seq_len=1024, steps=1)
    sc = sc.replace(simulation=sc.simulation.replace(routing_draws=RoutingDraws.EXPECTED),
                    comm=sc.comm.replace(**comm))
    est = estimate(sc, build_network(sc.cluster, sc.network))
    simulated = predict(sc).step_s
    assert est.step_s == pytest.approx(simulated, rel=0.10)


def test_the_planners_first_choice_is_within_3_percent_of_the_best_simulated_candidate(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    sc = load_scenario(path)
    result = plan(sc)
    every = [predict(s.candidate.scenario).step_s for s in result.screened if not s.reason]
    assert len(every) >= 5  # the test is not vacuous: several layouts fit
    assert result.winner.score_s <= 1.03 * min(every)


def test_pruned_candidates_keep_their_reason():
    sc = scenario(nodes=2, gpus_per_node=8, layout=ParallelLayout(tp=1, pp=1, dp=16, ep=8), global_batch=32)
    spec = PlanSpec(tp=(16, 3, 1), pp=(1,), ep=(8, 32), micro_batch_size=(1,), recompute=(sc.training.recompute,),
                    moe_a2a_overlap=(False,), uneven_stages=(False,))
    reasons = {(s.candidate.values["tp"], s.candidate.values["ep"]): s.reason for s in screen(sc, spec)}
    assert reasons[(16, 8)] == "tp 16 / etp 1 > 8 GPUs per node (tensor parallelism stays inside a node)"
    assert reasons[(3, 8)] == "tp x cp x pp = 3 does not divide the 16 GPUs"
    assert reasons[(1, 32)] == "layout.ep: got 32; expected ep x etp (32 x 1) must divide tp x cp x dp (16)"
    assert reasons[(1, 8)] == ""


def test_what_megatron_refuses_is_pruned_and_bad_plan_lists_are_one_line():
    sc = scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4))
    spec = PlanSpec(tp=(1,), pp=(2,), ep=(4,), micro_batch_size=(1,), recompute=(sc.training.recompute,),
                    moe_a2a_overlap=(True,), uneven_stages=(False,))
    (only,) = screen(sc, spec)
    assert only.reason.startswith("--overlap-moe-expert-parallel-comm with pipeline parallelism without virtual "
                                  "stages: Megatron-LM refuses it")
    for bad, expected in (({"tp": ()}, "a non-empty list"), ({"tp": (1, 1)}, "each value once")):
        with pytest.raises(SpecError) as err:
            PlanSpec(**bad)
        assert err.value.one_line().startswith("tp: got") and expected in err.value.one_line()


def test_a_layout_that_does_not_fit_is_pruned_with_its_numbers():
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")
    spec = PlanSpec(tp=(1,), pp=(1,), ep=(1,), micro_batch_size=(1,), recompute=(sc.training.recompute,),
                    moe_a2a_overlap=(False,), distributed_optimizer=(False,), uneven_stages=(False,))
    (only,) = screen(sc, spec)
    assert only.reason.startswith("does not fit: ") and " GiB on stage 0" in only.reason


def test_uneven_stages_split_what_pp_does_not_divide():
    assert uneven_split(61, 16) == (3, 2)  # DeepSeek-V3 as DGX Cloud runs it: 3, 14 x 4, 2
    assert uneven_split(94, 8) == (11, 11)  # Qwen3-235B-A22B: 11, 6 x 12, 11
    assert uneven_split(61, 2) == (31, 30)
    assert uneven_split(64, 8) == (None, None)  # the even split
    sc = scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4))
    spec = PlanSpec(tp=(1,), pp=(2,), ep=(4,), micro_batch_size=(1,), recompute=(sc.training.recompute,),
                    moe_a2a_overlap=(False,), uneven_stages=(True,))
    (only,) = screen(sc, spec)
    assert only.reason == "uneven stages: pp 2 divides the 4 layers (the even split is the candidate)"


def test_the_short_list_tries_eplb_with_redundant_slots_and_capacity_factors(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.replace("routing: [balanced], shortlist: 3", "routing: [balanced], shortlist: 1,\n"
                                  "       placement: [static, eplb], redundant_experts: [0, 8], "
                                  "capacity_factor: [null, 1.25]"), encoding="utf-8")
    result = plan(load_scenario(path))
    choices = {(e.placement.value, e.redundant_experts, e.capacity_factor) for e in result.shortlist}
    assert choices == {(p, r, cf) for p, r in (("static", 0), ("eplb", 0), ("eplb", 8)) for cf in (None, 1.25)}
    eplb = next(e for e in result.shortlist if e.redundant_experts == 8)
    ep = eplb.scenario.layout.ep
    slots = 8 // ep + -(-8 // ep)
    assert eplb.scenario.placement.slots_per_gpu == slots
    assert eplb.scenario.placement.params.redundant_experts == slots * ep - 8  # the spare slots are used
    assert eplb.scenario.simulation.warmup_steps == 1  # measured after a rebalance


def test_skew_levels_are_routing_conditions_and_skew_slows_the_short_list(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.replace("routing: [balanced], shortlist: 3", "routing: [balanced, 'zipf:1.5'], shortlist: 2"),
                    encoding="utf-8")
    result = plan(load_scenario(path))
    for e in result.shortlist:
        assert list(e.predictions) == ["balanced", "zipf:1.5"]
        assert e.predictions["zipf:1.5"].step_s > e.predictions["balanced"].step_s
        assert any(line.startswith("routing: balanced") for line in e.explanation)
    with pytest.raises(SpecError) as err:
        PlanSpec(routing=("zipf:abc",))
    assert "zipf:S" in err.value.one_line()


def test_rank_by_mean_p95_or_worst_over_routing_conditions():
    preds = {"a": Prediction(1.0, 1.5, {}, 0.0, 1.0, 1, (1,)), "b": Prediction(2.0, 2.1, {}, 0.0, 1.0, 1, (1,))}
    assert score(preds, RankBy.MEAN) == 1.5
    assert score(preds, RankBy.WORST) == 2.0
    assert score(preds, RankBy.P95) == 2.1


def test_the_cli_writes_a_plan_that_moesim_run_reproduces(tmp_path, capsys):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["plan", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "wrote 6 files" in printed
    assert {p.name for p in out.iterdir()} == {"candidates.parquet", "shortlist.md", "plan.yaml", "megatron_args.txt",
                                               "deepspeed_moe.json", "pareto.png"}
    assert "--expert-model-parallel-size" in (out / "megatron_args.txt").read_text(encoding="utf-8")
    assert main(["plan", str(path), "--out", str(out)]) == 2  # no overwrite without --force
    assert "--force" in capsys.readouterr().err
    assert main(["plan", str(path), "--out", str(out / "plan.yaml")]) == 2  # a file is no output directory
    assert "not a file" in capsys.readouterr().err
    plan_doc = yaml.safe_load((out / "plan.yaml").read_text(encoding="utf-8"))
    assert "plan" not in plan_doc
    rerun = predict(load_scenario(out / "plan.yaml"))
    winner_s = float((out / "shortlist.md").read_text().split("| 1 |")[1].split("|")[4])
    assert rerun.step_s == pytest.approx(winner_s, abs=1e-3)
