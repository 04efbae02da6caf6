"""Trace replay on a simulated shape that differs from the recording (moesim/routing/replay.py)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.routing.replay import replay_loads, trace_expert_shares
from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace

STEPS, LAYERS, MBS, SOURCES, EXPERTS, ROW_SUM = 3, 2, 2, 3, 4, 40


def synthetic_trace(seed: int = 0, experts: int = EXPERTS, row_sum: int = ROW_SUM) -> RoutingTrace:
    """counts [3, 2, 2, 3, E], every row summing to row_sum, every row different."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(experts, 0.5), size=(STEPS, LAYERS, MBS, SOURCES))
    counts = np.stack([rng.multinomial(row_sum, p) for p in shares.reshape(-1, experts)])
    return RoutingTrace(counts.reshape(STEPS, LAYERS, MBS, SOURCES, experts).astype(np.uint16),
                        np.array([1, 11, 21]), 2, "synthetic")


def replay(trace: RoutingTrace, step: int = 0, mbs: int = MBS, layers: int = LAYERS, sources: int = SOURCES,
           experts: int = EXPERTS, target: int = ROW_SUM, seed: int = 0) -> np.ndarray:
    return replay_loads(trace, step, mbs, layers, sources, experts, target, np.random.default_rng(seed))


def test_identity_replay_reproduces_every_row_exactly() -> None:
    trace = synthetic_trace()
    for step in range(STEPS):
        out = replay(trace, step)
        assert out.dtype == np.int32 and out.shape == (MBS, LAYERS, SOURCES, EXPERTS)
        assert np.array_equal(out, trace.counts[step].transpose(1, 0, 2, 3))


def test_identity_replay_draws_nothing_from_rng() -> None:
    rng = np.random.default_rng(5)
    replay_loads(synthetic_trace(), 0, MBS, LAYERS, SOURCES, EXPERTS, ROW_SUM, rng)
    assert rng.random() == np.random.default_rng(5).random()


def test_steps_layers_micro_batches_and_sources_wrap_around() -> None:
    trace = synthetic_trace()
    out = replay(trace, step=7, mbs=5, layers=5, sources=7)
    assert out.shape == (5, 5, 7, EXPERTS)
    for m in range(5):
        for layer in range(5):
            for i in range(7):
                expected = trace.counts[7 % STEPS, layer % LAYERS, m % MBS, i % SOURCES]
                assert np.array_equal(out[m, layer, i], expected)


def test_fewer_simulated_units_take_the_first_recorded_ones() -> None:
    trace = synthetic_trace()
    out = replay(trace, step=1, mbs=1, layers=1, sources=2)
    assert np.array_equal(out[0, 0], trace.counts[1, 0, 0, :2])


@pytest.mark.parametrize("group", [2, 4])
def test_splitting_experts_keeps_row_sums_and_each_recorded_experts_total(group: int) -> None:
    trace = synthetic_trace()
    out = replay(trace, step=2, experts=EXPERTS * group)
    assert out.shape == (MBS, LAYERS, SOURCES, EXPERTS * group)
    assert np.all(out.sum(-1) == ROW_SUM)
    grouped = out.reshape(MBS, LAYERS, SOURCES, EXPERTS, group).sum(-1)  # consecutive experts e*g .. e*g+g-1
    assert np.array_equal(grouped, trace.counts[2].transpose(1, 0, 2, 3))


def test_split_parts_are_even_on_average() -> None:
    counts = np.full((1, 1, 1, 2000, 2), 500, dtype=np.int64)
    out = replay(RoutingTrace(counts, np.array([0]), 1, "flat"), mbs=1, layers=1, sources=2000, experts=8,
                 target=1000)
    assert out.mean(axis=(0, 1, 2)) == pytest.approx(np.full(8, 125.0), rel=0.02)


@pytest.mark.parametrize("group", [2, 4])
def test_merging_experts_sums_consecutive_groups_exactly(group: int) -> None:
    trace = synthetic_trace(experts=8)
    out = replay(trace, step=1, experts=8 // group)
    expected = trace.counts[1].transpose(1, 0, 2, 3).reshape(MBS, LAYERS, SOURCES, 8 // group, group).sum(-1)
    assert np.array_equal(out, expected)
    assert np.all(out.sum(-1) == ROW_SUM)


@pytest.mark.parametrize("target", [0, 1, 7, 4096, 123_457])
def test_scaling_hits_the_target_sum_exactly(target: int) -> None:
    out = replay(synthetic_trace(), target=target, experts=EXPERTS * 2, sources=5)
    assert np.all(out.sum(-1) == target)
    assert np.all(out >= 0)


def test_scaling_preserves_shares_approximately() -> None:
    trace = synthetic_trace()
    out = replay(trace, step=0, target=1_000_000)
    recorded = trace.counts[0].transpose(1, 0, 2, 3) / ROW_SUM
    assert np.allclose(out / 1_000_000, recorded, atol=3e-3)


def test_recorded_zeros_stay_zero_when_scaling_up() -> None:
    counts = np.array([30, 0, 10, 0]).reshape(1, 1, 1, 1, 4)
    out = replay(RoutingTrace(counts, np.array([0]), 1, "z"), mbs=3, layers=1, sources=4, target=1000)
    assert np.all(out[..., [1, 3]] == 0) and np.all(out.sum(-1) == 1000)


def test_zero_row_becomes_uniform_multinomial() -> None:
    counts = np.zeros((1, 1, 1, 1, 4), dtype=np.int64)
    out = replay(RoutingTrace(counts, np.array([0]), 1, "empty"), mbs=1, layers=1, sources=5000, target=400)
    assert np.all(out.sum(-1) == 400)
    assert out.mean(axis=(0, 1, 2)) == pytest.approx(np.full(4, 100.0), rel=0.02)


def test_same_seed_same_loads_and_other_seed_other_loads() -> None:
    trace = synthetic_trace()
    a = replay(trace, step=1, experts=16, target=1000, seed=3)
    b = replay(trace, step=1, experts=16, target=1000, seed=3)
    c = replay(trace, step=1, experts=16, target=1000, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_the_trace_is_not_modified() -> None:
    trace = synthetic_trace()
    before = trace.counts.copy()
    replay(trace, experts=2, target=7)
    replay(trace, experts=8, target=7)
    assert np.array_equal(trace.counts, before)


@pytest.mark.parametrize("experts", [3, 6, 10])
def test_incompatible_expert_count_names_routing_trace(experts: int) -> None:
    with pytest.raises(SpecError, match=r"routing\.trace") as info:
        replay(synthetic_trace(), experts=experts)
    assert info.value.key == "routing.trace" and info.value.value == experts
    assert "E_trace = 4" in info.value.one_line()
    with pytest.raises(SpecError, match=r"routing\.trace"):
        trace_expert_shares(synthetic_trace(), LAYERS, experts)


@pytest.mark.parametrize("kwargs,key", [({"layers": 0}, "num_layers"), ({"mbs": 0}, "num_micro_batches"),
                                        ({"sources": 0}, "num_sources"), ({"step": -1}, "step"),
                                        ({"target": -1}, "assignments_per_source"),
                                        ({"target": 2**31}, "assignments_per_source")])
def test_bad_shapes_are_spec_errors(kwargs: dict, key: str) -> None:
    with pytest.raises(SpecError) as info:
        replay(synthetic_trace(), **kwargs)
    assert info.value.key == key


def test_empty_trace_is_a_spec_error() -> None:
    empty = RoutingTrace(np.zeros((0, 1, 1, 1, 4), dtype=np.int64), np.zeros(0, dtype=np.int64), None, "empty")
    with pytest.raises(SpecError, match=r"routing\.trace"):
        replay(empty)


def test_expert_shares_are_the_mean_row_share_per_mapped_layer() -> None:
    trace = synthetic_trace()
    shares = trace_expert_shares(trace, 5, EXPERTS)
    assert shares.shape == (5, EXPERTS)
    assert np.allclose(shares.sum(1), 1.0)
    expected = (trace.counts / ROW_SUM).mean(axis=(0, 2, 3))  # [LAYERS, EXPERTS]
    assert np.allclose(shares, expected[np.arange(5) % LAYERS])


def test_expert_shares_split_and_merge() -> None:
    trace = synthetic_trace(experts=8)
    base = trace_expert_shares(trace, LAYERS, 8)
    assert np.allclose(trace_expert_shares(trace, LAYERS, 16), np.repeat(base, 2, axis=1) / 2)
    assert np.allclose(trace_expert_shares(trace, LAYERS, 2), base.reshape(LAYERS, 2, 4).sum(-1))


def test_expert_shares_weigh_rows_equally_and_count_zero_rows_as_uniform() -> None:
    counts = np.array([[90, 10], [1, 0], [0, 0]]).reshape(1, 1, 1, 3, 2)
    shares = trace_expert_shares(RoutingTrace(counts, np.array([0]), 1, "z"), 1, 2)
    assert shares[0] == pytest.approx([(0.9 + 1.0 + 0.5) / 3, (0.1 + 0.0 + 0.5) / 3])


def test_expert_shares_match_the_mean_of_replayed_loads() -> None:
    trace = synthetic_trace()
    loads = np.stack([replay(trace, step=s, experts=8, target=1000, seed=s) for s in range(STEPS)])
    empirical = (loads / 1000).mean(axis=(0, 1, 3))  # [LAYERS, 8]
    assert np.allclose(empirical, trace_expert_shares(trace, LAYERS, 8), atol=0.02)
