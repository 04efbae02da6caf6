"""How long to simulate and with which master seed."""

from __future__ import annotations

from moesim.spec.base import INT_MAX, SpecModel, spec_field

MAX_STEPS = 100_000


class SimulationSpec(SpecModel):
    steps: int = spec_field(3, help="measured steps", unit="steps", ge=1, le=MAX_STEPS)
    warmup_steps: int = spec_field(0, help="simulated first and left out of the statistics", unit="steps", ge=0,
                                   le=MAX_STEPS)
    seed: int = spec_field(0, help="master seed: one SeedSequence spawns every component's generator", ge=0,
                           le=INT_MAX)
