"""How long to simulate and with which master seed."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.spec.errors import require


@dataclass(frozen=True)
class SimulationSpec:
    steps: int = 3  # measured steps
    warmup_steps: int = 0  # simulated first and left out of the statistics
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.steps, int) and 1 <= self.steps <= 100_000, "steps", self.steps,
                "an integer in [1, 100000]")
        require(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= 100_000, "warmup_steps",
                self.warmup_steps, "an integer in [0, 100000]")
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
