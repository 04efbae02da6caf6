"""The executed model (moesim.execute.train) on 2 and 4 gloo ranks against its single-process reference
(moesim.execute.reference): every gradient after the all-reduces, and the losses, on routing that drops
(capacity factor 1.0 under skew), pads (pad_to_capacity) and leaves experts without rows; with placements that
replicate (EPLB), shadow (FasterMoE) and migrate experts (SmartMoE, FlexMoE, EPLB) over several steps."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from execute.gloo_ranks import run_ranks  # noqa: E402

WORKER = Path(__file__).with_name("trainer_gloo_worker.py")
TIMEOUT_S = 60


def _case(world: int, ep: int, pad: bool, pp: int = 1, tp: int = 1, dispatcher: str = "alltoall",
          placement=None, steps: int = 1, capacity_factor: float | None = 1.0, etp: int = 1,
          distributed: bool = False, vpp: int = 1):
    from moesim.execute.scale import ScaleLimits, scale_plan
    from moesim.io.profile import load_profile, resolve_profile
    from moesim.loader import load_scenario
    from moesim.sim.simulate import simulate
    from moesim.spec.layout import ParallelLayout
    from moesim.spec.routing import RoutingSpec

    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "deepseek-v3-256.yaml")
    sc = sc.replace(routing=RoutingSpec(distribution="zipf", zipf_s=1.2),
                    gate=sc.gate.replace(capacity_factor=capacity_factor, pad_to_capacity=pad))
    limits = ScaleLimits(hidden_size=32, head_dim=16, num_layers=4 if pp > 1 else 3, num_experts=8, ffn_size=32,
                         vocab_size=64, seq_len=16)
    scaled = scale_plan(sc, world, load_profile(resolve_profile("cpu-gloo-2c")), steps=steps, limits=limits).scenario
    dp = world // (pp * tp)  # the layout under test, whatever scale_plan would pick
    scaled = scaled.replace(layout=ParallelLayout(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, vpp=vpp),
                            comm=scaled.comm.replace(dispatcher=dispatcher),
                            training=scaled.training.replace(
                                global_batch_size=dp * scaled.num_micro_batches,
                                # the reference tests read every gradient after the reduction: all-reduced
                                optimizer=scaled.training.optimizer.replace(distributed=distributed)))
    if placement is not None:
        scaled = scaled.replace(placement=placement)
    routing = []
    simulate(scaled, routing_log=routing)
    return scaled, routing


@pytest.mark.parametrize(("world", "ep", "pad", "pp", "tp", "dispatcher"), [
    (2, 2, False, 1, 1, "alltoall"), (2, 1, False, 1, 1, "alltoall"),  # data and expert parallel
    (4, 2, True, 1, 1, "alltoall"),
    (2, 1, False, 2, 1, "alltoall"), (4, 2, False, 2, 1, "alltoall"),  # pipeline stages
    (2, 2, False, 1, 2, "alltoall"), (4, 2, True, 2, 2, "alltoall"),  # tensor (sequence) parallel; with stages
    (2, 2, False, 1, 1, "allgather"), (4, 2, True, 1, 1, "allgather"),  # Megatron's allgather dispatcher
    (4, 2, True, 2, 2, "allgather"),
    (2, 2, False, 1, 1, "flex"), (4, 2, True, 1, 1, "flex"),  # DeepEP inside a node: a row per (token, rank)
    (2, 2, False, 1, 2, "flex"),
])
def test_ranks_match_single_process_reference(tmp_path, world, ep, pad, pp, tp, dispatcher):
    sc, routing = _case(world, ep, pad, pp, tp, dispatcher)
    assert (sc.layout.ep, sc.layout.pp, sc.layout.tp) == (ep, pp, tp)
    assert dispatcher != "flex" or _flex_merges_choices(sc, routing), "the case must send a token once for two choices"
    ranks = _check_against_reference(tmp_path, sc, routing)
    for stage in range(pp):  # every local expert's gradients, on the stage holding its layer
        rank = stage * (world // pp)
        dense = sum(not sc.model.is_moe_layer(layer) for layer in sc.stage_layers(stage))
        # TP slices: QKV and the output projection of every layer, the three FFN weights of a dense one
        assert len(ranks[rank]["shards"]) == (2 * len(sc.stage_layers(stage)) + 3 * dense if tp > 1 else 0)
        moe = sum(1 for layer in sc.stage_layers(stage) if sc.model.is_moe_layer(layer))
        assert sum(1 for name in ranks[rank]["grads"] if ".expert" in name) == 3 * (sc.model.num_experts // ep) * moe


def _flex_merges_choices(sc, routing) -> bool:
    """Whether in step 0 some source's token keeps two choices on one EP rank, which the flex dispatcher sends
    there as one row (the alltoall dispatcher as two)."""
    from moesim.execute.routing_plan import flex_routing, group_slots, rank_routing

    lay, k = sc.layout, sc.model.top_k
    for r in (r for r in routing if r.step == 0):
        slots = group_slots(r.placement, sc.model.num_experts, lay.ep)
        for index, members in enumerate(lay.ep_groups()[sc.stage_of_layer(r.layer)].reshape(-1, lay.ep)):
            sources = members % lay.ranks_per_stage
            for mb in range(sc.num_micro_batches):
                rrs = [rank_routing(r.loads[mb], r.sent[mb], r.computed[mb, index], sources, j, k, slots)
                       for j in range(lay.ep)]
                if any(sum(flex_routing(rrs, j, k).send_splits) < int((rr.send_slots >= 0).sum())
                       for j, rr in enumerate(rrs)):
                    return True
    return False


def _eplb(redundant: int = 4, period: int = 1):
    from moesim.spec.placement import PlacementSpec
    from moesim.spec.placement_params import EplbParams

    return PlacementSpec(policy="eplb", slots_per_gpu=6,
                         params=EplbParams(redundant_experts=redundant, period_steps=period, history_steps=1))


def _fastermoe():
    from moesim.spec.placement import PlacementSpec
    from moesim.spec.placement_params import FasterMoeParams

    return PlacementSpec(policy="fastermoe", params=FasterMoeParams(shadowing=True))


@pytest.mark.parametrize(("world", "ep", "tp"), [(2, 1, 1), (4, 2, 1), (4, 1, 2)])
def test_interleaved_stages_match_the_reference(tmp_path, world, ep, tp):
    """Megatron's interleaved 1F1B: 2 stages of 2 model chunks each (4 layers, one per chunk), in the simulator's
    own schedule order; every message tagged with its micro-batch and virtual stage."""
    sc, routing = _case(world, ep, False, pp=2, tp=tp, vpp=2)
    assert (sc.layout.pp, sc.layout.vpp, sc.model.num_layers) == (2, 2, 4)
    assert list(sc.chunk_layers(0, 1)) == [2]  # stage 0 holds layers 0 and 2
    _check_against_reference(tmp_path, sc, routing)


@pytest.mark.parametrize(("world", "ep", "placement", "dispatcher"), [
    (2, 2, "eplb", "alltoall"), (4, 2, "eplb", "alltoall"), (2, 2, "eplb", "allgather"),
    (2, 2, "fastermoe", "alltoall"), (4, 2, "fastermoe", "allgather"), (2, 2, "eplb", "flex"),
])
def test_replicas_and_shadows_match_the_reference(tmp_path, world, ep, placement, dispatcher):
    """Replicated experts split a source's rows over their copies and sum their gradients over the copies;
    shadows get the owner's weights and give their gradients back: each owner's gradients equal the reference's."""
    import dataclasses

    sc, routing = _case(world, ep, True, dispatcher=dispatcher, steps=2,
                        placement=_eplb() if placement == "eplb" else _fastermoe())
    # EPLB's first placement has no statistics (each rank doubles its own experts): step 1's is the test, run
    # as the step the ranks start at
    routing = [dataclasses.replace(r, step=0) for r in routing if r.step == 1]
    E = sc.model.num_experts
    if placement == "eplb":
        assert all((r.placement.holders(E).sum(1) > 1).any() for r in routing), "the case must replicate across ranks"
    else:
        assert any(r.placement.transient.any() for r in routing), "the case must shadow"
    assert dispatcher != "flex" or _flex_merges_choices(sc, routing), "the case must send a token once for two choices"
    ranks = _check_against_reference(tmp_path, sc, routing)
    held = sum(sum(1 for name in r["grads"] if ".expert" in name) for r in ranks)
    if placement == "eplb":  # every persistent copy has its gradients
        assert held == 3 * sum(int(r.placement.holders(E).sum()) for r in routing) * (world // ep)
    else:  # the shadows are gone after the step: each rank reports what it owns
        assert held == 3 * E * (world // ep) * len(routing)


@pytest.mark.parametrize(("world", "ep", "etp", "tp", "placement"), [
    (2, 1, 2, 1, None), (4, 2, 2, 1, None), (4, 2, 2, 2, None), (4, 2, 2, 1, "eplb"),
])
def test_expert_tensor_parallel_shards_match_the_reference(tmp_path, world, ep, etp, tp, placement):
    """Expert tensor parallelism (Megatron's alltoall dispatcher): the ETP group all-gathers what its dispatches
    received, each member computes its shard of the experts' columns, the partial outputs are reduce-scattered;
    each shard's gradients are its slice of the reference's (with replicas too)."""
    import dataclasses

    sc, routing = _case(world, ep, True, tp=tp, etp=etp, steps=2, placement=_eplb() if placement else None)
    assert (sc.layout.ep, sc.layout.etp, sc.layout.tp) == (ep, etp, tp)
    routing = [dataclasses.replace(r, step=0) for r in routing if r.step == 1]
    ranks = _check_against_reference(tmp_path, sc, routing)
    assert all(any(".expert" in name for name in r["shards"]) for r in ranks)  # every rank holds shards


def test_triton_experts_match_the_reference(tmp_path):
    """The experts on moesim's Triton kernels (forward and backward; the interpreter here), with EPLB's replicas
    and capacity padding: the same gradients."""
    import dataclasses

    sc, routing = _case(2, 2, True, steps=2, placement=_eplb())
    _check_against_reference(tmp_path, sc, [dataclasses.replace(r, step=0) for r in routing if r.step == 1],
                             triton=True)


def _check_against_reference(tmp_path, sc, routing, triton: bool = False) -> list:
    """Run step 0 on the ranks (tests/execute/trainer_gloo_worker.py); every gradient and the losses equal the
    single-process reference's. Returns what the ranks saved."""
    world = sc.layout.world_size
    if world == 4 and (os.cpu_count() or 1) < 2:
        pytest.skip("4 gloo ranks need at least 2 cores to finish quickly")
    from moesim.execute.reference import reference_step

    lay, pad = sc.layout, sc.gate.pad_to_capacity
    assert lay.edp == world // lay.pp // lay.ep // lay.etp
    assert sc.model.num_shared_experts == 1 and sc.model.first_k_dense == 1  # a dense layer and a shared expert
    step0 = [r for r in routing if r.step == 0]
    dropped = sum(float((r.loads - np.minimum(r.loads, r.sent)).sum()) for r in step0)
    assert dropped > 0, "the case must drop assignments"
    if pad:
        assert any((r.sent > np.minimum(r.loads, r.sent)).any() for r in step0), "the case must pad"
    case = tmp_path / "case.pkl"
    case.write_bytes(pickle.dumps((sc, routing)))
    ranks = run_ranks(WORKER, world, [str(case)] + (["triton"] if triton else []), tmp_path, TIMEOUT_S)
    params, loss = reference_step(sc, routing, 0)
    close = {"rtol": 2e-4, "atol": 1e-6}
    # the ranks' mean losses, summed over micro-batches and ranks, are the reference's total
    assert sum(sum(r["losses"]) for r in ranks) == pytest.approx(float(loss.detach()), rel=1e-5)
    checked = 0
    for rank, r in enumerate(ranks):
        for name, grad in r["grads"].items():
            want = params[name].grad
            if name in r["shards"]:  # this TP rank's slice of the weight
                want = want.index_select(*r["shards"][name])
            torch.testing.assert_close(grad, want, **close,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank} {name}: {m}")
            checked += 1
    names = {name for r in ranks for name in r["grads"]}
    assert names == {name for name, t in params.items() if isinstance(t, torch.Tensor) and t.grad is not None
                     and (".expert" not in name or any(name in r["grads"] for r in ranks))}
    assert checked == sum(len(r["grads"]) for r in ranks)
    return ranks


def _moving(policy: str):
    from moesim.spec.placement import PlacementSpec
    from moesim.spec.placement_params import FlexMoeParams, SmartMoeParams

    if policy == "eplb":
        return _eplb(period=1)
    if policy == "smartmoe":
        return PlacementSpec(policy="smartmoe", params=SmartMoeParams(freq=1, history_steps=1))
    return PlacementSpec(policy="flexmoe", slots_per_gpu=6,
                         params=FlexMoeParams(threshold=1.0, horizon_steps=1000, history_steps=1))


def _train(tmp_path: Path, sc, routing) -> list:
    tmp_path.mkdir(parents=True, exist_ok=True)
    case = tmp_path / "case.pkl"
    case.write_bytes(pickle.dumps((sc, routing)))
    return run_ranks(WORKER, sc.layout.world_size, [str(case), "train"], tmp_path, TIMEOUT_S)


@pytest.mark.parametrize("policy", ["smartmoe", "flexmoe", "eplb"])
def test_migrating_experts_train_as_the_static_placement(tmp_path, policy):
    """Dropless routing keeps every assignment whatever the placement, so training with experts that move between
    steps (weights and Adam state sent to their new owners, replicas kept equal) gives the static placement's losses
    and weights; a lost Adam state or a stale replica would not."""
    static, static_routing = _case(2, 2, False, steps=3, capacity_factor=None)
    sc, routing = _case(2, 2, False, steps=3, capacity_factor=None, placement=_moving(policy))
    assert all(np.array_equal(a.loads, b.loads) for a, b in zip(routing, static_routing))
    E = sc.model.num_experts
    by_layer: dict[int, list] = {}
    for r in routing:
        by_layer.setdefault(r.layer, []).append(r.placement.holders(E))
    assert any(not np.array_equal(a, b) for h in by_layer.values() for a, b in zip(h, h[1:])), "experts must move"
    want = _train(tmp_path / "static", static, static_routing)
    got = _train(tmp_path / policy, sc, routing)
    assert "migration" in got[0]["ops"]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["losses"], w["losses"], rtol=1e-5)
    static_params = {name: t for r in want for name, t in r["params"].items()}
    for rank, r in enumerate(got):
        for name, t in r["params"].items():  # every copy of an expert, on every rank holding it
            torch.testing.assert_close(t, static_params[name], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank} {name}: {m}")


@pytest.mark.parametrize("world", [2, 4])
def test_the_distributed_optimizer_trains_as_the_replicated_one(tmp_path, world):
    """Megatron's distributed optimizer (gradients reduce-scattered, each rank's Adam on its shard of the flat
    parameters, shards all-gathered; dense over dp, experts over edp on 4 ranks) gives the losses and weights of
    every rank updating everything after an all-reduce."""
    plain, routing = _case(world, 2, False, steps=3)
    sharded, _ = _case(world, 2, False, steps=3, distributed=True)
    assert sharded.training.optimizer.distributed and not plain.training.optimizer.distributed
    want = _train(tmp_path / "plain", plain, routing)
    got = _train(tmp_path / "sharded", sharded, routing)
    for rank, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g["losses"], w["losses"], rtol=1e-5)
        for name, t in g["params"].items():
            torch.testing.assert_close(t, w["params"][name], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank} {name}: {m}")
    ops = got[0]["ops"]
    assert ops.count("dp_sync_dense") == 2 * 4  # reduce-scatter and all-gather in each of the 4 steps
