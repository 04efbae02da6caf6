"""How the router spreads tokens over experts (the synthetic or recorded skew) and what the gate keeps."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from moesim.spec.errors import require
from moesim.spec.trace import RoutingTrace


class RoutingDistribution(Enum):
    """Family of each layer's base expert-share vector (drawn once per layer from the seeded generator)."""

    BALANCED = "balanced"  # uniform; only multinomial sampling noise
    ZIPF = "zipf"  # the i-th hottest expert gets a share proportional to i^-s
    DIRICHLET = "dirichlet"  # one Dirichlet(alpha * 1) draw per layer
    LOGNORMAL = "lognormal"  # shares proportional to exp(sigma * N(0, 1))
    HOT_SET = "hot_set"  # `hot_experts` experts share `hot_fraction` of the assignments equally
    TRACE = "trace"  # replay a recorded trace


class TemporalModel(Enum):
    STATIC = "static"  # the base shares never change
    DRIFT = "drift"  # AR(1) on log-shares, once per step: x <- rho*x + (1-rho)*base + sigma*N(0,1)
    CHURN = "churn"  # per micro-batch, each of the top_k hottest experts swaps with a cold one w.p. churn_rate


@dataclass(frozen=True)
class LayerSkew:
    """One layer's family and parameter (zipf: s, dirichlet: alpha, lognormal: sigma), e.g. from a fit."""

    distribution: RoutingDistribution
    param: float

    def __post_init__(self) -> None:
        require(self.distribution in _PARAM_OF, "distribution", self.distribution.value,
                "zipf, dirichlet or lognormal")
        require(self.param >= 0 and (self.distribution is not RoutingDistribution.DIRICHLET or self.param > 0),
                "param", self.param, "a number >= 0 (> 0 for dirichlet)")


_PARAM_OF = {RoutingDistribution.ZIPF: "zipf_s", RoutingDistribution.DIRICHLET: "dirichlet_alpha",
             RoutingDistribution.LOGNORMAL: "lognormal_sigma"}
_DEFAULTS = {"zipf_s": 0.0, "dirichlet_alpha": 1.0, "lognormal_sigma": 1.0, "hot_experts": 1, "hot_fraction": 0.5}
_OWNER = {"zipf_s": RoutingDistribution.ZIPF, "dirichlet_alpha": RoutingDistribution.DIRICHLET,
          "lognormal_sigma": RoutingDistribution.LOGNORMAL, "hot_experts": RoutingDistribution.HOT_SET,
          "hot_fraction": RoutingDistribution.HOT_SET}


@dataclass(frozen=True)
class RoutingSpec:
    distribution: RoutingDistribution = RoutingDistribution.BALANCED
    zipf_s: float = 0.0
    dirichlet_alpha: float = 1.0
    lognormal_sigma: float = 1.0
    hot_experts: int = 1
    hot_fraction: float = 0.5
    per_layer: tuple[LayerSkew, ...] = ()  # overrides `distribution` for layer l with per_layer[l % len]
    source_sigma: float = 0.0  # per (micro-batch, source rank) log-normal variation of the shares: domain skew
    temporal: TemporalModel = TemporalModel.STATIC
    drift_rho: float = 0.9
    drift_sigma: float = 0.1
    churn_rate: float = 0.0
    trace: RoutingTrace | None = None  # with distribution: trace
    trace_ref: str = ""  # where the trace or fit came from (for reports)
    preset: str = ""  # the preset these values came from, if any
    seed: int | None = None  # None: derived from simulation.seed

    def __post_init__(self) -> None:
        require(0 <= self.zipf_s <= 10, "zipf_s", self.zipf_s, "a number in [0, 10]")
        require(0 < self.dirichlet_alpha <= 1e6, "dirichlet_alpha", self.dirichlet_alpha, "a number in (0, 1e6]")
        require(0 <= self.lognormal_sigma <= 20, "lognormal_sigma", self.lognormal_sigma, "a number in [0, 20]")
        require(self.hot_experts >= 1, "hot_experts", self.hot_experts, "an integer >= 1 (experts)")
        require(0 < self.hot_fraction < 1, "hot_fraction", self.hot_fraction, "a fraction in (0, 1)")
        for key, owner in _OWNER.items():  # a parameter of another family is a mistake, not a no-op
            require(getattr(self, key) == _DEFAULTS[key] or self.distribution is owner, key, getattr(self, key),
                    f"only with distribution: {owner.value}")
        require(0 <= self.source_sigma <= 10, "source_sigma", self.source_sigma, "a number in [0, 10]")
        require(0 <= self.drift_rho <= 1, "drift_rho", self.drift_rho, "a number in [0, 1]")
        require(0 <= self.drift_sigma <= 10, "drift_sigma", self.drift_sigma, "a number in [0, 10]")
        require(0 <= self.churn_rate <= 1, "churn_rate", self.churn_rate, "a probability in [0, 1] per micro-batch")
        require((self.trace is not None) == (self.distribution is RoutingDistribution.TRACE), "trace",
                self.trace_ref or None, "a trace exactly when distribution is trace")
        require(self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "seed", self.seed,
                "an integer >= 0")

    def layer_skew(self, layer: int) -> tuple[RoutingDistribution, float]:
        """Family and parameter of a (MoE-layer index) layer."""
        if self.per_layer:
            ls = self.per_layer[layer % len(self.per_layer)]
            return ls.distribution, ls.param
        param = getattr(self, _PARAM_OF[self.distribution]) if self.distribution in _PARAM_OF else 0.0
        return self.distribution, param


class GateKind(Enum):
    TOKEN_CHOICE = "token_choice"  # each token picks its top-k experts
    EXPERT_CHOICE = "expert_choice"  # each expert picks its top-C tokens (Zhou et al. 2022)


class CapacityScope(Enum):
    PER_SOURCE = "per_source"  # each rank drops its own tokens before dispatch (Megatron, DeepSpeed)
    GLOBAL = "global"  # one capacity per expert over all sources of the EP group (FastMoE Switch gate)


class DropPolicy(Enum):
    PROBS = "probs"  # keep the highest-probability assignments: first choices go first (Megatron default)
    POSITION = "position"  # keep the earliest tokens in the sequence, whatever their choice rank


@dataclass(frozen=True)
class GateSpec:
    """Capacity semantics (../shared/specs/placement.md §1). capacity = ceil(k*T/E*CF), at least min_capacity.
    capacity_factor None is dropless; <= 0 is Tutel's adaptive capacity (0: the actual maximum; < 0: the actual
    maximum, at most ceil(k*T/E*|CF|))."""

    kind: GateKind = GateKind.TOKEN_CHOICE
    capacity_factor: float | None = None
    scope: CapacityScope = CapacityScope.PER_SOURCE
    min_capacity: int = 0
    drop_policy: DropPolicy = DropPolicy.PROBS
    first_choice_priority: bool = False  # with drop_policy position: DeepSpeed fills first choices first
    pad_to_capacity: bool = False  # every expert computes and receives exactly `capacity` rows

    def __post_init__(self) -> None:
        cf = self.capacity_factor
        require(cf is None or -1e6 <= cf <= 1e6, "capacity_factor", cf, "null (dropless) or a number")
        require(self.min_capacity >= 0, "min_capacity", self.min_capacity, "an integer >= 0 (tokens)")
        require(not self.pad_to_capacity or cf is not None, "pad_to_capacity", True,
                "false when capacity_factor is null (dropless has no capacity to pad to)")
        require(not self.first_choice_priority or self.drop_policy is DropPolicy.POSITION, "first_choice_priority",
                True, "only with drop_policy: position (drop_policy probs already keeps first choices first)")
        require(self.kind is GateKind.TOKEN_CHOICE or (cf is not None and cf > 0), "capacity_factor", cf,
                "a number > 0 with kind: expert_choice (each expert takes T*CF/E tokens)")
