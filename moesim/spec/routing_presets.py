"""Named routing behaviours (../shared/specs/placement.md §8), as RoutingSpec field values.
Measured expert max/mean of the global per-micro-batch loads (moesim's own generator, 4,096 tokens x 8
sources, seed 0) is quoted next to each; see tests/routing/test_presets.py."""

from __future__ import annotations

from moesim.spec.routing import RoutingDistribution, TemporalModel

ROUTING_PRESETS: dict[str, dict] = {
    # multinomial noise only: max/mean ~1.1 at E=64..256, k=8
    "balanced": {"distribution": RoutingDistribution.BALANCED},
    # a model trained with an auxiliary balancing loss: max/mean ~1.5-2 at E=64..256 (DeepSeek MaxVio 0.5-0.7)
    "aux-loss": {"distribution": RoutingDistribution.LOGNORMAL, "lognormal_sigma": 0.25},
    # domain-pure micro-batches (TopoEP on Qwen3-30B-A3B): max/mean ~7 at E=128, k=8; each top-k hot expert is
    # swapped for a cold one with probability 0.18 per micro-batch (16-20 % reported)
    "domain-skew": {"distribution": RoutingDistribution.LOGNORMAL, "lognormal_sigma": 1.0, "source_sigma": 0.5,
                    "temporal": TemporalModel.CHURN, "churn_rate": 0.18},
    # no auxiliary loss, collapsed and stable (the SmartMoE trace): max/mean ~10 at E=32, k=2; the top-k cap
    # (E/k) binds for larger E
    "no-aux-collapse": {"distribution": RoutingDistribution.ZIPF, "zipf_s": 1.2},
}
