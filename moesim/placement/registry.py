"""Policy kind -> (parameter dataclass, policy class). The one place that knows every policy."""

from __future__ import annotations

from moesim.placement.base import PlacementContext, PlacementPolicy
from moesim.placement.eplb import EplbParams, EplbPolicy
from moesim.placement.fastermoe import FasterMoeParams, FasterMoePolicy
from moesim.placement.flexmoe import FlexMoeParams, FlexMoePolicy
from moesim.placement.smartmoe import SmartMoeParams, SmartMoePolicy
from moesim.placement.static import StaticParams, StaticPolicy
from moesim.placement.ta_moe import TaMoeParams, TaMoePolicy
from moesim.spec.placement import PlacementPolicyKind, PlacementSpec

POLICIES: dict[PlacementPolicyKind, tuple[type, type]] = {
    PlacementPolicyKind.STATIC: (StaticParams, StaticPolicy),
    PlacementPolicyKind.FASTERMOE: (FasterMoeParams, FasterMoePolicy),
    PlacementPolicyKind.SMARTMOE: (SmartMoeParams, SmartMoePolicy),
    PlacementPolicyKind.FLEXMOE: (FlexMoeParams, FlexMoePolicy),
    PlacementPolicyKind.TA_MOE: (TaMoeParams, TaMoePolicy),
    PlacementPolicyKind.EPLB: (EplbParams, EplbPolicy),
}


def make_policy(spec: PlacementSpec, ctx: PlacementContext) -> PlacementPolicy:
    params_cls, policy_cls = POLICIES[spec.policy]
    return policy_cls(ctx, spec.params if spec.params is not None else params_cls())
