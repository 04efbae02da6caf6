"""FlexMoE (reconstruction), FasterMoE shadowing + topology gate, TA-MoE routing: invariants and decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from moesim.placement.base import (EMPTY, Placement, PlacementContext, ReplicaSplit, balance_ratio, contiguous,
                                   layer_time_s)
from moesim.placement.fastermoe import (FasterMoeParams, FasterMoePolicy, plan_shadows, shadow_placement,
                                        topology_gate)
from moesim.placement.flexmoe import FlexMoeParams, FlexMoePolicy, plan_moves
from moesim.placement.ta_moe import TaMoeParams, TaMoePolicy, intra_node_fraction, target_shares
from moesim.spec.errors import SpecError

NVLINK, NIC = 150e9, 25e9
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_ctx(nodes: int = 2, gpus_per_node: int = 4, experts: int = 16, slots: int | None = None, *,
             state_bytes: float = 100e6, weight_bytes: float = 12.6e6, row_bytes: float = 2048.0,
             row_compute_s: float = 1e-7) -> PlacementContext:
    G = nodes * gpus_per_node
    node = np.arange(G) // gpus_per_node
    bw = np.where(node[:, None] == node[None, :], NVLINK, NIC)
    np.fill_diagonal(bw, 10 * NVLINK)  # local copy
    return PlacementContext(num_experts=experts, num_ranks=G, slots_per_rank=slots or experts // G,
                            node_of_rank=node, bandwidth_bytes_per_s=bw, row_bytes=row_bytes,
                            expert_weight_bytes=weight_bytes, expert_state_bytes=state_bytes,
                            row_compute_s=row_compute_s)


def skewed_loads(ctx: PlacementContext, hot: int = 0, hot_share: float = 0.5, per_source: int = 8192,
                 micro_batches: int = 1) -> np.ndarray:
    """[M, G_src, E] integer-valued counts: `hot` takes hot_share of every source's assignments."""
    E = ctx.num_experts
    row = np.full(E, per_source * (1 - hot_share) / (E - 1))
    row[hot] = per_source * hot_share
    return np.broadcast_to(np.floor(row), (micro_batches, ctx.num_ranks, E)).astype(np.float64).copy()


def check_placement(p: Placement, ctx: PlacementContext, loads: np.ndarray, budget: int | None) -> None:
    p.validate(ctx.num_experts, budget)
    assert p.num_ranks == ctx.num_ranks
    assert np.isclose(p.rank_load(loads).sum(), loads.sum())  # no token lost or duplicated
    assert np.allclose(p.rank_rows(loads).sum(-1), loads.sum(-1))


def load_arrays(ctx: PlacementContext, max_m: int = 3):
    shape = st.tuples(st.integers(1, max_m), st.just(ctx.num_ranks), st.just(ctx.num_experts))
    return arrays(np.float64, shape, elements=st.integers(0, 2000).map(float))


# ----------------------------------------------------------------------------------------------------- FlexMoE

FLEX_CTX = make_ctx(slots=3)  # 8 ranks, 16 experts, 2 per rank + 1 spare slot


def test_flexmoe_params_validated():
    with pytest.raises(SpecError, match="threshold"):
        FlexMoeParams(threshold=0.9)
    with pytest.raises(SpecError, match="horizon_steps"):
        FlexMoeParams(horizon_steps=0)
    with pytest.raises(SpecError, match="history_steps"):
        FlexMoeParams(history_steps=0)


def test_flexmoe_initial_leaves_spare_slots_empty():
    p = FlexMoePolicy(FLEX_CTX).initial()
    assert p.slot_expert.shape == (8, 3)
    assert (p.slot_expert[:, 2] == EMPTY).all()
    assert p.split is ReplicaSplit.EVEN


def test_flexmoe_balanced_is_left_alone():
    cur = contiguous(16, 8, 3)
    loads = np.full((8, 16), 100.0)
    assert plan_moves(FLEX_CTX, cur, loads, FlexMoeParams()) is cur


def test_flexmoe_skew_replicates_the_hot_expert_and_balance_improves():
    cur = contiguous(16, 8, 3)
    loads = skewed_loads(FLEX_CTX)[0]
    new = plan_moves(FLEX_CTX, cur, loads, FlexMoeParams())
    new.validate(16, 3)
    assert new.replicas(16)[0] > 1
    assert balance_ratio(new.rank_load(loads)) < balance_ratio(cur.rank_load(loads))
    assert layer_time_s(FLEX_CTX, new, loads) < layer_time_s(FLEX_CTX, cur, loads)
    # the first expansion prefers hot's own node among equally loaded ranks (ranks 0..3 are node 0)
    first = np.argwhere((new.slot_expert == 0) & (cur.slot_expert != 0))
    assert FLEX_CTX.node_of_rank[first[:, 0]].min() == 0
    # per-expert vector input gives the same decision for an EVEN split
    assert np.array_equal(plan_moves(FLEX_CTX, cur, loads.sum(0), FlexMoeParams()).slot_expert, new.slot_expert)


def test_flexmoe_expensive_moves_are_refused():
    ctx = make_ctx(slots=3, state_bytes=1e15)
    cur = contiguous(16, 8, 3)
    assert plan_moves(ctx, cur, skewed_loads(ctx)[0], FlexMoeParams()) is cur


def test_flexmoe_max_moves_caps_the_plan():
    cur = contiguous(16, 8, 3)
    new = plan_moves(FLEX_CTX, cur, skewed_loads(FLEX_CTX)[0], FlexMoeParams(max_moves_per_step=1))
    assert (new.slot_expert != cur.slot_expert).sum() == 1


def test_flexmoe_shrinks_the_coldest_replica_when_no_slot_is_free():
    ctx = make_ctx(slots=2)
    cur = contiguous(16, 8)
    assert plan_moves(ctx, cur, skewed_loads(ctx)[0], FlexMoeParams()) is cur  # no spare slot, no replica: stuck
    ctx14 = make_ctx(experts=14, slots=2)  # 14 experts, 16 slots: 12 and 13 hold a second replica each
    cur = Placement(np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [13, 12]]))
    loads = skewed_loads(ctx14)[0]
    loads[:, 12] = 1.0  # 12 is the coldest replicated expert
    new = plan_moves(ctx14, cur, loads, FlexMoeParams(max_moves_per_step=1))
    new.validate(14, 2)
    assert new.replicas(14)[0] == 2 and new.replicas(14)[12] == 1 and new.replicas(14)[13] == 2


def test_flexmoe_policy_decides_from_history_only():
    pol = FlexMoePolicy(FLEX_CTX)
    cur = pol.initial()
    loads = skewed_loads(FLEX_CTX, micro_batches=2)
    assert pol.place(0, loads, cur) is cur and pol.accepted_changes == 0  # no history yet
    new = pol.place(1, loads, cur)
    assert not new.same_as(cur) and pol.accepted_changes == 1 and pol.last_moves
    assert all(m.expert == 0 for m in pol.last_moves)
    again = pol.place(2, loads, new)
    assert again is new and pol.accepted_changes == 1 and pol.last_moves == ()
    assert pol.route(loads, new) is loads


@SETTINGS
@given(data=st.data())
def test_flexmoe_invariants(data):
    ctx = FLEX_CTX
    pol = FlexMoePolicy(ctx, FlexMoeParams(threshold=1.05, history_steps=2))
    cur = pol.initial()
    for step in range(3):
        loads = data.draw(load_arrays(ctx))
        cur = pol.place(step, loads, cur)
        check_placement(cur, ctx, loads, ctx.slots_per_rank)
        assert cur.slot_expert.shape == (8, 3) and cur.split is ReplicaSplit.EVEN


# ---------------------------------------------------------------------------------------------------- FasterMoE

FAST_CTX = make_ctx()  # 8 ranks, 16 experts, 2 per rank, no spare slot


def test_fastermoe_params_validated():
    with pytest.raises(SpecError, match="outgoing_fraction"):
        FasterMoeParams(outgoing_fraction=1.5)
    with pytest.raises(SpecError, match="max_shadows"):
        FasterMoeParams(max_shadows=-1)


def test_fastermoe_shadows_a_dominant_expert_when_params_are_cheap():
    pol = FasterMoePolicy(FAST_CTX)
    base = pol.initial()
    loads = skewed_loads(FAST_CTX, hot=5, hot_share=0.6)
    p = pol.place(0, loads, base)
    assert pol.last_shadowed[0] == 5
    i = len(pol.last_shadowed)
    assert p.slot_expert.shape == (8, 2 + i) and p.split is ReplicaSplit.LOCAL
    assert p.transient[:, 2:].all() and not p.transient[:, :2].any()
    assert p.slot_expert[2, 2] == EMPTY and (np.delete(p.slot_expert[:, 2], 2) == 5).all()  # rank 2 owns 5
    check_placement(p, FAST_CTX, loads, None)
    # every source computes its own tokens for 5: the owner's slot and each shadow slot
    rows = p.slot_rows(loads[0])
    assert rows[2, 1] == loads[0][2, 5]
    assert np.array_equal(np.delete(rows[:, 2], 2), np.delete(loads[0][:, 5], 2))


def test_fastermoe_incremental_cost_matches_the_shadow_placement():
    loads = skewed_loads(FAST_CTX, hot=5, hot_share=0.6)[0]
    base = contiguous(16, 8)
    shadowed, best, none = plan_shadows(FAST_CTX, base, loads, FasterMoeParams())
    assert shadowed and best < none
    p = shadow_placement(base, shadowed, 16)
    bw = NIC
    c, f, q = FAST_CTX.row_compute_s, 4 * FAST_CTX.row_bytes / bw, 2 * FAST_CTX.expert_weight_bytes / bw
    rows = p.rank_rows(loads)
    net = rows * (1 - np.eye(8))
    expect = p.rank_load(loads).max() * c + max(net.sum(1).max(), net.sum(0).max()) * f + len(shadowed) * q
    assert best == pytest.approx(expect)


def test_fastermoe_expensive_params_or_balance_mean_no_shadow():
    ctx = make_ctx(weight_bytes=1e12)
    pol = FasterMoePolicy(ctx)
    base = pol.initial()
    assert pol.place(0, skewed_loads(ctx, hot=5, hot_share=0.6), base) is base and pol.last_shadowed == []
    pol = FasterMoePolicy(FAST_CTX)
    assert pol.place(0, np.full((2, 8, 16), 512.0), base) is base and pol.last_shadowed == []
    off = FasterMoePolicy(FAST_CTX, FasterMoeParams(shadowing=False))
    assert off.place(0, skewed_loads(FAST_CTX), base) is base
    capped = FasterMoePolicy(FAST_CTX, FasterMoeParams(max_shadows=0))
    assert capped.place(0, skewed_loads(FAST_CTX), base) is base


def test_fastermoe_shadows_last_one_step():
    pol = FasterMoePolicy(FAST_CTX)
    base = pol.initial()
    shadowed = pol.place(0, skewed_loads(FAST_CTX, hot=5, hot_share=0.6), base)
    back = pol.place(1, np.full((1, 8, 16), 512.0), shadowed)
    assert back.same_as(base) and pol.last_shadowed == []


def test_topology_gate_caps_remote_assignments():
    ctx = FAST_CTX  # nodes: ranks 0-3 (experts 0-7), ranks 4-7 (experts 8-15)
    base = contiguous(16, 8)
    loads = np.zeros((1, 8, 16))
    loads[0, 0, 8:] = 60.0  # source 0 (node 0) sends 480 of 520 remotely
    loads[0, 0, 0:2] = [30.0, 10.0]
    loads[0, 1, 0:8] = 100.0  # source 1: all local
    out = topology_gate(loads, base, ctx, 0.14)
    limit = np.floor(0.14 * 520)
    assert out[0, 0, 8:].sum() == limit
    assert np.array_equal(out.sum(-1), loads.sum(-1))
    assert np.array_equal(out, np.floor(out))  # integer counts stay integer
    assert out[0, 0, 2:8].sum() == 0  # surplus follows the local experts' loads (30:10)
    assert out[0, 0, 0] - 30 == pytest.approx(3 * (out[0, 0, 1] - 10), abs=1)
    assert np.array_equal(out[0, 1], loads[0, 1])
    assert np.array_equal(topology_gate(loads, base, ctx, 1.0), loads)
    pol = FasterMoePolicy(ctx, FasterMoeParams(topology_gate=True))
    assert np.array_equal(pol.route(loads, base), out)
    assert FasterMoePolicy(ctx).route(loads, base) is loads
    # an expert shadowed on every rank is never remote
    shadowed = shadow_placement(base, list(range(8, 16)), 16)
    assert np.array_equal(topology_gate(loads, shadowed, ctx, 0.14), loads)


@SETTINGS
@given(data=st.data(), phi=st.floats(0.0, 1.0))
def test_fastermoe_invariants(data, phi):
    ctx = FAST_CTX
    pol = FasterMoePolicy(ctx, FasterMoeParams(topology_gate=True, outgoing_fraction=phi))
    cur = pol.initial()
    for step in range(2):
        loads = data.draw(load_arrays(ctx))
        routed = pol.route(loads, cur)
        assert np.allclose(routed.sum(-1), loads.sum(-1)) and (routed >= 0).all()
        assert np.array_equal(routed, np.floor(routed))
        limit = np.floor(phi * routed.sum(-1) + 1e-9)  # [M, G]
        remote = np.concatenate([routed[:, :4, 8:].sum(-1), routed[:, 4:, :8].sum(-1)], axis=1)
        assert (remote <= limit).all()
        cur = pol.place(step, routed, cur)
        check_placement(cur, ctx, routed, 2 + len(pol.last_shadowed))
        assert cur.slot_expert.shape == (8, 2 + len(pol.last_shadowed))


# ------------------------------------------------------------------------------------------------------ TA-MoE


def test_tamoe_target_fraction_4x8():
    ctx = make_ctx(nodes=4, gpus_per_node=8, experts=64)
    shares = target_shares(ctx)
    assert np.allclose(shares.sum(1), 1.0)
    assert intra_node_fraction(shares, ctx) == pytest.approx(1200 / 1800)
    assert intra_node_fraction(np.ones((2, 32, 64)), ctx) == pytest.approx(0.25)


def test_tamoe_strength_blends_toward_target():
    ctx = make_ctx(nodes=4, gpus_per_node=8, experts=64)
    loads = np.random.default_rng(0).integers(0, 500, (2, 32, 64)).astype(np.float64)
    assert TaMoePolicy(ctx, TaMoeParams(strength=0.0)).route(loads, contiguous(64, 32)) is loads
    full = TaMoePolicy(ctx, TaMoeParams(strength=1.0)).route(loads, contiguous(64, 32))
    assert np.allclose(full, loads.sum(-1, keepdims=True) * target_shares(ctx))
    half = TaMoePolicy(ctx, TaMoeParams(strength=0.5)).route(loads, contiguous(64, 32))
    f0, f5, f1 = (intra_node_fraction(x, ctx) for x in (loads, half, full))
    assert f0 < f5 < f1 and f1 == pytest.approx(2 / 3)
    with pytest.raises(SpecError, match="strength"):
        TaMoeParams(strength=1.5)


@SETTINGS
@given(data=st.data(), lam=st.floats(0.0, 1.0))
def test_tamoe_invariants(data, lam):
    ctx = FAST_CTX
    pol = TaMoePolicy(ctx, TaMoeParams(strength=lam))
    cur = pol.initial()
    loads = data.draw(load_arrays(ctx))
    routed = pol.route(loads, cur)
    assert np.allclose(routed.sum(-1), loads.sum(-1)) and (routed >= 0).all()
    assert pol.place(0, routed, cur) is cur
    check_placement(cur, ctx, routed, ctx.slots_per_rank)
