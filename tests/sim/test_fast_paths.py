"""Shortcuts of moe_layer_work give the general path's numbers exactly."""

from __future__ import annotations

import dataclasses

import numpy as np

from moesim.network import FlowNetwork
from moesim.placement.base import Placement, contiguous
from moesim.sim.workload import moe_layer_work
from moesim.spec import ParallelLayout

from helpers import scenario, tiny_model


def test_contiguous_block_is_found_only_for_one_holder_per_expert():
    assert contiguous(16, 4).contiguous_block(16) == 4
    assert contiguous(16, 4, slots_per_rank=6).contiguous_block(16) == 4
    swapped = contiguous(16, 4).slot_expert.copy()
    swapped[0, 0], swapped[1, 0] = swapped[1, 0], swapped[0, 0]
    assert Placement(swapped).contiguous_block(16) is None


def test_block_sum_equals_the_product_with_the_placement_matrix(monkeypatch):
    sc = scenario(zipf_s=1.3, layout=ParallelLayout(tp=1, pp=1, dp=8, ep=4), model=tiny_model(num_experts=16))
    net = FlowNetwork(sc.cluster, sc.network)
    loads = np.random.default_rng(0).multinomial(sc.tokens_routed_per_rank * sc.model.top_k,
                                                 np.full(16, 1 / 16), size=(sc.num_micro_batches, 8))
    fast = moe_layer_work(sc, net, net, loads, 0, np.random.default_rng(1), contiguous(16, 4))
    monkeypatch.setattr(Placement, "contiguous_block", lambda self, e: None)
    slow = moe_layer_work(sc, net, net, loads, 0, np.random.default_rng(1), contiguous(16, 4))
    for field in dataclasses.fields(fast):
        np.testing.assert_array_equal(getattr(fast, field.name), getattr(slow, field.name), err_msg=field.name)
