"""The dashboard's tables (moesim.metrics.views): they re-express what the simulator recorded and agree with the
summary's numbers."""

import numpy as np
import pytest

from helpers import scenario
from moesim.metrics.summary import balance_ratio_per_step, summarize
from moesim.metrics.views import ExpertLoadLog, a2a_pairs, gpu_expert_rows, step_timeline
from moesim.sim.simulate import simulate
from moesim.spec import ParallelLayout
from moesim.spec.simulation import RecordDetail


@pytest.fixture(scope="module")
def run():
    # two nodes of 4 GPUs, one EP group of 8 across both: the matrix has NVLink and NIC pairs
    sc = scenario(nodes=2, gpus_per_node=4, layout=ParallelLayout(tp=1, pp=1, dp=8, ep=8), zipf_s=1.0, steps=3)
    sc = sc.model_copy(update={"simulation": sc.simulation.replace(warmup_steps=1)})
    log = ExpertLoadLog(sc)
    result = simulate(sc, routing_log=log)
    return result, summarize(result), log.table()


def test_expert_loads_are_the_routed_assignments(run):
    result, summary, loads = run
    sc = result.scenario
    assert list(loads.columns) == ["layer", "expert", "assignments_per_step"]
    assert len(loads) == len(result.moe_layers) * sc.model.num_experts
    # every token of the stage makes top_k assignments per micro-batch, wherever they go
    per_layer = loads.groupby("layer")["assignments_per_step"].sum()
    expected = sc.tokens_routed_per_rank * sc.layout.ranks_per_stage * sc.model.top_k * sc.num_micro_batches
    np.testing.assert_allclose(per_layer.to_numpy(), expected)
    # zipf 1.0: the hottest expert gets far more than the mean, as the summary's ratio says (per micro-batch there)
    by_layer = loads.pivot(index="layer", columns="expert", values="assignments_per_step").to_numpy()
    assert (by_layer.max(1) / by_layer.mean(1)).mean() > 1.5
    assert summary.expert_load_max_over_mean > 1.5


def test_warmup_steps_are_left_out():
    sc = scenario(zipf_s=1.0, steps=2)
    warm = sc.model_copy(update={"simulation": sc.simulation.replace(warmup_steps=2)})
    cold_log, warm_log = ExpertLoadLog(sc), ExpertLoadLog(warm)
    simulate(sc, routing_log=cold_log)
    simulate(warm, routing_log=warm_log)
    # the same per-step total either way: the warm-up steps are neither summed nor counted
    np.testing.assert_allclose(cold_log.table()["assignments_per_step"].sum(),
                               warm_log.table()["assignments_per_step"].sum())


def test_gpu_rows_match_the_balance_ratio_direction(run):
    result, summary, _ = run
    rows = gpu_expert_rows(result)
    assert rows.index.tolist() == list(range(result.scenario.layout.world_size))
    assert (rows > 0).all()
    assert rows.max() / rows.mean() > 1.0
    ratios = balance_ratio_per_step(result)
    assert ratios.index.tolist() == result.measured_steps.tolist()
    assert ratios.mean() == pytest.approx(summary.placement.balance_ratio_mean)


def test_a2a_pairs_tiers(run):
    result, summary, _ = run
    pairs = a2a_pairs(result)
    one = pairs[pairs["layer"] == result.moe_layers[0]]
    assert len(one) == 8 * 8
    assert set(one.loc[one["src"] == one["dst"], "link"]) == {"local"}
    same_node = (one["src_gpu"] // 4 == one["dst_gpu"] // 4) & (one["src"] != one["dst"])
    assert set(one.loc[same_node, "link"]) == {"nvlink"}
    assert set(one.loc[~same_node & (one["src"] != one["dst"]), "link"]) == {"nic"}
    np.testing.assert_allclose(one["bytes"].to_numpy(), result.a2a_matrices[0].ravel())


def test_step_timeline(run):
    result, _, _ = run
    step = int(result.measured_steps[0])
    ops = step_timeline(result, step, [0, 5])
    assert set(ops["rank"]) == {0, 5}
    assert (ops["end_s"] >= ops["start_s"]).all()
    assert ops["end_s"].max() <= result.step_times_s[step] + 1e-12
    assert ops["bucket"].notna().all() and "all_to_all" in set(ops["bucket"])
    summed = scenario(steps=1)
    summed = summed.model_copy(update={"simulation": summed.simulation.replace(records=RecordDetail.PER_RANK)})
    with pytest.raises(ValueError, match="records: full"):
        step_timeline(simulate(summed), 0)
