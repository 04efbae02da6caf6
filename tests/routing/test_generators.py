import numpy as np
import pytest

from moesim.routing.generators import SyntheticRouter, cap_shares, expert_shares, zipf_shares
from moesim.spec import RoutingDistribution, RoutingSpec


def harmonic(n: int, s: float) -> float:
    return float(np.sum(np.arange(1, n + 1, dtype=float) ** -s))


@pytest.mark.parametrize("E,s,expected", [(8, 1.0, 2.94), (32, 0.5, 3.22), (64, 1.0, 13.5), (256, 0.5, 8.37)])
def test_zipf_max_over_mean_is_E_over_harmonic_number_when_uncapped(E, s, expected):
    shares = zipf_shares(E, s, top_k=1)
    assert shares.max() / shares.mean() == pytest.approx(E / harmonic(E, s), rel=1e-9)
    assert shares.max() / shares.mean() == pytest.approx(expected, abs=0.01)  # table in specs/placement.md


@pytest.mark.parametrize("E,k,s", [(32, 2, 2.0), (128, 8, 1.0), (8, 2, 3.0), (64, 8, 0.5)])
def test_top_k_caps_every_share_at_one_over_k(E, k, s):
    shares = zipf_shares(E, s, k)
    assert shares.sum() == pytest.approx(1.0)
    assert shares.max() <= 1 / k + 1e-12
    assert shares.max() / shares.mean() <= E / k + 1e-9
    assert np.all(np.diff(shares) <= 1e-15)  # still sorted hottest first


def test_cap_water_fills_proportionally():
    out = cap_shares(np.array([0.7, 0.2, 0.1]), 0.5)
    assert out == pytest.approx([0.5, 0.2 + 0.2 * 2 / 3, 0.1 + 0.2 / 3])


def test_expert_shares_permute_hot_experts_per_layer_and_are_seeded():
    spec = RoutingSpec(RoutingDistribution.ZIPF, 1.5)
    a = expert_shares(spec, 6, 16, 2, np.random.default_rng(3))
    b = expert_shares(spec, 6, 16, 2, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert np.allclose(a.sum(1), 1.0)
    assert len(set(a.argmax(1))) > 1  # hot expert differs between layers
    assert np.allclose(np.sort(a, axis=1), np.sort(a[0])[None, :])  # same skew level in every layer


def test_router_loads_shape_totals_and_determinism():
    loads = SyntheticRouter(RoutingSpec(), 3, 8, 2, np.random.default_rng(1)).next_step(5, 4, 512)
    assert loads.shape == (5, 3, 4, 8) and loads.dtype == np.int32
    assert np.all(loads.sum(-1) == 1024)
    again = SyntheticRouter(RoutingSpec(), 3, 8, 2, np.random.default_rng(1)).next_step(5, 4, 512)
    assert np.array_equal(loads, again)


def test_balanced_sampling_noise_is_small():
    loads = SyntheticRouter(RoutingSpec(), 1, 64, 8, np.random.default_rng(0)).next_step(1, 1, 16384)[0, 0, 0]
    assert 1.0 < loads.max() / loads.mean() < 1.1
