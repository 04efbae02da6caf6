"""How the router spreads tokens over experts (the synthetic or recorded skew)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from moesim.spec.errors import require


class RoutingDistribution(Enum):
    BALANCED = "balanced"  # uniform expert probabilities; only multinomial sampling noise
    ZIPF = "zipf"  # the i-th hottest expert gets a share proportional to i^-s (capped at 1/top_k)


@dataclass(frozen=True)
class RoutingSpec:
    distribution: RoutingDistribution = RoutingDistribution.BALANCED
    zipf_s: float = 0.0  # Zipf exponent; 0 is uniform
    seed: int | None = None  # None: derived from simulation.seed

    def __post_init__(self) -> None:
        require(0 <= self.zipf_s <= 10, "zipf_s", self.zipf_s, "a number in [0, 10]")
        require(self.distribution is RoutingDistribution.ZIPF or self.zipf_s == 0, "zipf_s", self.zipf_s,
                "only with distribution: zipf")
        require(self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "seed", self.seed,
                "an integer >= 0")
