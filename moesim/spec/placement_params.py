"""Each placement policy's parameters (the `placement.<policy>:` sub-sections of a scenario), declared once here
so that the scenario reader and the JSON Schema need nothing from moesim.placement; the policies themselves live
in moesim/placement/. Frozen dataclasses whose __post_init__ checks values (SpecError naming the field)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.spec.errors import require
from moesim.spec.placement import PlacementPolicyKind


@dataclass(frozen=True)
class StaticParams:
    """No knobs: the baseline is the layout plain expert parallelism gives."""


@dataclass(frozen=True)
class FasterMoeParams:
    shadowing: bool = True
    topology_gate: bool = False
    outgoing_fraction: float = 0.14  # phi: the share of a source's assignments allowed to leave its node
    max_shadows: int | None = None  # None: any number of experts (up to E)

    def __post_init__(self) -> None:
        require(isinstance(self.shadowing, bool), "shadowing", self.shadowing, "true or false")
        require(isinstance(self.topology_gate, bool), "topology_gate", self.topology_gate, "true or false")
        require(isinstance(self.outgoing_fraction, (int, float)) and 0.0 <= self.outgoing_fraction <= 1.0,
                "outgoing_fraction", self.outgoing_fraction, "a fraction in [0, 1] (of a source's assignments)")
        require(self.max_shadows is None or (isinstance(self.max_shadows, int) and self.max_shadows >= 0),
                "max_shadows", self.max_shadows, "null (no limit) or an integer >= 0 (experts)")


@dataclass(frozen=True)
class SmartMoeParams:
    """freq: steps between decisions (the artifact's dynamic_freq; 10, Fig. 13 also uses 100).
    history_steps: how many steps right before a decision are recorded and averaged (artifact: 2)."""

    freq: int = 10
    history_steps: int = 2

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        require(is_int(self.freq) and self.freq >= 1, "freq", self.freq, "an integer >= 1 (steps)")
        require(is_int(self.history_steps) and 1 <= self.history_steps <= self.freq, "history_steps",
                self.history_steps, f"an integer in [1, freq = {self.freq}] (steps)")


@dataclass(frozen=True)
class FlexMoeParams:
    threshold: float = 1.2  # balance ratio (max / mean rank load) above which a re-plan is tried
    horizon_steps: int = 50  # steps a new placement is expected to serve: the gain is amortised over them
    history_steps: int = 10  # moving-average window of per-expert loads (earlier steps only)
    max_moves_per_step: int = 64  # at most this many replica additions per decision

    def __post_init__(self) -> None:
        require(isinstance(self.threshold, (int, float)) and 1.0 <= self.threshold <= 1e6, "threshold",
                self.threshold, "a balance ratio in [1, 1e6] (max / mean rank load)")
        require(isinstance(self.horizon_steps, int) and self.horizon_steps >= 1, "horizon_steps",
                self.horizon_steps, "an integer >= 1 (steps)")
        require(isinstance(self.history_steps, int) and self.history_steps >= 1, "history_steps",
                self.history_steps, "an integer >= 1 (steps)")
        require(isinstance(self.max_moves_per_step, int) and self.max_moves_per_step >= 1, "max_moves_per_step",
                self.max_moves_per_step, "an integer >= 1 (replica moves)")


@dataclass(frozen=True)
class TaMoeParams:
    # lambda: 0 leaves routing as it is, 1 routes exactly by the target pattern. An auxiliary loss pulls routing
    # toward the target without reaching it; 0.5 is a middle assumption (the paper reports no strength)
    strength: float = 0.5

    def __post_init__(self) -> None:
        require(isinstance(self.strength, (int, float)) and 0.0 <= self.strength <= 1.0, "strength", self.strength,
                "a number in [0, 1] (0: natural routing, 1: the topology target)")


@dataclass(frozen=True)
class EplbParams:
    """redundant_experts: physical experts beyond E per layer (P = E + redundant_experts, a multiple of G).
    period_steps: steps between rebalances (DeepSeek-V3: "periodically"). history_steps: steps in the moving
    average that estimates the loads. num_groups: expert groups of group-limited routing (1 = none).
    hierarchical: allow the node-aware policy (used only when num_groups % nodes == 0, as in EPLB)."""

    redundant_experts: int = 0
    period_steps: int = 100
    history_steps: int = 100
    num_groups: int = 1
    hierarchical: bool = True

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        require(is_int(self.redundant_experts) and self.redundant_experts >= 0, "redundant_experts",
                self.redundant_experts, "an integer >= 0 (extra expert replicas per layer)")
        require(is_int(self.period_steps) and self.period_steps >= 1, "period_steps", self.period_steps,
                "an integer >= 1 (steps)")
        require(is_int(self.history_steps) and self.history_steps >= 1, "history_steps", self.history_steps,
                "an integer >= 1 (steps)")
        require(is_int(self.num_groups) and self.num_groups >= 1, "num_groups", self.num_groups,
                "an integer >= 1 (expert groups)")
        require(isinstance(self.hierarchical, bool), "hierarchical", self.hierarchical, "true or false")


POLICY_PARAMS: dict[PlacementPolicyKind, type] = {
    PlacementPolicyKind.STATIC: StaticParams,
    PlacementPolicyKind.FASTERMOE: FasterMoeParams,
    PlacementPolicyKind.SMARTMOE: SmartMoeParams,
    PlacementPolicyKind.FLEXMOE: FlexMoeParams,
    PlacementPolicyKind.TA_MOE: TaMoeParams,
    PlacementPolicyKind.EPLB: EplbParams,
}
