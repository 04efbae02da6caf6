"""Each placement policy's parameters (the `placement.<policy>:` sub-sections of a scenario), declared once here
so that the scenario reader and the JSON Schema need nothing from moesim.placement; the policies themselves live
in moesim/placement/. Frozen spec models: every field with its type, default, bounds, unit and help text; bad
values raise SpecError naming the field."""

from __future__ import annotations

from pydantic import model_validator

from moesim.spec.base import Count, SpecModel, spec_field
from moesim.spec.bounds import MAX_EXPERTS
from moesim.spec.errors import require
from moesim.spec.placement import PlacementPolicyKind

_STEPS = "steps"


class StaticParams(SpecModel):
    """No knobs: the baseline is the layout plain expert parallelism gives."""


class FasterMoeParams(SpecModel):
    """FasterMoE (He et al., PPoPP 2022): per-step shadowing of hot experts, optional topology-aware gate."""

    shadowing: bool = spec_field(True, help="replicate (shadow) the hot experts of each step on every rank when "
                                            "FasterMoE's cost model says it pays")
    topology_gate: bool = spec_field(False, help="the topology-aware gate: cap the share of each source's "
                                                 "assignments that leaves its node at outgoing_fraction")
    outgoing_fraction: float = spec_field(0.14, help="phi: the share of a source's assignments allowed to leave "
                                                     "its node (with topology_gate)",
                                          unit="(fraction of a source's assignments)", ge=0.0, le=1.0)
    max_shadows: Count | None = spec_field(None, help="at most this many experts shadowed per step; null: any "
                                                      "number (up to all experts)", unit="experts", ge=0,
                                        le=MAX_EXPERTS)


class SmartMoeParams(SpecModel):
    """SmartMoE (Zhai et al., USENIX ATC 2023): periodic greedy re-packing over fixed slots, no replication."""

    freq: Count = spec_field(10, help="steps between decisions (the artifact's dynamic_freq; 10, Fig. 13 also "
                                      "uses 100)", unit=_STEPS, ge=1)
    history_steps: Count = spec_field(2, help="how many steps right before a decision are recorded and averaged "
                                              "(artifact: 2); at most freq", unit=_STEPS, ge=1)

    @model_validator(mode="after")
    def _history_within_period(self) -> SmartMoeParams:
        require(self.history_steps <= self.freq, "history_steps", self.history_steps,
                f"an integer in [1, freq = {self.freq}] (steps)")
        return self


class FlexMoeParams(SpecModel):
    """FlexMoE (Nie et al., SIGMOD 2023, reconstructed): replicas expanded, shrunk and migrated by a balance
    threshold and a cost test."""

    threshold: float = spec_field(1.2, help="balance ratio (max / mean rank load) above which a re-plan is tried",
                                  unit="(max / mean rank load)", ge=1.0, le=1e6)
    horizon_steps: Count = spec_field(50, help="steps a new placement is expected to serve: the gain is "
                                               "amortised over them", unit=_STEPS, ge=1)
    history_steps: Count = spec_field(10, help="moving-average window of per-expert loads (earlier steps only)",
                                      unit=_STEPS, ge=1)
    max_moves_per_step: Count = spec_field(64, help="at most this many replica additions per decision",
                                           unit="replica moves", ge=1)


class TaMoeParams(SpecModel):
    """TA-MoE (Chen et al., NeurIPS 2022): routing pulled toward the topology-optimal dispatch pattern."""

    strength: float = spec_field(0.5, help="lambda: 0 leaves routing as it is, 1 routes exactly by the target "
                                           "pattern; an auxiliary loss pulls routing toward the target without "
                                           "reaching it, 0.5 is a middle assumption (the paper reports no "
                                           "strength)", unit="(0: natural routing, 1: the topology target)",
                                 ge=0.0, le=1.0)


class EplbParams(SpecModel):
    """DeepSeek's EPLB: redundant experts, hierarchical (node-aware) or global packing."""

    redundant_experts: Count = spec_field(0, help="physical experts beyond E per layer (P = E + "
                                                  "redundant_experts, a multiple of the EP ranks)",
                                          unit="extra expert replicas per layer", ge=0)
    period_steps: Count = spec_field(100, help='steps between rebalances (DeepSeek-V3: "periodically")',
                                     unit=_STEPS, ge=1)
    history_steps: Count = spec_field(100, help="steps in the moving average that estimates the loads",
                                      unit=_STEPS, ge=1)
    num_groups: Count = spec_field(1, help="expert groups of group-limited routing (1 = none); a divisor of the "
                                           "experts", unit="expert groups", ge=1)
    hierarchical: bool = spec_field(True, help="allow the node-aware policy (used only when num_groups % nodes "
                                               "== 0, as in EPLB)")


POLICY_PARAMS: dict[PlacementPolicyKind, type[SpecModel]] = {
    PlacementPolicyKind.STATIC: StaticParams,
    PlacementPolicyKind.FASTERMOE: FasterMoeParams,
    PlacementPolicyKind.SMARTMOE: SmartMoeParams,
    PlacementPolicyKind.FLEXMOE: FlexMoeParams,
    PlacementPolicyKind.TA_MOE: TaMoeParams,
    PlacementPolicyKind.EPLB: EplbParams,
}
