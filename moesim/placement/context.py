"""The PlacementContext of one pipeline stage's EP group, from a scenario (profile bandwidths, model sizes)."""

from __future__ import annotations

import numpy as np

from moesim.cost import compute as cc
from moesim.placement.base import PlacementContext
from moesim.spec.scenario import Scenario


def ep_bandwidth_bytes_per_s(sc: Scenario, ranks: np.ndarray) -> np.ndarray:
    """[G, G] effective one-direction bandwidth between EP ranks: NVLink inside a node, the GPU's NIC share
    (over the spine's oversubscription) across nodes. The diagonal (a local copy) counts as NVLink."""
    p = sc.cluster.profile
    node = np.asarray(ranks) // p.node.gpus_per_node
    nvl = p.node.nvlink_bandwidth_bytes_per_s * p.node.nvlink_efficiency
    nic = p.nic_bandwidth_per_gpu_bytes_per_s * p.fabric.nic_efficiency / p.fabric.oversubscription
    return np.where(node[:, None] == node[None, :], nvl, nic)


def placement_context(sc: Scenario, stage: int) -> PlacementContext:
    m, lay, tr, prof = sc.model, sc.layout, sc.training, sc.cluster.profile
    ranks = lay.ep_groups()[stage][0, 0]  # the first EP group; the others hold the same placement
    expert_params = m.ffn_params(m.expert_ffn_size) / lay.etp
    # forward + backward of one row, at the GEMM sizes of evenly loaded experts
    local = max(1, m.num_experts // lay.ep)
    rows = max(1.0, sc.tokens_routed_per_rank * m.top_k * lay.ep / m.num_experts)
    fwd, bwd = cc.expert_time_s(np.full(local, rows), m, prof, tr.dtype, lay.etp, tr.grad_dtype)
    row_s = float(fwd + bwd) / (local * rows)
    return PlacementContext(
        num_experts=m.num_experts, num_ranks=lay.ep,
        slots_per_rank=sc.placement.slots_per_gpu or m.num_experts // lay.ep,
        node_of_rank=ranks // prof.node.gpus_per_node,
        bandwidth_bytes_per_s=ep_bandwidth_bytes_per_s(sc, ranks),
        row_bytes=float(m.hidden_size * tr.dtype.activation_bytes),
        expert_weight_bytes=expert_params * tr.dtype.weight_bytes,
        expert_state_bytes=expert_params * (tr.dtype.weight_bytes + tr.grad_dtype.bytes
                                            + tr.optimizer.state_bytes_per_param),
        row_compute_s=row_s)
