import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.placement.base import EMPTY, PlacementContext, balance_ratio, contiguous, moved_slots
from moesim.placement.eplb import (EplbParams, EplbPolicy, balanced_packing, rebalance_experts,
                                   replicate_experts)
from moesim.placement.smartmoe import SmartMoeParams, SmartMoePolicy, greedy_replace
from moesim.placement.static import StaticParams, StaticPolicy
from moesim.spec.errors import SpecError


def make_ctx(num_experts, num_ranks, slots_per_rank=None, gpus_per_node=4):
    node = np.arange(num_ranks) // gpus_per_node
    bandwidth = np.where(node[:, None] == node[None, :], 300e9, 25e9)
    slots = num_experts // num_ranks if slots_per_rank is None else slots_per_rank
    return PlacementContext(num_experts=num_experts, num_ranks=num_ranks, slots_per_rank=slots,
                            node_of_rank=node, bandwidth_bytes_per_s=bandwidth, row_bytes=4096.0,
                            expert_weight_bytes=1e6, expert_state_bytes=9e6, row_compute_s=1e-7)


def demand(per_expert, num_ranks, micro_batches=1):
    """[E] total load -> loads [M, G_src, E], spread evenly over sources and micro-batches."""
    per_expert = np.asarray(per_expert, dtype=np.float64)
    return np.broadcast_to(per_expert / (num_ranks * micro_batches),
                           (micro_batches, num_ranks, per_expert.shape[0])).copy()


def check_invariants(ctx, placement, loads):
    placement.validate(ctx.num_experts, ctx.slots_per_rank)  # every expert placed, distinct ranks, budget
    assert placement.slot_expert.shape == (ctx.num_ranks, ctx.slots_per_rank)
    assert (placement.replicas(ctx.num_experts) >= 1).all()
    # a rank may hold several of an expert's physical copies (EPLB), always in one slot
    assert (placement.holders(ctx.num_experts).sum(1) <= placement.replicas(ctx.num_experts)).all()
    assert placement.copies.sum(1).max() <= ctx.slots_per_rank
    assert np.isclose(placement.rank_load(loads).sum(), loads.sum())


# --- EPLB pure functions ---------------------------------------------------------------------------------

README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])


def test_eplb_readme_vector():
    phy2log, log2phy, logcnt = rebalance_experts(README_WEIGHT, num_replicas=16, num_groups=4, num_nodes=2,
                                                 num_gpus=8)
    assert phy2log.tolist() == [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
    assert logcnt.sum(1).tolist() == [16, 16]
    for layer in range(2):
        assert np.bincount(phy2log[layer], minlength=12).tolist() == logcnt[layer].tolist()
        for e in range(12):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert len(slots) == logcnt[layer, e]
            assert (phy2log[layer, slots] == e).all()


def test_eplb_hierarchical_keeps_groups_and_replicas_in_a_node():
    phy2log, _, _ = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    for layer in range(2):
        node_of_phy = np.arange(16) // 8
        for e in range(12):
            assert len(set(node_of_phy[phy2log[layer] == e])) == 1  # replicas never cross nodes
        for group in range(4):
            nodes = node_of_phy[np.isin(phy2log[layer], np.arange(3 * group, 3 * group + 3))]
            assert len(set(nodes)) == 1  # an expert group lives on one node


def test_balanced_packing_fills_every_pack_exactly():
    rng = np.random.default_rng(0)
    weight = rng.exponential(size=(3, 12))
    pack, rank = balanced_packing(weight, 4)
    for layer in range(3):
        assert np.bincount(pack[layer], minlength=4).tolist() == [3] * 4
        for p in range(4):
            assert sorted(rank[layer, pack[layer] == p].tolist()) == [0, 1, 2]
    pack, rank = balanced_packing(weight, 12)  # one item per pack: identity
    assert pack.tolist() == [list(range(12))] * 3 and not rank.any()


def test_balanced_packing_ties_go_to_lowest_pack_in_index_order():
    pack, rank = balanced_packing(np.ones((1, 4)), 2)
    assert pack.tolist() == [[0, 1, 0, 1]] and rank.tolist() == [[0, 0, 1, 1]]


def test_replication_lowers_the_max_per_replica_load():
    weight = np.array([[400.0, 120, 60, 30, 20, 10, 5, 5]])
    phy2log, rank, logcnt = replicate_experts(weight, 12)
    assert logcnt.tolist() == [[4, 2, 1, 1, 1, 1, 1, 1]]
    assert phy2log[0, :8].tolist() == list(range(8)) and phy2log[0, 8:].tolist() == [0, 0, 0, 1]
    assert rank[0, 8:].tolist() == [1, 2, 3, 1]
    assert (weight / logcnt).max() == 100.0 < weight.max()

    ctx = make_ctx(8, 4, slots_per_rank=3)
    loads = demand(weight[0], 4)
    without = EplbPolicy(ctx, EplbParams(period_steps=1))
    with_replicas = EplbPolicy(ctx, EplbParams(redundant_experts=4, period_steps=1))
    placed = {}
    for name, policy in (("without", without), ("with", with_replicas)):
        current = policy.initial()
        policy.place(0, loads, current)
        placed[name] = policy.place(1, loads, current)
    ratio = {name: float(balance_ratio(p.rank_load(loads[0]))) for name, p in placed.items()}
    assert ratio["with"] < ratio["without"]
    assert ratio["without"] == pytest.approx(405 / 162.5)  # expert 0 (+ a 5) alone bounds the unreplicated layout


def test_co_located_replicas_share_one_slot_with_both_shares():
    # EPLB itself packs both replicas of expert 1 onto GPU 1 here; the Placement keeps one slot with 2 copies.
    phy2log, _, _ = rebalance_experts(np.array([[5.0, 8, 1]]), 4, 1, 1, 2)
    assert phy2log.tolist() == [[0, 2, 1, 1]]
    ctx = make_ctx(3, 2, slots_per_rank=2)
    policy = EplbPolicy(ctx, EplbParams(redundant_experts=1, period_steps=1))
    loads = demand([5.0, 8, 1], 2)
    policy.place(0, loads, policy.initial())
    placed = policy.place(1, loads, policy.initial())
    check_invariants(ctx, placed, loads)
    assert sorted(placed.slot_expert[1].tolist()) == [EMPTY, 1]
    assert placed.copies[1][placed.slot_expert[1] == 1].tolist() == [2] and placed.replicas(3).tolist() == [1, 2, 1]
    assert placed.rank_load(loads[0]).tolist() == [6.0, 8.0]  # what EPLB's layout computes


# --- EPLB policy -----------------------------------------------------------------------------------------

def test_eplb_params_validation():
    with pytest.raises(SpecError, match="redundant_experts"):
        EplbParams(redundant_experts=-1)
    with pytest.raises(SpecError, match="period_steps"):
        EplbParams(period_steps=0)
    with pytest.raises(SpecError, match="history_steps"):
        EplbParams(history_steps=0)
    with pytest.raises(SpecError, match="num_groups"):
        EplbParams(num_groups=0)
    ctx = make_ctx(16, 8, slots_per_rank=3)
    with pytest.raises(SpecError, match=r"redundant_experts: got 4; .*one of 0, 8"):
        EplbPolicy(ctx, EplbParams(redundant_experts=4))  # 20 is not a multiple of 8 ranks
    with pytest.raises(SpecError, match="redundant_experts"):
        EplbPolicy(ctx, EplbParams(redundant_experts=16))  # 4 per rank > 3 slots
    with pytest.raises(SpecError, match="num_groups"):
        EplbPolicy(ctx, EplbParams(num_groups=3))
    EplbPolicy(ctx, EplbParams(redundant_experts=8))


def test_eplb_initial_is_uniform_and_hierarchical():
    ctx = make_ctx(16, 8, slots_per_rank=3)
    placement = EplbPolicy(ctx, EplbParams(redundant_experts=8, num_groups=4)).initial()
    check_invariants(ctx, placement, demand(np.ones(16), 8))
    assert (placement.slot_expert[:, 2] == EMPTY).all() and (placement.slot_expert[:, :2] != EMPTY).all()
    node = np.arange(8) // 4
    holders = placement.holders(16)
    for group in range(4):  # hierarchical: each group of 4 experts (and its replicas) on one node
        assert len(set(node[holders[4 * group:4 * group + 4].any(0)])) == 1


def test_eplb_picks_hierarchical_only_where_eplb_would():
    ctx = make_ctx(16, 8, slots_per_rank=3)  # 2 nodes of 4 ranks
    assert EplbPolicy(ctx, EplbParams(num_groups=4)).num_nodes == 2
    assert EplbPolicy(ctx, EplbParams(num_groups=1)).num_nodes == 1  # 1 % 2 nodes != 0: global policy
    assert EplbPolicy(ctx, EplbParams(num_groups=4, hierarchical=False)).num_nodes == 1
    interleaved = PlacementContext(**{**ctx.__dict__, "node_of_rank": np.arange(8) % 2})
    assert EplbPolicy(interleaved, EplbParams(num_groups=4)).num_nodes == 1  # not node-major


def test_eplb_decides_on_period_from_earlier_steps_only():
    ctx = make_ctx(8, 4, slots_per_rank=2)
    policy = EplbPolicy(ctx, EplbParams(redundant_experts=0, period_steps=3, history_steps=2))
    current = policy.initial()
    hot = demand([50.0, 1, 1, 1, 40, 1, 1, 1], 4)  # initial layout has 0 and 4 on rank 0
    uniform = demand(np.ones(8), 4)
    # Step 0 is hot but falls out of the 2-step window; step 3 decides from steps 1-2 (uniform), not from its own
    # hot loads, and uniform loads give back the initial layout.
    for step in range(3):
        assert policy.place(step, hot if step == 0 else uniform, current) is current
    assert policy.place(3, hot, current) is current
    assert policy.place(4, uniform, current) is current  # not a period step
    assert policy.place(5, hot, current) is current  # not a period step, even with hot loads in the window
    assert policy.place(6, uniform, current) is not current  # window = steps 4 (uniform) and 5 (hot)
    policy = EplbPolicy(ctx, EplbParams(redundant_experts=0, period_steps=3, history_steps=2))
    for step, loads in enumerate([uniform, uniform, uniform, hot, uniform, uniform]):
        assert policy.place(step, loads, current) is current
    assert policy.place(6, uniform, current) is current  # window = steps 4, 5: the hot step 3 is forgotten
    policy.place(7, hot, current)
    policy.place(8, hot, current)
    new = policy.place(9, uniform, current)  # window = steps 7, 8 (hot)
    assert new is not current
    assert new.holders(8)[0].sum() == 1 and not (new.holders(8)[0] & new.holders(8)[4]).any()
    assert balance_ratio(new.rank_load(hot[0])) < balance_ratio(current.rank_load(hot[0]))


def test_eplb_keeps_slots_of_experts_that_stay():
    ctx = make_ctx(8, 4, slots_per_rank=3)
    policy = EplbPolicy(ctx, EplbParams(redundant_experts=4, period_steps=1, history_steps=1))
    current = policy.initial()
    rng = np.random.default_rng(1)
    for step in range(20):
        new = policy.place(step, demand(rng.exponential(size=8), 4), current)
        for g in range(4):  # an expert that stays on its rank is never counted as moved
            stays = np.isin(new.slot_expert[g], current.slot_expert[g]) & (new.slot_expert[g] != EMPTY)
            assert not (moved_slots(current, new)[g] & stays).any()
        current = new


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ranks=st.sampled_from([2, 4, 8]), per_rank=st.integers(1, 4), spare=st.integers(0, 2),
       gpus_per_node=st.sampled_from([1, 2, 4]), groups=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31),
       hierarchical=st.booleans(), data=st.data())
def test_eplb_invariants_on_random_loads(ranks, per_rank, spare, gpus_per_node, groups, seed, hierarchical, data):
    num_experts = ranks * per_rank
    groups = groups if num_experts % groups == 0 else 1
    redundant = ranks * data.draw(st.integers(0, spare))
    ctx = make_ctx(num_experts, ranks, per_rank + spare, gpus_per_node)
    policy = EplbPolicy(ctx, EplbParams(redundant_experts=redundant, period_steps=2, history_steps=3,
                                        num_groups=groups, hierarchical=hierarchical))
    rng = np.random.default_rng(seed)
    current = policy.initial()
    for step in range(5):
        loads = rng.zipf(1.5, size=(2, ranks, num_experts)).astype(float)
        loads = np.minimum(loads, 1e6)
        current = policy.place(step, loads, current)
        check_invariants(ctx, current, loads)
        assert (current.slot_expert != EMPTY).sum(1).max() <= (num_experts + redundant) // ranks
        assert current.copies.sum(1).tolist() == [(num_experts + redundant) // ranks] * ranks  # every copy placed


# --- SmartMoE --------------------------------------------------------------------------------------------

def test_greedy_adopts_only_strict_improvements():
    current = contiguous(4, 2)
    # Expert 0 alone outweighs everything else: no re-placement lowers the max rank load.
    assert greedy_replace(np.array([10.0, 1, 1, 1]), current) is current
    # Already optimal: {0, 1} = 5 and {2, 3} = 5.
    assert greedy_replace(np.array([4.0, 1, 3, 2]), current) is current
    new = greedy_replace(np.array([10.0, 6, 1, 1]), current)
    assert new is not current
    assert new.slot_expert.tolist() == [[0, 3], [2, 1]]  # 11 / 7 instead of 16 / 2; stayers keep their slot


def test_greedy_stickiness():
    current = contiguous(4, 2)
    # Expert 2 (heaviest) ties between ranks 0 and 1 and stays home on rank 1 instead of taking rank 0.
    new = greedy_replace(np.array([1.0, 1, 10, 6]), current)
    assert new.slot_expert.tolist() == [[0, 3], [2, 1]]
    assert moved_slots(current, new).sum() == 2
    # Balanced loads: nothing improves, nothing moves.
    balanced = contiguous(8, 4)
    assert greedy_replace(np.ones(8), balanced) is balanced


def test_greedy_uses_only_the_occupied_slots():
    current = contiguous(4, 2, slots_per_rank=3)
    new = greedy_replace(np.array([10.0, 6, 1, 1]), current)
    assert (new.slot_expert[:, 2] == EMPTY).all()
    new.validate(4, 3)


def test_smartmoe_params_validation():
    with pytest.raises(SpecError, match="freq"):
        SmartMoeParams(freq=0)
    with pytest.raises(SpecError, match="history_steps"):
        SmartMoeParams(freq=10, history_steps=11)
    with pytest.raises(SpecError, match="history_steps"):
        SmartMoeParams(history_steps=0)


def test_smartmoe_triggers_on_multiples_of_freq_with_the_last_two_steps():
    ctx = make_ctx(8, 4, slots_per_rank=3)
    skewed = demand([9.0, 8, 7, 6, 1, 1, 1, 1], 4, micro_batches=2)
    uniform = demand(np.ones(8), 4, micro_batches=2)

    # Skew only in steps 0..7: the decision at step 10 sees steps 8 and 9 (uniform) and keeps the layout.
    policy = SmartMoePolicy(ctx, SmartMoeParams(freq=10, history_steps=2))
    current = policy.initial()
    for step in range(11):
        assert policy.place(step, skewed if step < 8 else uniform, current) is current
    assert policy.accepted_changes == 0

    # Skew only in steps 8 and 9: no change before step 10 (even with skewed loads), a change at step 10.
    policy = SmartMoePolicy(ctx, SmartMoeParams(freq=10, history_steps=2))
    current = policy.initial()
    for step in range(10):
        assert policy.place(step, skewed if step >= 8 else uniform, current) is current
    new = policy.place(10, skewed, current)
    assert new is not current and policy.accepted_changes == 1
    assert new.rank_load(skewed[0]).max() < current.rank_load(skewed[0]).max()
    new.validate(8, 3)

    # History was reset at step 10; step 10 itself is not recorded (10 % 10 < 8), step 20 decides from 18, 19.
    for step in range(11, 20):
        assert policy.place(step, skewed, new) is new
    assert policy.place(20, uniform, new) is new  # already the best layout for `skewed`
    assert policy.accepted_changes == 1


def test_smartmoe_records_only_the_first_micro_batch():
    ctx = make_ctx(4, 2)
    loads = np.stack([demand(np.ones(4), 2)[0], demand([10.0, 6, 1, 1], 2)[0]])  # [2, 2, 4]
    policy = SmartMoePolicy(ctx, SmartMoeParams(freq=2, history_steps=1))
    current = policy.initial()
    policy.place(1, loads, current)
    assert policy.history[0].tolist() == [1.0] * 4
    assert policy.place(2, loads, current) is current  # the skewed second micro-batch is never seen


def test_smartmoe_counts_accepted_changes():
    ctx = make_ctx(4, 2)
    policy = SmartMoePolicy(ctx, SmartMoeParams(freq=1, history_steps=1))
    current = policy.initial()
    a, b = demand([10.0, 6, 1, 1], 2), demand([10.0, 1, 1, 6], 2)
    changed = []
    for step, loads in enumerate([a, b, a, a, b]):
        new = policy.place(step, loads, current)
        changed.append(new is not current)
        current = new
    # Step 1 (history a) moves expert 1 off rank 0; step 2 (history b) then moves expert 3 off rank 0; step 3
    # (history a) finds {0, 2} / {1, 3} can only be matched, not beaten; step 4 (history a) the same.
    assert changed == [False, True, True, False, False]
    assert policy.accepted_changes == 2


@settings(max_examples=40, deadline=None)
@given(ranks=st.sampled_from([2, 4, 8]), per_rank=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_smartmoe_invariants_on_random_loads(ranks, per_rank, seed):
    num_experts = ranks * per_rank
    ctx = make_ctx(num_experts, ranks, per_rank + 1)
    policy = SmartMoePolicy(ctx, SmartMoeParams(freq=2, history_steps=2))
    rng = np.random.default_rng(seed)
    current = policy.initial()
    for step in range(7):
        loads = np.minimum(rng.zipf(1.5, size=(2, ranks, num_experts)), 1e6).astype(float)
        previous = current
        history = np.mean(np.stack(policy.history), axis=0) if policy.history else None
        current = policy.place(step, loads, current)
        check_invariants(ctx, current, loads)
        assert (current.replicas(num_experts) == 1).all()
        assert ((current.slot_expert != EMPTY).sum(1) == per_rank).all()
        if current is not previous:  # adopted only when it lowers the max rank load on the history
            assert history is not None and step % 2 == 0
            estimate = demand(history, ranks)[0]
            assert current.rank_load(estimate).max() < previous.rank_load(estimate).max()


# --- Static ----------------------------------------------------------------------------------------------

def test_static_never_changes():
    ctx = make_ctx(16, 8, slots_per_rank=3)
    policy = StaticPolicy(ctx, StaticParams())
    current = policy.initial()
    assert current.same_as(contiguous(16, 8, 3))
    rng = np.random.default_rng(2)
    for step in range(5):
        loads = rng.exponential(size=(2, 8, 16))
        assert policy.place(step, loads, current) is current
        assert policy.route(loads, current) is loads
        check_invariants(ctx, current, loads)
