"""How collectives are timed: which network model, which algorithms. Closed choices are Enums."""

from __future__ import annotations

from moesim.spec.base import SpecEnum, SpecModel, spec_field


class NetworkModelKind(SpecEnum):
    ALPHA_BETA = "alpha_beta"  # per-tier alpha + bytes / bandwidth of the busiest member (no link sharing)
    FLOW = "flow"  # flows over NVLink, NIC and spine links of the topology, sharing bandwidth


class FlowSolver(SpecEnum):
    BOUND = "bound"  # max over links of bytes / capacity: the optimal fluid makespan for these routes; fast
    MAXMIN = "maxmin"  # event-driven max-min fair sharing (fluid model of TCP/IB-like fairness); slow at scale


class CrossRail(SpecEnum):
    PXN = "pxn"  # NCCL PXN: hop over NVLink to the GPU on the destination's rail, then stay on that rail
    SPINE = "spine"  # leave on the source's own NIC and cross rails through the spine


class AllToAllAlgorithm(SpecEnum):
    DIRECT = "direct"  # every pair at once (NCCL's grouped send/recv)
    HIERARCHICAL = "hierarchical"  # 2DH: intra-node to the rail's GPU, inter-node per rail, intra-node (Tutel)


class AllReduceAlgorithm(SpecEnum):
    RING = "ring"  # rings over the whole group, one channel per member of a node (NCCL's rings on every NIC)
    HIERARCHICAL = "hierarchical"  # reduce-scatter in the node, all-reduce per rail across nodes, all-gather
    NVLS_TREE = "nvls_tree"  # NVLink SHARP in the node (the switch reduces), a tree per rail across nodes


class NetworkSpec(SpecModel):
    model: NetworkModelKind = spec_field(NetworkModelKind.FLOW, help="alpha_beta: per-tier alpha + bytes / "
                                         "bandwidth; flow: flows over the topology's links, sharing bandwidth")
    solver: FlowSolver = spec_field(FlowSolver.BOUND, help="flow model: bound (fast, the optimal fluid makespan) "
                                    "or maxmin (max-min fair sharing; slow at scale)")
    cross_rail: CrossRail = spec_field(CrossRail.PXN, help="how bytes cross rails: pxn (NCCL PXN: NVLink to the "
                                       "destination's rail) or spine")
    all_to_all: AllToAllAlgorithm = spec_field(AllToAllAlgorithm.DIRECT, help="direct (every pair at once) or "
                                               "hierarchical (2DH, Tutel)")
    all_reduce: AllReduceAlgorithm = spec_field(AllReduceAlgorithm.RING, help="ring, hierarchical or nvls_tree")
