"""Run one placement policy over a sequence of load matrices without a Scenario or the simulator: what a user
calls to see what a policy decides and how balanced it leaves the GPUs.

Shapes: T = steps, M = micro-batches, G = EP ranks, E = logical experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.placement.base import Placement, PlacementPolicy, balance_ratio
from moesim.spec.errors import require


@dataclass(frozen=True)
class PolicyRun:
    """placements: the placement that served each step (T of them). loads [T, M, G_src, E]: each step's demand
    after the policy's routing-side transform (TA-MoE, FasterMoE's topology gate; the input otherwise)."""

    placements: tuple[Placement, ...]
    loads: np.ndarray

    def rank_load(self) -> np.ndarray:
        """[T, G] rows each rank computes per step (micro-batches summed)."""
        return np.stack([p.rank_load(step.sum(0)) for p, step in zip(self.placements, self.loads)])

    def balance_ratio(self) -> np.ndarray:
        """[T] GPU max / mean load per step (1 = perfectly balanced)."""
        return balance_ratio(self.rank_load())

    def changes(self) -> int:
        """Steps whose placement differs from the one before (the initial placement counts as step -1)."""
        return sum(not b.same_as(a) for a, b in zip(self.placements, self.placements[1:]))


def replay(policy: PlacementPolicy, loads: np.ndarray) -> PolicyRun:
    """Drive `policy` the way the simulator drives one MoE layer's: start from policy.initial(); each step, let
    it transform the demand (route), then decide the step's placement (place) from it.

    loads [T, G_src, E] or [T, M, G_src, E]: assignments from each source EP rank to each expert, per step. The
    simulator also rounds transformed demand to whole tokens; this does not (it changes nothing otherwise)."""
    loads = np.asarray(loads, dtype=np.float64)
    require(loads.ndim in (3, 4) and loads.shape[0] >= 1, "loads", loads.shape,
            "an array [steps, source ranks, experts] or [steps, micro-batches, source ranks, experts]")
    if loads.ndim == 3:
        loads = loads[:, None]  # one micro-batch per step
    ctx = getattr(policy, "ctx", None)
    if ctx is not None:
        require(loads.shape[-2:] == (ctx.num_ranks, ctx.num_experts), "loads", loads.shape,
                f"[..., {ctx.num_ranks} source ranks, {ctx.num_experts} experts] to match the policy's context")
    require(bool((loads >= 0).all()), "loads", "negative entries", "non-negative token counts")
    current = policy.initial()
    placements, routed = [], np.empty_like(loads)
    for step, demand in enumerate(loads):
        routed[step] = policy.route(demand, current)
        current = policy.place(step, routed[step], current)
        placements.append(current)
    return PolicyRun(tuple(placements), routed)
