"""Routing presets hit their stated skew; temporal models and source variation do what they say."""

import numpy as np
import pytest

from moesim.routing.generators import SyntheticRouter
from moesim.spec.routing import RoutingDistribution, RoutingSpec, TemporalModel
from moesim.spec.routing_presets import ROUTING_PRESETS


def global_max_over_mean(spec, E, k, steps=2, M=4, S=8, T=4096, L=8, seed=0):
    router = SyntheticRouter(spec, L, E, k, np.random.default_rng(seed))
    loads = np.concatenate([router.next_step(M, S, T).sum(2) for _ in range(steps)])  # [steps*M, L, E]
    return float((loads.max(-1) / loads.mean(-1)).mean())


@pytest.mark.parametrize("name,E,k,lo,hi", [
    ("balanced", 128, 8, 1.0, 1.15),
    ("aux-loss", 64, 8, 1.5, 2.0), ("aux-loss", 128, 8, 1.5, 2.0),
    ("domain-skew", 128, 8, 6.0, 8.5),
    ("no-aux-collapse", 32, 2, 9.0, 16.0),
])
def test_presets_hit_their_stated_skew(name, E, k, lo, hi):
    value = global_max_over_mean(RoutingSpec(**ROUTING_PRESETS[name]), E, k)
    assert lo <= value <= hi, value


def test_no_family_exceeds_the_top_k_cap():
    for spec in (RoutingSpec(RoutingDistribution.ZIPF, zipf_s=3.0), RoutingSpec(RoutingDistribution.DIRICHLET,
                 dirichlet_alpha=0.05), RoutingSpec(RoutingDistribution.LOGNORMAL, lognormal_sigma=4.0),
                 RoutingSpec(RoutingDistribution.HOT_SET, hot_experts=1, hot_fraction=0.9)):
        router = SyntheticRouter(spec, 4, 32, 4, np.random.default_rng(0))
        assert np.all(router.base.max(-1) <= 0.25 + 1e-12)


def test_churn_changes_the_hot_set_at_the_given_rate_and_static_does_not():
    k, E = 8, 128
    spec = RoutingSpec(RoutingDistribution.LOGNORMAL, lognormal_sigma=1.5, temporal=TemporalModel.CHURN, churn_rate=0.2)
    router = SyntheticRouter(spec, 1, E, k, np.random.default_rng(0))
    changed = []
    current = router.current
    for _ in range(400):
        nxt = router._churn(current)
        changed.append(1 - len(set(np.argsort(-current[0])[:k]) & set(np.argsort(-nxt[0])[:k])) / k)
        current = nxt
    assert np.mean(changed) == pytest.approx(0.2, abs=0.04)
    assert np.allclose(np.sort(current[0]), np.sort(router.base[0]))  # same skew level, other experts
    static = SyntheticRouter(RoutingSpec(RoutingDistribution.LOGNORMAL, lognormal_sigma=1.5), 1, E, k,
                             np.random.default_rng(0))
    static.next_step(4, 2, 1024)
    assert np.array_equal(static.current, static.base)


def test_drift_moves_the_shares_and_stays_near_the_base():
    spec = RoutingSpec(RoutingDistribution.ZIPF, zipf_s=1.0, temporal=TemporalModel.DRIFT, drift_rho=0.8,
                       drift_sigma=0.2)
    router = SyntheticRouter(spec, 2, 32, 2, np.random.default_rng(0))
    for _ in range(50):
        router.next_step(1, 1, 256)
    assert not np.allclose(router.current, router.base)
    corr = np.corrcoef(np.log(router.current[0]), np.log(router.base[0]))[0, 1]
    assert corr > 0.8


def test_source_variation_makes_ranks_differ():
    flat = SyntheticRouter(RoutingSpec(), 1, 64, 8, np.random.default_rng(0)).next_step(1, 8, 8192)[0, 0]
    varied = SyntheticRouter(RoutingSpec(source_sigma=1.0), 1, 64, 8,
                             np.random.default_rng(0)).next_step(1, 8, 8192)[0, 0]
    spread = lambda x: float(np.std(x / x.sum(-1, keepdims=True), axis=0).mean())  # noqa: E731
    assert spread(varied) > 4 * spread(flat)


def test_router_is_deterministic_per_seed():
    spec = RoutingSpec(**ROUTING_PRESETS["domain-skew"])
    a = SyntheticRouter(spec, 3, 64, 4, np.random.default_rng(5)).next_step(3, 4, 512)
    b = SyntheticRouter(spec, 3, 64, 4, np.random.default_rng(5)).next_step(3, 4, 512)
    assert np.array_equal(a, b)
