import numpy as np
import pytest

from moesim.routing.capacity import apply_gate, capacity
from moesim.spec.routing import CapacityScope, DropPolicy, GateKind, GateSpec


def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("tokens,k,E,cf,minimum,expected", [
    (2048, 2, 8, 1.0, 0, 512), (2048, 2, 8, 1.25, 0, 640), (1000, 1, 3, 1.0, 0, 334), (10, 2, 64, 1.0, 4, 4),
    (4096, 8, 256, 2.0, 0, 256)])
def test_capacity_formula(tokens, k, E, cf, minimum, expected):
    assert capacity(tokens, k, E, cf, minimum) == expected


def loads(shape=(5, 4, 16), tokens=512, k=2, s=1.0):
    shares = np.arange(1, shape[-1] + 1, dtype=float) ** -s
    return np.random.default_rng(1).multinomial(tokens * k, shares / shares.sum(), size=shape[:-1])


def test_per_source_drops_are_max_of_zero_and_count_minus_capacity():
    x = loads()
    gate = GateSpec(capacity_factor=1.0)
    res = apply_gate(x, gate, 512, 2, rng())
    cap = capacity(512, 2, 16, 1.0)
    assert np.array_equal(res.sent, np.minimum(x, cap))
    assert np.array_equal(res.dropped, np.maximum(0, x - cap).sum((-2, -1)))
    assert np.array_equal(res.computed, np.minimum(x, cap).sum(-2))


def test_global_capacity_keeps_exactly_min_of_total_and_capacity():
    x = loads()
    res = apply_gate(x, GateSpec(capacity_factor=1.0, scope=CapacityScope.GLOBAL), 512, 2, rng())
    cap = capacity(512 * 4, 2, 16, 1.0)
    assert np.array_equal(res.sent.sum(-2), np.minimum(x.sum(-2), cap))
    assert np.all(res.sent <= x)


@pytest.mark.parametrize("cf", [0.5, 1.0, 1.25, 2.0])
@pytest.mark.parametrize("s", [0.0, 0.7, 1.5])
def test_per_source_capacity_drops_at_least_as_much_as_global(cf, s):
    x = loads(s=s)
    per = apply_gate(x, GateSpec(capacity_factor=cf), 512, 2, rng()).dropped
    glob = apply_gate(x, GateSpec(capacity_factor=cf, scope=CapacityScope.GLOBAL), 512, 2, rng()).dropped
    assert np.all(per >= glob)


def test_dropless_keeps_everything_and_adaptive_capacity_drops_nothing():
    x = loads()
    for gate in (GateSpec(), GateSpec(capacity_factor=0.0), GateSpec(capacity_factor=0.0, scope=CapacityScope.GLOBAL)):
        res = apply_gate(x, gate, 512, 2, rng())
        assert np.all(res.dropped == 0)
    capped = apply_gate(x, GateSpec(capacity_factor=-1.0), 512, 2, rng())  # adaptive, at most CF=1 capacity
    fixed = apply_gate(x, GateSpec(capacity_factor=1.0), 512, 2, rng())
    assert np.array_equal(capped.dropped, fixed.dropped)


def test_padding_costs_compute_and_bytes():
    x = loads()
    res = apply_gate(x, GateSpec(capacity_factor=1.25, pad_to_capacity=True), 512, 2, rng())
    cap = capacity(512, 2, 16, 1.25)
    assert np.all(res.sent == cap)
    assert np.array_equal(res.padding, (cap - np.minimum(x, cap)).sum((-2, -1)))
    adaptive = apply_gate(x, GateSpec(capacity_factor=0.0, pad_to_capacity=True), 512, 2, rng())
    assert np.all(adaptive.sent == x.max(-1, keepdims=True))  # Tutel: pads to the actual maximum


def test_first_choices_are_dropped_last_under_probs_and_proportionally_under_position():
    x = loads(s=2.0)
    probs = apply_gate(x, GateSpec(capacity_factor=1.0), 512, 2, rng())
    position = apply_gate(x, GateSpec(capacity_factor=1.0, drop_policy=DropPolicy.POSITION), 512, 2, rng())
    deepspeed = apply_gate(x, GateSpec(capacity_factor=1.0, drop_policy=DropPolicy.POSITION,
                                       first_choice_priority=True), 512, 2, rng())
    assert np.allclose(probs.first_choices, 512 * 4, rtol=0.1)
    assert np.all(probs.dropped_first <= position.dropped_first)
    assert np.array_equal(probs.dropped_first, deepspeed.dropped_first)
    # position: dropped first choices ~ dropped / k
    assert position.dropped_first.sum() == pytest.approx(position.dropped.sum() / 2, rel=0.05)


def test_expert_choice_is_balanced_and_estimates_unrouted_tokens():
    x = loads(s=2.0)
    res = apply_gate(x, GateSpec(kind=GateKind.EXPERT_CHOICE, capacity_factor=2.0), 512, 2, rng())
    cap = capacity(512, 1, 16, 2.0)
    assert np.all(res.sent == cap) and np.all(res.dropped == 0)
    assert res.unrouted_tokens[0] == pytest.approx(4 * 512 * (1 - cap / 512) ** 16)


def test_gate_spec_rejects_contradictions():
    from moesim.spec.errors import SpecError
    with pytest.raises(SpecError):
        GateSpec(pad_to_capacity=True)
    with pytest.raises(SpecError):
        GateSpec(kind=GateKind.EXPERT_CHOICE)
    with pytest.raises(SpecError):
        GateSpec(capacity_factor=1.0, first_choice_priority=True)
