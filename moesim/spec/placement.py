"""Which expert placement policy a scenario runs, its parameters and its memory budget."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from moesim.spec.errors import require


class PlacementPolicyKind(Enum):
    STATIC = "static"  # contiguous expert parallelism, never changes (the baseline)
    FASTERMOE = "fastermoe"  # per-step shadowing of hot experts (+ optional topology-aware gate)
    SMARTMOE = "smartmoe"  # periodic greedy re-packing over fixed slots, no replication
    FLEXMOE = "flexmoe"  # replicas expanded / shrunk / migrated by a balance threshold and a cost test
    TA_MOE = "ta_moe"  # routing pulled toward the topology-optimal dispatch pattern; placement unchanged
    EPLB = "eplb"  # DeepSeek's EPLB: redundant experts, hierarchical or global packing


class MigrationMode(Enum):
    BLOCKING = "blocking"  # every rank of the stage waits for the transfers at the start of the step
    OVERLAPPED = "overlapped"  # transfers run beside compute; a layer's first dispatch waits for its experts


@dataclass(frozen=True)
class PlacementSpec:
    policy: PlacementPolicyKind = PlacementPolicyKind.STATIC
    params: Any = None  # the policy's frozen parameter dataclass (moesim.placement.registry); None = defaults
    slots_per_gpu: int | None = None  # expert slots per EP rank (memory budget); None = experts / ep
    migration: MigrationMode = MigrationMode.BLOCKING

    def __post_init__(self) -> None:
        require(self.slots_per_gpu is None or (isinstance(self.slots_per_gpu, int) and self.slots_per_gpu >= 1),
                "slots_per_gpu", self.slots_per_gpu, "an integer >= 1 (expert slots per EP rank) or null")
