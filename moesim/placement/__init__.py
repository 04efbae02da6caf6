"""Expert placement policies (static, FasterMoE, SmartMoE, FlexMoE, TA-MoE, EPLB) and the Placement type.

Without a scenario (docs/placement.md shows it running):

    ctx = PlacementContext.uniform(num_experts=64, num_ranks=8, slots_per_rank=12)
    run = replay(EplbPolicy(ctx, EplbParams(redundant_experts=32, period_steps=1)), loads)  # [T, G_src, E]
    run.balance_ratio()  # [T] GPU max / mean load

Importing this package pulls in numpy and moesim.spec only (no simpy, torch or matplotlib).
"""

from moesim.placement.base import (
                                   EMPTY,
                                   Placement,
                                   PlacementContext,
                                   PlacementError,
                                   PlacementPolicy,
                                   ReplicaSplit,
                                   balance_ratio,
                                   contiguous,
                                   layer_time_s,
                                   moved_slots,
)
from moesim.placement.costs import Migration, migration, replica_sync_s, shadow_s
from moesim.placement.eplb import (
                                   EplbParams,
                                   EplbPolicy,
                                   balanced_packing,
                                   gpu_load,
                                   keep_slots,
                                   rebalance_experts,
                                   replicate_experts,
                                   use_hierarchical,
)
from moesim.placement.fastermoe import FasterMoeParams, FasterMoePolicy
from moesim.placement.flexmoe import FlexMoeParams, FlexMoePolicy
from moesim.placement.registry import POLICIES, make_policy
from moesim.placement.replay import PolicyRun, replay
from moesim.placement.smartmoe import SmartMoeParams, SmartMoePolicy, greedy_replace
from moesim.placement.static import StaticParams, StaticPolicy
from moesim.placement.ta_moe import TaMoeParams, TaMoePolicy

__all__ = [
    "EMPTY", "POLICIES", "EplbParams", "EplbPolicy", "FasterMoeParams", "FasterMoePolicy", "FlexMoeParams",
    "FlexMoePolicy", "Migration", "Placement", "PlacementContext", "PlacementError", "PlacementPolicy",
    "PolicyRun", "ReplicaSplit", "SmartMoeParams", "SmartMoePolicy", "StaticParams", "StaticPolicy",
    "TaMoeParams", "TaMoePolicy", "balance_ratio", "balanced_packing", "contiguous", "gpu_load", "greedy_replace",
    "keep_slots", "layer_time_s", "make_policy", "migration", "moved_slots", "rebalance_experts",
    "replay", "replica_sync_s", "replicate_experts", "shadow_s", "use_hierarchical",
]
