"""vLLM's EPLB test cases, run against moesim's EPLB as a peer suite.

Source: vllm-project/vllm, tests/distributed/test_eplb_algo.py (Apache-2.0) at commit
8744bb0924a53c0d16867426b8b17428d41e4002; the two cases marked "030ea52e" are in the same file at commit
030ea52effcb05071543c8c42b8f0145e94cee43 (a later API: rebalance_experts returns phy2log only, and
compute_logical_maps derives log2phy and logcnt) and not at 8744bb09. Only the data (inputs and the outputs vLLM
expects) is restated here, in moesim's terms:
- vLLM's `DefaultEplbPolicy.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)` returns
  (phy2log, log2phy, logcnt), as `moesim.placement.rebalance_experts` does, with the same shapes and meaning
  (log2phy -1 padded); vLLM raises AssertionError on bad input where moesim raises SpecError.
- vLLM's `preserve_intragpu_slots` (experts that stay on a GPU keep their slot) is `keep_slots` on Placements:
  moesim keeps an expert's co-located copies in one slot (copies = k), so slot indices and replica ranks are
  moesim's, and the checks are restated on (expert, copies) per GPU.
- vLLM's load statistics (mean and max of per-rank token counts, reported as mean/max) are moesim's
  `balance_ratio` (max/mean) of the per-rank loads summed over the reporting ranks.
- vLLM-only, no meaning here: `test_device_compatibility`'s "cuda" variant (moesim's EPLB is numpy on the host;
  the "cpu" data runs below) and the file's `__main__` block (a print, no case).
"""

from dataclasses import dataclass

import numpy as np
import pytest

from moesim.placement import EMPTY, Placement, balance_ratio, keep_slots, rebalance_experts
from moesim.spec.errors import SpecError

README_WEIGHT = ((90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86),
                 (20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27))


@dataclass(frozen=True)
class RebalanceCase:
    """One rebalance_experts call and what vLLM expects of it beyond the checks every case gets (shapes,
    phy2log in range, at least one copy per expert, P copies per layer, log2phy consistent with phy2log)."""

    vllm_test: str
    weight: tuple
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    phy2log: tuple | None = None  # exact, where vLLM pins it
    logcnt: tuple | None = None  # exact, where vLLM pins it
    all_single: bool = False  # every expert exactly one copy
    at_least: tuple = ()  # (layer, expert, copies): that expert gets at least that many copies
    more_than: tuple = ()  # (layer, expert a, expert b): a gets more copies than b


CASES = [
    RebalanceCase("test_basic_rebalance", README_WEIGHT, 16, 4, 2, 8,
                  phy2log=((5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1),
                           (7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1)),
                  logcnt=((1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1), (1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1))),
    RebalanceCase("test_single_gpu_case", ((10, 20, 30, 40),), 4, 1, 1, 1, all_single=True),
    RebalanceCase("test_equal_weights", ((50,) * 8,), 8, 2, 2, 4, all_single=True),
    RebalanceCase("test_extreme_weight_imbalance", ((1000, 1, 1, 1, 1, 1, 1, 1),), 12, 2, 2, 4,
                  more_than=((0, 0, 1),)),
    RebalanceCase("test_multiple_layers", ((10, 20, 30, 40, 50, 60), (60, 50, 40, 30, 20, 10), (25,) * 6),
                  8, 2, 2, 4),
    # groups 3 % nodes 2 != 0: vLLM (like deepseek-ai/EPLB) falls back to the global policy instead of failing
    RebalanceCase("test_parameter_validation", ((10, 20, 30, 40),), 8, 3, 2, 4),
    RebalanceCase("test_small_scale_hierarchical", ((100, 50, 200, 75, 150, 25, 300, 80),), 12, 4, 2, 4,
                  at_least=((0, 6, 2),)),
    RebalanceCase("test_global_load_balance_fallback", ((10, 20, 30, 40, 50, 60),), 8, 3, 2, 4),
    RebalanceCase("test_device_compatibility[cpu]", ((10, 20, 30, 40),), 6, 2, 1, 2),
    RebalanceCase("test_additional_cases (1)",
                  ((50, 100, 75, 120, 90, 60, 80, 110, 40, 70, 95, 85, 65, 55, 45, 35),), 24, 8, 4, 8),
    RebalanceCase("test_additional_cases (2)", ((200, 150, 100, 50, 25, 12), (12, 25, 50, 100, 150, 200)),
                  10, 3, 1, 2, at_least=((0, 0, 2), (1, 5, 2))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.vllm_test)
def test_rebalance_matches_vllm(case):
    weight = np.array(case.weight, dtype=np.float64)
    layers, experts = weight.shape
    phy2log, log2phy, logcnt = rebalance_experts(weight, case.num_replicas, case.num_groups, case.num_nodes,
                                                 case.num_gpus)
    assert phy2log.shape == (layers, case.num_replicas)
    assert log2phy.shape[:2] == (layers, experts) and logcnt.shape == (layers, experts)
    assert phy2log.min() >= 0 and phy2log.max() < experts
    assert (logcnt >= 1).all() and logcnt.sum(1).tolist() == [case.num_replicas] * layers
    for layer in range(layers):
        assert np.bincount(phy2log[layer], minlength=experts).tolist() == logcnt[layer].tolist()
        for e in range(experts):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert len(slots) == logcnt[layer, e] and (phy2log[layer, slots] == e).all()
    if case.phy2log is not None:
        assert phy2log.tolist() == [list(row) for row in case.phy2log]
    if case.logcnt is not None:
        assert logcnt.tolist() == [list(row) for row in case.logcnt]
    if case.all_single:
        assert (logcnt == 1).all()
    for layer, e, copies in case.at_least:
        assert logcnt[layer, e] >= copies
    for layer, a, b in case.more_than:
        assert logcnt[layer, a] > logcnt[layer, b]


def test_single_gpu_maps_every_expert():  # test_single_gpu_case's extra check
    phy2log, _, _ = rebalance_experts(np.array([[10.0, 20, 30, 40]]), 4, 1, 1, 1)
    assert set(phy2log[0].tolist()) == {0, 1, 2, 3}


def test_physical_experts_that_do_not_fill_the_gpus_are_rejected():  # test_parameter_validation, 2nd part
    with pytest.raises(SpecError, match="num_replicas"):
        rebalance_experts(np.array([[10.0, 20, 30, 40]]), 7, 2, 2, 4)  # 7 not divisible by 4 GPUs


# --- test_preserve_intragpu_slots -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SlotCase:
    vllm_id: str
    num_gpus: int
    old_phy2log: tuple  # [P], P / num_gpus physical slots per GPU
    new_phy2log: tuple


SLOT_CASES = [
    SlotCase("simple", 2, (0, 1, 2, 3, 4, 5, 6, 7), (1, 5, 0, 4, 6, 2, 7, 3)),
    SlotCase("duplicates", 2, (0, 1, 0, 2, 3, 4, 5, 6, 1, 2), (0, 5, 4, 0, 1, 6, 2, 3, 2, 1)),
    SlotCase("skewed_expert", 3, (0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3), (0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0)),
]


def copies_on(placement, gpu):
    """{expert: physical copies} on one GPU."""
    row, copies = placement.slot_expert[gpu], placement.copies[gpu]
    return {int(e): int(c) for e, c in zip(row, copies) if e != EMPTY}


@pytest.mark.parametrize("case", SLOT_CASES, ids=lambda c: c.vllm_id)
def test_experts_that_stay_on_a_gpu_keep_their_slot(case):
    old = Placement.from_phy2log(np.array(case.old_phy2log), case.num_gpus)
    new = Placement.from_phy2log(np.array(case.new_phy2log), case.num_gpus)
    kept = keep_slots(new, old)
    assert kept.slot_expert.shape == new.slot_expert.shape
    for gpu in range(case.num_gpus):
        assert copies_on(kept, gpu) == copies_on(new, gpu)  # nothing lost or added, copies included
        for slot, expert in enumerate(old.slot_expert[gpu]):
            if expert != EMPTY and expert in copies_on(new, gpu):
                assert kept.slot_expert[gpu, slot] == expert  # a stayer keeps its slot


# --- in 030ea52e only -------------------------------------------------------------------------------------------

def test_load_stats_reduce_across_ranks():  # test_eplb_load_stats_reduce_across_ranks
    tokens = np.array([[100.0, 0, 0, 0], [100.0, 0, 0, 0]])  # [reporting rank, EP rank]
    per_rank = tokens.sum(0)
    assert per_rank.mean() == 50 and per_rank.max() == 200
    assert balance_ratio(per_rank) == 4.0  # vLLM reports mean / max = 0.25


def test_unused_physical_slots_map_to_nothing():  # test_compute_logical_maps_with_negative_indices
    layers = ((0, 1, -1, 2, 3, -1), (3, -1, 2, 1, 0, -1))  # 2 GPUs x 3 physical slots, -1 = unused
    placements = [Placement.from_phy2log(np.array(row), num_ranks=2) for row in layers]
    for placement in placements:
        assert placement.replicas(4).tolist() == [1, 1, 1, 1]  # vLLM: logcnt all ones, log2phy width 1
    # vLLM pins layer 0's log2phy: experts 0, 1, 2, 3 at physical slots 0, 1, 3, 4, i.e. on GPUs 0, 0, 1, 1
    for expert, physical in {0: 0, 1: 1, 2: 3, 3: 4}.items():
        assert placements[0].holders(4)[expert].tolist() == [physical // 3 == 0, physical // 3 == 1]
    assert placements[0].slot_expert.tolist() == [[0, 1, EMPTY], [2, 3, EMPTY]]
