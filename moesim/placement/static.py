"""The static expert-parallel baseline: rank g holds experts g*E/G .. (g+1)*E/G - 1 for the whole run.

Every other policy is compared against it, so it never looks at the loads and never moves anything.
"""

from __future__ import annotations

import numpy as np

from moesim.placement.base import Placement, PlacementContext, contiguous
from moesim.spec.placement_params import StaticParams


class StaticPolicy:
    """PlacementPolicy that keeps the contiguous layout (extra memory slots stay empty)."""

    def __init__(self, ctx: PlacementContext, params: StaticParams | None = None):
        self.ctx = ctx
        self.params = StaticParams() if params is None else params

    def initial(self) -> Placement:
        """[G, S] contiguous placement, S = ctx.slots_per_rank."""
        return contiguous(self.ctx.num_experts, self.ctx.num_ranks, self.ctx.slots_per_rank)

    def place(self, step: int, loads: np.ndarray, current: Placement) -> Placement:
        """loads [M, G_src, E] is ignored: the layout never changes."""
        return current

    def route(self, loads: np.ndarray, placement: Placement) -> np.ndarray:
        """loads [M, G_src, E] unchanged: the baseline does not touch the gate."""
        return loads
