"""How the router spreads tokens over experts (the synthetic or recorded skew) and what the gate keeps."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, model_validator

from moesim.spec.base import LISTS_AS_TUPLES, Count, SpecEnum, SpecModel, spec_field
from moesim.spec.bounds import INT32_MAX, MAX_EXPERTS
from moesim.spec.errors import require
from moesim.spec.trace import RoutingTrace


class RoutingDistribution(SpecEnum):
    """Family of each layer's base expert-share vector (drawn once per layer from the seeded generator)."""

    BALANCED = "balanced"  # uniform; only multinomial sampling noise
    ZIPF = "zipf"  # the i-th hottest expert gets a share proportional to i^-s
    DIRICHLET = "dirichlet"  # one Dirichlet(alpha * 1) draw per layer
    LOGNORMAL = "lognormal"  # shares proportional to exp(sigma * N(0, 1))
    HOT_SET = "hot_set"  # `hot_experts` experts share `hot_fraction` of the assignments equally
    TRACE = "trace"  # replay a recorded trace


class TemporalModel(SpecEnum):
    STATIC = "static"  # the base shares never change
    DRIFT = "drift"  # AR(1) on log-shares, once per step: x <- rho*x + (1-rho)*base + sigma*N(0,1)
    CHURN = "churn"  # per micro-batch, each of the top_k hottest experts swaps with a cold one w.p. churn_rate


class LayerSkew(SpecModel):
    """One layer's family and parameter (zipf: s, dirichlet: alpha, lognormal: sigma), e.g. from a fit."""

    distribution: RoutingDistribution = spec_field(help="zipf, dirichlet or lognormal")
    param: float = spec_field(help="the family's parameter: zipf s, dirichlet alpha or lognormal sigma", ge=0)

    @model_validator(mode="after")
    def _family(self) -> LayerSkew:
        require(self.distribution in _PARAM_OF, "distribution", self.distribution.value,
                "zipf, dirichlet or lognormal")
        require(self.distribution is not RoutingDistribution.DIRICHLET or self.param > 0,
                "param", self.param, "a number >= 0 (> 0 for dirichlet)")
        return self


_PARAM_OF = {RoutingDistribution.ZIPF: "zipf_s", RoutingDistribution.DIRICHLET: "dirichlet_alpha",
             RoutingDistribution.LOGNORMAL: "lognormal_sigma"}
_OWNER = {"zipf_s": RoutingDistribution.ZIPF, "dirichlet_alpha": RoutingDistribution.DIRICHLET,
          "lognormal_sigma": RoutingDistribution.LOGNORMAL, "hot_experts": RoutingDistribution.HOT_SET,
          "hot_fraction": RoutingDistribution.HOT_SET}


class RoutingSpec(SpecModel):
    """A preset, a synthetic family, a trace to replay or a fitted trace; keys written next to a preset override
    its values."""

    model_config = ConfigDict(arbitrary_types_allowed=True)  # the trace: numpy arrays

    distribution: RoutingDistribution = spec_field(RoutingDistribution.BALANCED,
                                                   help="family of each layer's base expert-share vector")
    zipf_s: float = spec_field(0.0, help="zipf: the i-th hottest expert gets a share proportional to i^-s",
                               ge=0.0, le=10.0)
    dirichlet_alpha: float = spec_field(1.0, help="dirichlet: concentration of the per-layer draw", gt=0.0,
                                        le=1e6)
    lognormal_sigma: float = spec_field(1.0, help="lognormal: shares proportional to exp(sigma * N(0, 1))",
                                        ge=0.0, le=20.0)
    hot_experts: Count = spec_field(1, help="hot_set: experts sharing hot_fraction", unit="experts", ge=1,
                                    le=MAX_EXPERTS)
    hot_fraction: float = spec_field(0.5, help="hot_set: fraction of the assignments the hot experts get",
                                     unit="(fraction)", gt=0.0, lt=1.0)
    per_layer: Annotated[tuple[LayerSkew, ...], LISTS_AS_TUPLES] = spec_field(
        (), in_file=False, help="overrides `distribution` for layer l with per_layer[l % len] (from a fit)")
    source_sigma: float = spec_field(0.0, help="per (micro-batch, source rank) log-normal variation of the "
                                     "shares: domain skew", ge=0.0, le=10.0)
    temporal: TemporalModel = spec_field(TemporalModel.STATIC, help="how the shares change over time")
    drift_rho: float = spec_field(0.9, help="drift: AR(1) coefficient per step", ge=0.0, le=1.0)
    drift_sigma: float = spec_field(0.1, help="drift: noise of the AR(1) on log-shares", ge=0.0, le=10.0)
    churn_rate: float = spec_field(0.0, help="churn: probability that a hot expert swaps with a cold one",
                                   unit="(probability per micro-batch)", ge=0.0, le=1.0)
    trace: RoutingTrace | None = spec_field(None, in_file=False, help="the trace replayed (distribution: trace)")
    trace_ref: str = spec_field("", in_file=False, help="where the trace or fit came from (for reports)")
    preset: str = spec_field("", help="start from this routing preset (moesim.spec.routing_presets); the other "
                                      "keys override its values")
    seed: Count | None = spec_field(None, help="routing seed; null: derived from simulation.seed", ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> RoutingSpec:
        for key, owner in _OWNER.items():  # a parameter of another family is a mistake, not a no-op
            default = type(self).model_fields[key].default
            require(getattr(self, key) == default or self.distribution is owner, key, getattr(self, key),
                    f"only with distribution: {owner.value}")
        require((self.trace is not None) == (self.distribution is RoutingDistribution.TRACE), "trace",
                self.trace_ref or None, "a trace exactly when distribution is trace")
        return self

    def layer_skew(self, layer: int) -> tuple[RoutingDistribution, float]:
        """Family and parameter of a (MoE-layer index) layer."""
        if self.per_layer:
            ls = self.per_layer[layer % len(self.per_layer)]
            return ls.distribution, ls.param
        param = getattr(self, _PARAM_OF[self.distribution]) if self.distribution in _PARAM_OF else 0.0
        return self.distribution, param


class GateKind(SpecEnum):
    TOKEN_CHOICE = "token_choice"  # each token picks its top-k experts
    EXPERT_CHOICE = "expert_choice"  # each expert picks its top-C tokens (Zhou et al. 2022)


class CapacityScope(SpecEnum):
    PER_SOURCE = "per_source"  # each rank drops its own tokens before dispatch (Megatron, DeepSpeed)
    GLOBAL = "global"  # one capacity per expert over all sources of the EP group (FastMoE Switch gate)


class DropPolicy(SpecEnum):
    PROBS = "probs"  # keep the highest-probability assignments: first choices go first (Megatron default)
    POSITION = "position"  # keep the earliest tokens in the sequence, whatever their choice rank


class GateSpec(SpecModel):
    """Capacity semantics (../shared/specs/placement.md §1). capacity = ceil(k*T/E*CF), at least min_capacity.
    capacity_factor None is dropless; <= 0 is Tutel's adaptive capacity (0: the actual maximum; < 0: the actual
    maximum, at most ceil(k*T/E*|CF|))."""

    kind: GateKind = spec_field(GateKind.TOKEN_CHOICE, help="token_choice (top-k experts per token) or "
                                "expert_choice (top-C tokens per expert)")
    capacity_factor: float | None = spec_field(None, help="null: dropless; > 0: capacity = ceil(k*T/E*CF); <= 0: "
                                               "adaptive (Tutel)", unit="(null = dropless; <= 0 = adaptive)",
                                               ge=-1e6, le=1e6)
    scope: CapacityScope = spec_field(CapacityScope.PER_SOURCE, help="per_source (Megatron, DeepSpeed) or global "
                                      "(FastMoE Switch gate)")
    min_capacity: Count = spec_field(0, help="capacity never below this", unit="tokens", ge=0, le=INT32_MAX)
    drop_policy: DropPolicy = spec_field(DropPolicy.PROBS, help="which assignments are kept when over capacity")
    first_choice_priority: bool = spec_field(False, help="with drop_policy position: DeepSpeed fills first "
                                             "choices first")
    pad_to_capacity: bool = spec_field(False, help="every expert computes and receives exactly `capacity` rows")

    @model_validator(mode="after")
    def _consistent(self) -> GateSpec:
        cf = self.capacity_factor
        require(not self.pad_to_capacity or cf is not None, "pad_to_capacity", True,
                "false when capacity_factor is null (dropless has no capacity to pad to)")
        require(not self.first_choice_priority or self.drop_policy is DropPolicy.POSITION, "first_choice_priority",
                True, "only with drop_policy: position (drop_policy probs already keeps first choices first)")
        require(self.kind is GateKind.TOKEN_CHOICE or (cf is not None and cf > 0), "capacity_factor", cf,
                "a number > 0 with kind: expert_choice (each expert takes T*CF/E tokens)")
        return self
