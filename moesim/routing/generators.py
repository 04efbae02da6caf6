"""Synthetic routing. Each MoE layer gets a base expert-share vector (its family drawn once, hot experts
randomly placed); a temporal model evolves it; per (micro-batch, source rank) variation perturbs it; the
top-k cap clips it; multinomial sampling turns it into counts.

Shapes: shares [layers, E] (rows sum to 1); SyntheticRouter.next_step gives loads [micro_batches, layers, sources, E]
(int32 counts of (token, expert) assignments; each row sums to tokens * top_k).
"""

from __future__ import annotations

import numpy as np

from moesim.spec.routing import RoutingDistribution, RoutingSpec, TemporalModel
from moesim.spec.simulation import RoutingDraws


def cap_shares(shares: np.ndarray, cap: float) -> np.ndarray:
    """Normalise the last axis, clip each share at `cap` and water-fill the excess onto the uncapped experts
    proportionally. A token picks an expert at most once, so with top-k routing a share is at most 1/k."""
    shares = np.asarray(shares, dtype=np.float64)
    shares = shares / shares.sum(axis=-1, keepdims=True)
    for _ in range(shares.shape[-1]):
        over = shares > cap * (1 + 1e-12)
        if not over.any():
            break
        excess = np.where(over, shares - cap, 0.0).sum(axis=-1, keepdims=True)
        shares = np.where(over, cap, shares)
        free = shares < cap * (1 - 1e-12)
        free_mass = np.where(free, shares, 0.0).sum(axis=-1, keepdims=True)
        shares = np.where(free, shares + excess * shares / np.maximum(free_mass, 1e-300), shares)
    return shares


def zipf_shares(num_experts: int, s: float, top_k: int) -> np.ndarray:
    """Share of the i-th hottest expert proportional to i^-s, capped at 1/top_k. Sorted hottest first."""
    ranks = np.arange(1, num_experts + 1, dtype=np.float64)
    return cap_shares(ranks ** -s, 1.0 / top_k)


def family_shares(distribution: RoutingDistribution, param: float, num_experts: int, top_k: int,
                  rng: np.random.Generator, hot_experts: int = 1, hot_fraction: float = 0.5) -> np.ndarray:
    """[E] one layer's base shares, capped at 1/top_k, hot experts at random positions.
    param: zipf s, dirichlet alpha or lognormal sigma (ignored by balanced and hot_set)."""
    perm = rng.permutation(num_experts)  # drawn for every family, so the family does not shift later draws
    if distribution is RoutingDistribution.BALANCED:
        sorted_shares = np.full(num_experts, 1.0 / num_experts)
    elif distribution is RoutingDistribution.ZIPF:
        sorted_shares = zipf_shares(num_experts, param, top_k)
    elif distribution is RoutingDistribution.DIRICHLET:
        sorted_shares = np.sort(rng.dirichlet(np.full(num_experts, param)) + 1e-12)[::-1]
    elif distribution is RoutingDistribution.LOGNORMAL:
        sorted_shares = np.sort(np.exp(param * rng.standard_normal(num_experts)))[::-1]
    elif distribution is RoutingDistribution.HOT_SET:
        h = min(hot_experts, num_experts)
        cold = (1 - hot_fraction) / (num_experts - h) if num_experts > h else 0.0
        sorted_shares = np.array([hot_fraction / h] * h + [cold] * (num_experts - h))
    else:  # pragma: no cover - TRACE is replayed, not generated
        raise AssertionError(f"no generator for {distribution}")
    shares = np.empty(num_experts)
    shares[perm] = cap_shares(sorted_shares, 1.0 / top_k)
    return shares


def expert_shares(spec: RoutingSpec, num_layers: int, num_experts: int, top_k: int,
                  rng: np.random.Generator) -> np.ndarray:
    """[num_layers, E] base shares of every MoE layer."""
    return np.stack([family_shares(*spec.layer_skew(layer), num_experts, top_k, rng, spec.hot_experts,
                                   spec.hot_fraction) for layer in range(num_layers)])


def normal_counts(rng: np.random.Generator, n: int, shares: np.ndarray) -> np.ndarray:
    """Counts [..., E] like multinomial(n, shares) from its Gaussian limit: mean n p and the exact covariance
    n (diag p - p p^T) (x = n p + sqrt(n) (y - p sum(y)), y = sqrt(p) z, z standard normal), clipped at zero and
    rounded through the cumulative sums, so every row sums to exactly n and no count is negative. Good where the
    expected counts n p are large; the rounding adds a variance of about 1/12 per count."""
    p = shares / shares.sum(axis=-1, keepdims=True)
    y = np.sqrt(p) * rng.standard_normal(p.shape)
    x = n * p + np.sqrt(n) * (y - p * y.sum(axis=-1, keepdims=True))
    np.maximum(x, 0.0, out=x)
    cum = np.cumsum(x, axis=-1)
    cum *= n / cum[..., -1:]
    whole = np.rint(cum)
    return np.diff(whole, axis=-1, prepend=0.0).astype(np.int32)


def expected_counts(n: int, shares: np.ndarray) -> np.ndarray:
    """int32 counts [..., E]: n·p rounded so that each row sums to exactly n (largest remainder: the floors, plus
    one for the rows' largest fractional parts, ties to the lower expert index). Deterministic."""
    p = shares / shares.sum(axis=-1, keepdims=True)
    exact = n * p
    counts = np.floor(exact).astype(np.int64)
    short = n - counts.sum(axis=-1, keepdims=True)  # [..., 1], in [0, E)
    order = np.argsort(-(exact - counts), axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(p.shape[-1]), axis=-1)
    return (counts + (ranks < short)).astype(np.int32)


def draw_counts(rng: np.random.Generator, n: int, shares: np.ndarray, draws: RoutingDraws) -> np.ndarray:
    """int32 counts [M, ...] of assignments per row of shares [M, ..., E], one leading index at a time: the
    multinomial's int64 temporaries stay one micro-batch large, and the Generator's stream is the same as one
    call over all rows (tests/routing/test_generators.py)."""
    out = np.empty(shares.shape, dtype=np.int32)
    for m in range(shares.shape[0]):
        if draws is RoutingDraws.EXACT:
            out[m] = rng.multinomial(n, shares[m])
        elif draws is RoutingDraws.NORMAL:
            out[m] = normal_counts(rng, n, shares[m])
        else:
            out[m] = expected_counts(n, shares[m])
    return out


class SyntheticRouter:
    """Stateful only in the temporal model's current shares; every draw comes from the Generator given."""

    def __init__(self, spec: RoutingSpec, num_layers: int, num_experts: int, top_k: int, rng: np.random.Generator,
                 draws: RoutingDraws = RoutingDraws.EXACT):
        self.spec, self.top_k, self.rng, self.draws = spec, top_k, rng, draws
        self.base = expert_shares(spec, num_layers, num_experts, top_k, rng)  # [L, E]
        self.current = self.base.copy()

    def next_step(self, num_micro_batches: int, num_sources: int, tokens_per_source: int) -> np.ndarray:
        """[M, L, S, E] loads of one step."""
        spec, rng = self.spec, self.rng
        if spec.temporal is TemporalModel.DRIFT:
            log_cur, log_base = np.log(self.current), np.log(self.base)
            noise = spec.drift_sigma * rng.standard_normal(self.current.shape)
            self.current = cap_shares(np.exp(spec.drift_rho * log_cur + (1 - spec.drift_rho) * log_base + noise),
                                      1.0 / self.top_k)
        per_mb = []
        for _ in range(num_micro_batches):
            if spec.temporal is TemporalModel.CHURN:
                self.current = self._churn(self.current)
            per_mb.append(self.current)
        shares = np.stack(per_mb)[:, :, None, :]  # [M, L, 1, E]
        if spec.source_sigma > 0:  # each source rank's micro-batch leans toward its own domain's experts
            z = rng.standard_normal((num_micro_batches, shares.shape[1], num_sources, shares.shape[-1]))
            shares = cap_shares(shares * np.exp(spec.source_sigma * z), 1.0 / self.top_k)
        else:
            shares = np.broadcast_to(shares, (num_micro_batches, shares.shape[1], num_sources, shares.shape[-1]))
        return draw_counts(rng, tokens_per_source * self.top_k, shares, self.draws)

    def _churn(self, shares: np.ndarray) -> np.ndarray:
        """Each of the top_k hottest experts of each layer swaps shares with a random colder expert with
        probability churn_rate: the hot set changes, the skew level does not."""
        shares = shares.copy()
        num_layers, num_experts = shares.shape
        hot = np.argsort(-shares, axis=1, kind="stable")[:, :self.top_k]
        swap = self.rng.random(hot.shape) < self.spec.churn_rate
        partner = np.argsort(-shares, axis=1, kind="stable")[:, self.top_k:]
        picks = self.rng.integers(0, max(num_experts - self.top_k, 1), size=hot.shape)
        for layer, j in zip(*np.nonzero(swap)):
            if partner.shape[1] == 0:
                break
            a, b = hot[layer, j], partner[layer, picks[layer, j]]
            shares[layer, [a, b]] = shares[layer, [b, a]]
        return shares
