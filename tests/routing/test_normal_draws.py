"""Routing counts: the exact draw is the same stream whether made at once or per micro-batch, and the optional
normal approximation (simulation.routing_draws: normal) has the multinomial's moments and sums exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.loader import parse_scenario
from moesim.metrics.summary import summarize
from moesim.routing.generators import draw_counts, normal_counts, zipf_shares
from moesim.sim.simulate import simulate
from moesim.spec.simulation import RoutingDraws

ROOT = Path(__file__).resolve().parents[2]


def test_exact_draws_per_micro_batch_are_the_one_call_stream():
    shares = np.broadcast_to(np.random.default_rng(1).dirichlet(np.ones(64), size=(4, 3, 1)), (4, 3, 16, 64))
    whole = np.random.default_rng(5).multinomial(1000, shares)
    per_mb = draw_counts(np.random.default_rng(5), 1000, shares, RoutingDraws.EXACT)
    assert per_mb.dtype == np.int32 and np.array_equal(whole, per_mb)


def test_normal_counts_sum_exactly_are_whole_and_never_negative():
    shares = np.random.default_rng(2).dirichlet(np.full(32, 0.3), size=(50, 7))  # many tiny shares
    counts = normal_counts(np.random.default_rng(0), 4096, shares)
    assert counts.dtype == np.int32 and (counts >= 0).all()
    assert (counts.sum(-1) == 4096).all()


@pytest.mark.parametrize("n", [2048, 32768])
def test_normal_counts_have_the_multinomial_moments(n):
    p = zipf_shares(64, 1.0, 8)  # hottest expert 1/8 of the assignments, coldest about n/600
    draws = normal_counts(np.random.default_rng(0), n, np.broadcast_to(p, (20_000, 64))).astype(np.float64)
    exact = np.random.default_rng(0).multinomial(n, np.broadcast_to(p, (20_000, 64))).astype(np.float64)
    mean_sd = np.sqrt(n * p * (1 - p) / len(draws))
    assert np.all(np.abs(draws.mean(0) - n * p) < 5 * mean_sd + 0.05)
    var = n * p * (1 - p)
    assert np.allclose(draws.var(0), var, rtol=0.06, atol=0.2)  # 20k samples: sd of a variance estimate ~1 %
    cov = np.cov(draws[:, :2].T)[0, 1]
    assert cov == pytest.approx(-n * p[0] * p[1], rel=0.1)
    # what a simulation reads: the busiest expert of a row, on average
    assert draws.max(-1).mean() == pytest.approx(exact.max(-1).mean(), rel=0.005)


def test_a_simulation_with_normal_draws_stays_within_half_a_percent():
    doc = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    doc["simulation"] = {"steps": 3, "seed": 0}
    doc["routing"] = {"distribution": "zipf", "zipf_s": 1.0}
    exact = summarize(simulate(parse_scenario(doc, "q", ROOT)))
    doc["simulation"]["routing_draws"] = "normal"
    normal = summarize(simulate(parse_scenario(doc, "q", ROOT)))
    assert normal.step_time_s == pytest.approx(exact.step_time_s, rel=0.005)
    assert normal.expert_load_max_over_mean == pytest.approx(exact.expert_load_max_over_mean, rel=0.01)
    assert normal.step_time_s != exact.step_time_s  # the draws did change: the option is not a no-op


def test_expected_counts_are_the_rounded_means_and_sum_exactly():
    shares = np.array([[0.5, 0.25, 0.125, 0.125], [0.3, 0.3, 0.3, 0.1], [1.0, 1.0, 1.0, 0.0]])
    counts = draw_counts(np.random.default_rng(0), 10, shares[None], RoutingDraws.EXPECTED)[0]
    assert counts.tolist() == [[5, 3, 1, 1], [3, 3, 3, 1], [4, 3, 3, 0]]  # ties go to the lower index
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(64), size=(3, 5))
    c = draw_counts(rng, 32768, p[None], RoutingDraws.EXPECTED)[0]
    assert (c.sum(-1) == 32768).all() and np.abs(c - 32768 * p).max() < 1.0
    assert np.array_equal(c, draw_counts(np.random.default_rng(9), 32768, p[None], RoutingDraws.EXPECTED)[0])
