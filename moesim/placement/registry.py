"""Policy kind -> (parameter model, policy class). The one place that knows every policy class; the parameter
models are declared in moesim.spec.placement_params."""

from __future__ import annotations

from moesim.placement.base import PlacementContext, PlacementPolicy
from moesim.placement.eplb import EplbParams, EplbPolicy
from moesim.placement.fastermoe import FasterMoeParams, FasterMoePolicy
from moesim.placement.flexmoe import FlexMoeParams, FlexMoePolicy
from moesim.placement.smartmoe import SmartMoeParams, SmartMoePolicy
from moesim.placement.static import StaticParams, StaticPolicy
from moesim.placement.ta_moe import TaMoeParams, TaMoePolicy
from moesim.spec.errors import SpecError
from moesim.spec.placement import PlacementPolicyKind, PlacementSpec

POLICIES: dict[PlacementPolicyKind, tuple[type, type]] = {
    PlacementPolicyKind.STATIC: (StaticParams, StaticPolicy),
    PlacementPolicyKind.FASTERMOE: (FasterMoeParams, FasterMoePolicy),
    PlacementPolicyKind.SMARTMOE: (SmartMoeParams, SmartMoePolicy),
    PlacementPolicyKind.FLEXMOE: (FlexMoeParams, FlexMoePolicy),
    PlacementPolicyKind.TA_MOE: (TaMoeParams, TaMoePolicy),
    PlacementPolicyKind.EPLB: (EplbParams, EplbPolicy),
}


def make_policy(spec: PlacementSpec | PlacementPolicyKind | str, ctx: PlacementContext,
                params: object = None) -> PlacementPolicy:
    """One MoE layer's policy. `spec`: a scenario's PlacementSpec (its params are used), or a policy kind
    (`PlacementPolicyKind.EPLB` or `"eplb"`) with `params`, that policy's parameter model (None: defaults)."""
    if isinstance(spec, PlacementSpec):  # the scenario reader has already typed its params
        params_cls, policy_cls = POLICIES[spec.policy]
        return policy_cls(ctx, spec.params if spec.params is not None else params_cls())
    names = [k.value for k in PlacementPolicyKind]
    if not isinstance(spec, PlacementPolicyKind) and spec not in names:
        raise SpecError("policy", spec, f"one of {', '.join(names)}")
    kind = PlacementPolicyKind(spec)
    params_cls, policy_cls = POLICIES[kind]
    if params is not None and not isinstance(params, params_cls):
        raise SpecError(kind.value, params, f"a {params_cls.__name__} (or None for the defaults)")
    return policy_cls(ctx, params if params is not None else params_cls())
