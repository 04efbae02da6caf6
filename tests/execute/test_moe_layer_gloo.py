"""moesim.execute.moe_layer on 2 and 4 gloo CPU ranks against the single-process reference."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from execute.gloo_ranks import run_ranks

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("moe_gloo_worker.py")
TIMEOUT_S = 30


def _worker_module():
    spec = importlib.util.spec_from_file_location("moe_gloo_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_ranks(world: int, out_dir: Path) -> list[dict]:
    return run_ranks(WORKER, world, [], out_dir, TIMEOUT_S)


def _reference(mod, name: str, world: int) -> dict:
    from moesim.execute.moe_layer import moe_layer_reference

    c = mod.make_case(name, world)
    leaves = {k: c[k].clone().requires_grad_(True) for k in ("x", "w_router", "w_gate", "w_up", "w_down")}
    y = moe_layer_reference(leaves["x"], leaves["w_router"], leaves["w_gate"], leaves["w_up"], leaves["w_down"],
                            mod.TOP_K, c["expert_ids"])
    y.backward(c["grad_y"])
    return {"y": y.detach(), **{f"{k}_grad": v.grad for k, v in leaves.items()}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each world size runs once (all cases in one process group); the tests below only compare."""
    cache = {}

    def get(world: int):
        if world not in cache:  # a failed run is cached too: the other cases fail at once instead of rerunning it
            try:
                cache[world] = _run_ranks(world, tmp_path_factory.mktemp(f"ep{world}"))
            except BaseException as exc:
                cache[world] = exc
                raise
        if isinstance(cache[world], BaseException):
            pytest.fail(f"the {world}-rank run failed: {cache[world]!r}")
        return cache[world]
    return get


def _check(runs, name: str, world: int):
    mod = _worker_module()
    shards = [r[name] for r in runs(world)]
    ref = _reference(mod, name, world)
    close = {"rtol": 1e-5, "atol": 1e-6}
    for key in ("y", "x_grad", "w_gate_grad", "w_up_grad", "w_down_grad"):
        got = torch.cat([s[key] for s in shards])  # tokens and experts are both sharded in rank order
        torch.testing.assert_close(got, ref[key], **close, msg=lambda m, key=key: f"{name} {key}: {m}")
    for r, s in enumerate(shards):  # replicated router: every rank holds the all-reduced gradient
        torch.testing.assert_close(s["w_router_grad"], ref["w_router_grad"], **close,
                                   msg=lambda m, r=r: f"{name} w_router_grad rank {r}: {m}")
    # the exchange was what the case says: splits match between senders and receivers
    for dst in range(world):
        assert shards[dst]["recv_splits"] == [shards[src]["send_splits"][dst] for src in range(world)]
    return shards


@pytest.mark.parametrize("name", ["router", "skewed", "zero_rows"])
def test_two_ranks_match_reference(runs, name):
    shards = _check(runs, name, 2)
    received = [sum(s["recv_splits"]) for s in shards]
    if name == "skewed":
        assert received[0] > 3 * received[1] > 0
    if name == "zero_rows":
        assert received[1] == 0 and received[0] == 2 * shards[0]["y"].shape[0] * 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="4 gloo ranks need at least 2 cores to finish quickly")
@pytest.mark.parametrize("name", ["router", "skewed", "zero_rows"])
def test_four_ranks_match_reference(runs, name):
    shards = _check(runs, name, 4)
    if name == "zero_rows":
        assert [sum(s["recv_splits"]) for s in shards][1:] == [0, 0, 0]
