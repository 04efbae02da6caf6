"""How collectives are timed: which network model, which algorithms. Closed choices are Enums."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class NetworkModelKind(Enum):
    ALPHA_BETA = "alpha_beta"  # per-tier alpha + bytes / bandwidth of the busiest member (no link sharing)
    FLOW = "flow"  # flows over NVLink, NIC and spine links of the topology, sharing bandwidth


class FlowSolver(Enum):
    BOUND = "bound"  # max over links of bytes / capacity: the optimal fluid makespan for these routes; fast
    MAXMIN = "maxmin"  # event-driven max-min fair sharing (fluid model of TCP/IB-like fairness); slow at scale


class CrossRail(Enum):
    PXN = "pxn"  # NCCL PXN: hop over NVLink to the GPU on the destination's rail, then stay on that rail
    SPINE = "spine"  # leave on the source's own NIC and cross rails through the spine


class AllToAllAlgorithm(Enum):
    DIRECT = "direct"  # every pair at once (NCCL's grouped send/recv)
    HIERARCHICAL = "hierarchical"  # 2DH: intra-node to the rail's GPU, inter-node per rail, intra-node (Tutel)


class AllReduceAlgorithm(Enum):
    RING = "ring"  # rings over the whole group, one channel per member of a node (NCCL's rings on every NIC)
    HIERARCHICAL = "hierarchical"  # reduce-scatter in the node, all-reduce per rail across nodes, all-gather
    NVLS_TREE = "nvls_tree"  # NVLink SHARP in the node (the switch reduces), a tree per rail across nodes


@dataclass(frozen=True)
class NetworkSpec:
    model: NetworkModelKind = NetworkModelKind.FLOW
    solver: FlowSolver = FlowSolver.BOUND
    cross_rail: CrossRail = CrossRail.PXN
    all_to_all: AllToAllAlgorithm = AllToAllAlgorithm.DIRECT
    all_reduce: AllReduceAlgorithm = AllReduceAlgorithm.RING
