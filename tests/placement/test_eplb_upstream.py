"""EPLB as upstream plans it: a GPU holding c of an expert's k physical copies serves c/k of its tokens, and the
balance moesim reports is the balance EPLB's phy2log implies (issue 10 item 7)."""

import numpy as np
import pytest

from moesim.placement import (EMPTY, EplbParams, EplbPolicy, Placement, PlacementContext, balance_ratio,
                              gpu_load, keep_slots, rebalance_experts, use_hierarchical)
from moesim.spec.errors import SpecError


def direct_gpu_load(weight, phy2log, num_gpus):
    """weight [E], phy2log [P] -> [G], computed straight from EPLB's plan: physical expert p sits on GPU
    p // (P/G) and carries weight / (number of physical copies) of its logical expert."""
    logcnt = np.bincount(phy2log, minlength=len(weight))
    per_gpu = len(phy2log) // num_gpus
    load = np.zeros(num_gpus)
    for p, e in enumerate(phy2log):
        load[p // per_gpu] += weight[e] / logcnt[e]
    return load


def decided(policy, loads):
    """The placement `policy` adopts at its first decision, having seen `loads` [M, G_src, E] once."""
    current = policy.initial()
    policy.place(0, loads, current)
    return policy.place(policy.params.period_steps, loads, current)


# --- (a) two of three copies on one GPU: 2/3 of the tokens --------------------------------------------------

def test_two_of_three_copies_on_one_gpu_get_two_thirds():
    weight = np.array([150.0, 114, 90, 48])
    phy2log, _, logcnt = rebalance_experts(weight[None], 8, 1, 1, 2)
    # EPLB's own plan: expert 0 has 3 copies, two of them on GPU 0 (deepseek-ai/EPLB issue #22)
    assert phy2log.tolist() == [[1, 0, 0, 2, 1, 0, 3, 2]] and logcnt.tolist() == [[3, 2, 2, 1]]

    placement = Placement.from_phy2log(phy2log[0], num_ranks=2)
    assert placement.slot_expert.tolist() == [[1, 0, 2, EMPTY], [1, 0, 3, 2]]
    assert placement.copies.tolist() == [[1, 2, 1, 0], [1, 1, 1, 1]]
    assert placement.replicas(4).tolist() == [3, 2, 2, 1]  # physical copies, EPLB's logcnt
    assert placement.even_matrix(4)[0].tolist() == pytest.approx([2 / 3, 1 / 3])  # the 2/k split
    placement.validate(4, slots_per_rank=4)

    loads = np.broadcast_to(weight / 2, (2, 4))  # [G_src, E]: both sources ask alike
    # GPU 0: 114/2 + 2/3 * 150 + 90/2 = 202; GPU 1: 114/2 + 150/3 + 48 + 90/2 = 200
    assert placement.rank_load(loads).tolist() == pytest.approx([202.0, 200.0])
    assert placement.rank_load(loads).tolist() == pytest.approx(direct_gpu_load(weight, phy2log[0], 2).tolist())
    assert gpu_load(weight[None], phy2log, 2)[0].tolist() == pytest.approx([202.0, 200.0])
    # merging the two copies into one half share (the old behaviour) would have given 29.5 : 37.5 per 67

    ctx = PlacementContext.uniform(num_experts=4, num_ranks=2, slots_per_rank=4)
    policy_placement = decided(EplbPolicy(ctx, EplbParams(redundant_experts=4, period_steps=1)), loads[None])
    assert policy_placement.rank_load(loads).tolist() == pytest.approx([202.0, 200.0])


def test_copies_travel_with_their_expert_when_slots_are_kept():
    current = Placement(np.array([[0, 1, 2], [3, 4, 5]]))
    new = Placement(np.array([[4, 1, EMPTY], [3, 0, 2]]), copies=np.array([[2, 1, 0], [1, 1, 1]]))
    kept = keep_slots(new, current)
    assert kept.slot_expert.tolist() == [[4, 1, EMPTY], [3, 0, 2]]  # 1 stays in slot 1, 3 in slot 0
    assert kept.copies.tolist() == [[2, 1, 0], [1, 1, 1]]
    moved_in = keep_slots(Placement(np.array([[2, 0, 1], [5, 3, 4]]), copies=np.array([[1, 3, 1], [1, 1, 1]])),
                          current)
    assert moved_in.slot_expert.tolist() == [[0, 1, 2], [3, 4, 5]] and moved_in.copies.tolist()[0] == [3, 1, 1]


def test_placement_rejects_copies_beyond_the_slot_budget():
    placement = Placement(np.array([[0, 1], [2, EMPTY]]), copies=np.array([[2, 1], [1, 0]]))
    placement.validate(3, slots_per_rank=3)
    with pytest.raises(ValueError, match="copies"):
        placement.validate(3, slots_per_rank=2)  # rank 0 holds 3 physical copies in 2 slots' memory
    with pytest.raises(ValueError, match="fewer than 1"):
        Placement(np.array([[0, 1]]), copies=np.array([[0, 1]])).validate(2)


# --- (b) more redundant experts never balance worse, and the balance is phy2log's ---------------------------

def zipf_demand(seed, s, num_experts=64, num_ranks=8, tokens_per_rank=65536):
    """[1, G_src, E] token counts: each source rank samples its tokens from one Zipf(s) popularity over
    shuffled experts."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(1.0 / np.arange(1, num_experts + 1) ** s)
    return rng.multinomial(tokens_per_rank, popularity / popularity.sum(), size=(1, num_ranks)).astype(float)


@pytest.mark.parametrize("s", [0.6, 1.0, 1.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_redundant_experts_never_balance_worse(s, seed):
    loads = zipf_demand(seed, s)
    weight = loads.sum(axis=(0, 1))
    ctx = PlacementContext.uniform(num_experts=64, num_ranks=8, slots_per_rank=12)  # one node of 8 GPUs
    ratios = []
    for redundant in (0, 8, 16, 32):
        placement = decided(EplbPolicy(ctx, EplbParams(redundant_experts=redundant, period_steps=1)), loads)
        placement.validate(64, ctx.slots_per_rank)
        rank_load = placement.rank_load(loads[0])
        # what the simulator computes (one [E, G] split matrix) and what EPLB's phy2log implies, all equal
        phy2log, _, _ = rebalance_experts(weight[None], 64 + redundant, 1, 1, 8)
        assert rank_load == pytest.approx(direct_gpu_load(weight, phy2log[0], 8), rel=1e-12)
        assert rank_load == pytest.approx(weight @ placement.even_matrix(64), rel=1e-12)
        ratios.append(float(balance_ratio(rank_load)))
    assert ratios[1] < ratios[0]
    # EPLB's greedy packing is not exactly monotone: on these loads more redundancy can lose up to ~0.1%
    # (1.0007 -> 1.0010). Merging co-located copies into one even share (the old split) lost up to 15% here
    # (1.0006 -> 1.1505) and failed this test in all 9 cases.
    for fewer, more in zip(ratios, ratios[1:]):
        assert more <= fewer + 0.005, ratios
    assert ratios[-1] < 1.01


def test_redundancy_cannot_fix_what_hierarchical_group_packing_leaves_between_nodes():
    # Replicas stay inside their node, so the node imbalance that packing whole groups leaves stays too: the
    # hierarchical policy is not monotone in redundant experts beyond the within-node packing (measured:
    # 2.33 -> 2.37 -> 2.38 on this load). Pinned so that a change of this behaviour is noticed.
    loads = zipf_demand(3, 1.5)
    ctx = PlacementContext.uniform(num_experts=64, num_ranks=8, slots_per_rank=12, gpus_per_node=2)
    ratios = [float(balance_ratio(decided(EplbPolicy(ctx, EplbParams(redundant_experts=r, period_steps=1,
                                                                     num_groups=16)), loads).rank_load(loads[0])))
              for r in (0, 8, 16, 32)]
    assert ratios[0] > 3 and max(ratios[1:]) > 2.2 and max(ratios[1:]) - min(ratios[1:]) < 0.1, ratios


# --- rebalance_experts falls back to the global policy ------------------------------------------------------

@pytest.mark.parametrize("num_groups, num_nodes", [(3, 2), (4, 2), (5, 1)])
def test_groups_that_do_not_fit_fall_back_to_the_global_policy(num_groups, num_nodes):
    # (3, 2): groups do not split over nodes (upstream falls back too); (4, 2) and (5, 1): groups do not split
    # the 6 experts (upstream asserts; moesim falls back, as no group layout exists either way)
    weight = np.array([[10.0, 20, 30, 40, 50, 60]])
    assert not use_hierarchical(6, num_groups, num_nodes)
    got = rebalance_experts(weight, 8, num_groups, num_nodes, 4)
    want = rebalance_experts(weight, 8, 1, 1, 4)
    for a, b in zip(got, want):
        assert a.tolist() == b.tolist()


def test_bad_rebalance_arguments_are_spec_errors():
    weight = np.array([[10.0, 20, 30, 40]])
    with pytest.raises(SpecError, match="num_replicas"):
        rebalance_experts(weight, 7, 2, 2, 4)  # 7 physical experts do not fill 4 GPUs evenly
    with pytest.raises(SpecError, match="num_replicas"):
        rebalance_experts(weight, 2, 1, 1, 2)  # fewer physical than logical experts
    with pytest.raises(SpecError, match="num_nodes"):
        rebalance_experts(weight, 6, 2, 2, 3)  # hierarchical, but 3 GPUs do not split over 2 nodes
    with pytest.raises(SpecError, match="weight"):
        rebalance_experts(weight[0], 4, 1, 1, 2)
