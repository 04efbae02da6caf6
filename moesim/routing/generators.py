"""Synthetic routing: expert shares per layer, then multinomial token counts per (micro-batch, source rank).

Shapes: shares [layers, E] (each row sums to 1); loads [micro_batches, layers, sources, E] (int32 counts of
(token, expert) assignments; each row sums to tokens * top_k).
"""

from __future__ import annotations

import numpy as np

from moesim.spec.routing import RoutingDistribution, RoutingSpec


def cap_shares(shares: np.ndarray, cap: float) -> np.ndarray:
    """Clip shares at `cap` and water-fill the excess onto the uncapped experts, proportionally.
    A token picks an expert at most once, so with top-k routing an expert's share is at most 1/k."""
    shares = np.asarray(shares, dtype=np.float64) / np.sum(shares)
    for _ in range(shares.size):
        over = shares > cap * (1 + 1e-12)
        if not over.any():
            break
        excess = np.sum(shares[over] - cap)
        shares = np.where(over, cap, shares)
        free = shares < cap * (1 - 1e-12)
        shares[free] += excess * shares[free] / np.sum(shares[free])
    return shares


def zipf_shares(num_experts: int, s: float, top_k: int) -> np.ndarray:
    """Share of the i-th hottest expert proportional to i^-s, capped at 1/top_k. Sorted hottest first."""
    ranks = np.arange(1, num_experts + 1, dtype=np.float64)
    return cap_shares(ranks ** -s, 1.0 / top_k)


def expert_shares(spec: RoutingSpec, num_layers: int, num_experts: int, top_k: int,
                  rng: np.random.Generator) -> np.ndarray:
    """[num_layers, E] expected share of assignments per expert. Each layer's hot experts are a random
    permutation (drawn from rng even when balanced, so the skew level does not change which experts are hot)."""
    if spec.distribution is RoutingDistribution.BALANCED:
        base = np.full(num_experts, 1.0 / num_experts)
    elif spec.distribution is RoutingDistribution.ZIPF:
        base = zipf_shares(num_experts, spec.zipf_s, top_k)
    else:  # pragma: no cover - the Enum is closed; a new member must add its generator here
        raise AssertionError(f"no generator for {spec.distribution}")
    perms = np.stack([rng.permutation(num_experts) for _ in range(num_layers)])
    shares = np.empty((num_layers, num_experts))
    np.put_along_axis(shares, perms, np.broadcast_to(base, shares.shape), axis=1)
    return shares


def sample_loads(shares: np.ndarray, tokens_per_source: int, top_k: int, num_sources: int,
                 num_micro_batches: int, rng: np.random.Generator) -> np.ndarray:
    """[micro_batches, layers, sources, E] int32 assignment counts: multinomial(tokens*k, shares[layer])."""
    num_layers, _ = shares.shape
    counts = rng.multinomial(tokens_per_source * top_k, shares[None, :, None, :],
                             size=(num_micro_batches, num_layers, num_sources))
    return counts.astype(np.int32)
