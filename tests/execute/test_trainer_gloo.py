"""The executed model (moesim.execute.train) on 2 and 4 gloo ranks against its single-process reference
(moesim.execute.reference): every gradient after the all-reduces, and the losses, on routing that drops
(capacity factor 1.0 under skew), pads (pad_to_capacity) and leaves experts without rows."""

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


def _case(world: int, ep: int, pad: bool, pp: int = 1, tp: int = 1, dispatcher: str = "alltoall"):
    from moesim.execute.scale import ScaleLimits, scale_plan
    from moesim.io.profile import load_profile, resolve_profile
    from moesim.loader import load_scenario
    from moesim.sim.simulate import simulate
    from moesim.spec.layout import ParallelLayout
    from moesim.spec.routing import RoutingSpec

    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "deepseek-v3-256.yaml")
    sc = sc.replace(routing=RoutingSpec(distribution="zipf", zipf_s=1.2),
                    gate=sc.gate.replace(capacity_factor=1.0, pad_to_capacity=pad))
    limits = ScaleLimits(hidden_size=32, head_dim=16, num_layers=4 if pp > 1 else 3, num_experts=8, ffn_size=32,
                         vocab_size=64, seq_len=16)
    scaled = scale_plan(sc, world, load_profile(resolve_profile("cpu-gloo-2c")), steps=1, limits=limits).scenario
    dp = world // (pp * tp)  # the layout under test, whatever scale_plan would pick
    scaled = scaled.replace(layout=ParallelLayout(tp=tp, pp=pp, dp=dp, ep=ep), comm=scaled.comm.replace(
                                dispatcher=dispatcher),
                            training=scaled.training.replace(global_batch_size=dp * scaled.num_micro_batches))
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
])
def test_ranks_match_single_process_reference(tmp_path, world, ep, pad, pp, tp, dispatcher):
    if world == 4 and (os.cpu_count() or 1) < 2:
        pytest.skip("4 gloo ranks need at least 2 cores to finish quickly")
    from moesim.execute.reference import reference_step

    sc, routing = _case(world, ep, pad, pp, tp, dispatcher)
    assert (sc.layout.ep, sc.layout.pp, sc.layout.tp) == (ep, pp, tp) and sc.layout.edp == world // pp // ep
    assert sc.model.num_shared_experts == 1 and sc.model.first_k_dense == 1  # a dense layer and a shared expert
    step0 = [r for r in routing if r.step == 0]
    dropped = sum(float((r.loads - np.minimum(r.loads, r.sent)).sum()) for r in step0)
    assert dropped > 0, "the case must drop assignments"
    if pad:
        assert any((r.sent > np.minimum(r.loads, r.sent)).any() for r in step0), "the case must pad"
    case = tmp_path / "case.pkl"
    case.write_bytes(pickle.dumps((sc, routing)))
    ranks = run_ranks(WORKER, world, [str(case)], tmp_path, TIMEOUT_S)
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
    for stage in range(pp):  # every local expert's gradients, on the stage holding its layer
        rank = stage * (world // pp)
        dense = sum(not sc.model.is_moe_layer(layer) for layer in sc.stage_layers(stage))
        # TP slices: QKV and the output projection of every layer, the three FFN weights of a dense one
        assert len(ranks[rank]["shards"]) == (2 * len(sc.stage_layers(stage)) + 3 * dense if tp > 1 else 0)
        moe = sum(1 for layer in sc.stage_layers(stage) if sc.model.is_moe_layer(layer))
        assert sum(1 for name in ranks[rank]["grads"] if ".expert" in name) == 3 * (sc.model.num_experts // ep) * moe
    names = {name for r in ranks for name in r["grads"]}
    assert names == {name for name, t in params.items() if isinstance(t, torch.Tensor) and t.grad is not None
                     and (".expert" not in name or any(name in r["grads"] for r in ranks))}
    assert checked == sum(len(r["grads"]) for r in ranks)
