"""Which expert placement policy a scenario runs, its parameters and its memory budget."""

from __future__ import annotations

from typing import Any

from moesim.spec.base import Count, SpecEnum, SpecModel, spec_field
from moesim.spec.bounds import MAX_EXPERTS


class PlacementPolicyKind(SpecEnum):
    STATIC = "static"  # contiguous expert parallelism, never changes (the baseline)
    FASTERMOE = "fastermoe"  # per-step shadowing of hot experts (+ optional topology-aware gate)
    SMARTMOE = "smartmoe"  # periodic greedy re-packing over fixed slots, no replication
    FLEXMOE = "flexmoe"  # replicas expanded / shrunk / migrated by a balance threshold and a cost test
    TA_MOE = "ta_moe"  # routing pulled toward the topology-optimal dispatch pattern; placement unchanged
    EPLB = "eplb"  # DeepSeek's EPLB: redundant experts, hierarchical or global packing


class MigrationMode(SpecEnum):
    BLOCKING = "blocking"  # every rank of the stage waits for the transfers at the start of the step
    OVERLAPPED = "overlapped"  # transfers run beside compute; a layer's first dispatch waits for its experts


class PlacementSpec(SpecModel):
    """In the file, each policy's parameters live in a sub-section named after it (`smartmoe: {freq: 10}`), a spec
    model of moesim/spec/placement_params.py; every sub-section given is checked, so that a sweep over `policy`
    can carry them all."""

    policy: PlacementPolicyKind = spec_field(PlacementPolicyKind.STATIC, help="the expert placement policy")
    params: Any = spec_field(None, in_file=False, help="the policy's parameters (a model of "
                                                       "moesim.spec.placement_params); None = its defaults")
    slots_per_gpu: Count | None = spec_field(None, help="expert slots per EP rank (memory budget); null = "
                                             "experts / ep", unit="(expert slots per EP rank)", ge=1,
                                             le=MAX_EXPERTS)
    migration: MigrationMode = spec_field(MigrationMode.BLOCKING, help="how moved experts are transferred")
