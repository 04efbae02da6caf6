"""The planner's first stage: one training step's time and memory from the same per-op and network cost models the
simulator uses, in closed form (no SimPy, no routing draws): balanced routing, every micro-batch alike, each stage's
micro-batch time repeated m times plus the pipeline's fill and drain.

step = m x the slowest stage's micro-batch (forward + backward) + (the other stages' micro-batches + the pipeline
       transfers) / v for the fill and drain + the exposed gradient sync + the optimizer + the fp8 weight casts

A micro-batch on a stage is its layers' compute, memory-bound kernels and launches, its experts on the balanced
rows, the exposed parts of its all-to-alls, tensor- and context-parallel collectives (the overlap options of
`comm:` as the engine applies them) and the LM head on the last stage. The data-parallel all-reduce is the
simulator's ring in closed form, so that the estimate stays a few milliseconds per layout at thousands of GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import compute as cc
from moesim.cost import ops
from moesim.cost.memory import peak_memory_per_rank, stage_params
from moesim.network.model import CollectiveModel
from moesim.sim.workload import (LayerCosts, dp_overlap, ring_attention_exposed, tp_collectives_s,
                                 weight_casts_s, wire_rows, layer_costs)
from moesim.spec.scenario import Scenario

BUCKETS = ("compute", "memory_bound", "kernel_launch", "all_to_all", "tensor_parallel", "context_parallel",
           "pipeline_bubble", "pipeline_transfer", "dp_sync", "optimizer")


@dataclass(frozen=True)
class Estimate:
    step_s: float
    breakdown_s: dict[str, float]  # BUCKETS -> seconds per step on the slowest stage
    hidden_s: dict[str, float]  # communication hidden under compute, per bucket
    peak_memory_bytes: float  # the busiest rank, balanced routing
    hbm_bytes: float
    peak_stage: int  # the pipeline stage of the busiest rank

    @property
    def fits(self) -> bool:
        return self.peak_memory_bytes <= self.hbm_bytes


def _all_to_all_s(sc: Scenario, net: CollectiveModel) -> tuple[float, float]:
    """(dispatch, combine) seconds of one MoE layer's balanced all-to-all in the first EP group of stage 0."""
    lay, m = sc.layout, sc.model
    if lay.ep == 1:
        return 0.0, 0.0
    group = lay.ep_groups()[0].reshape(-1, lay.ep)[0]
    per_pair = sc.tokens_routed_per_rank * m.top_k / lay.ep
    rows = np.full((1, 1, lay.ep, lay.ep), per_pair)
    wire = wire_rows(sc, rows, group) * (1.0 - np.eye(lay.ep))
    dispatch = wire * ops.dispatch_row_bytes(m, sc.training)
    combine = wire.swapaxes(-1, -2) * ops.combine_row_bytes(m, sc.training)
    return (float(net.all_to_all_s(dispatch, group[None])[0, 0]), float(net.all_to_all_s(combine, group[None])[0, 0]))


def _ring_all_reduce_s(sc: Scenario, nbytes: float, group: np.ndarray) -> float:
    """A ring all-reduce of `nbytes` per rank over `group` (GPU ids), as the simulator's ring runs it: 2(n - 1)
    steps; across nodes NCCL runs c = members-per-node rings at once, each crossing between nodes on its own NIC
    (a step moves bytes / (n c) per ring over the NIC and the other rings' share over NVLink), inside a node one
    ring over NVLink; each step adds its tier's latency."""
    n = len(group)
    if n <= 1 or nbytes <= 0:
        return 0.0
    prof = sc.cluster.profile
    nodes, per_node = np.unique(np.asarray(group) // prof.node.gpus_per_node, return_counts=True)
    nvlink = prof.node.nvlink_bandwidth_bytes_per_s * prof.node.nvlink_efficiency
    if len(nodes) > 1:
        c = int(per_node.min())
        nic = prof.nic_bandwidth_per_gpu_bytes_per_s * prof.fabric.nic_efficiency / prof.fabric.oversubscription
        step = max(nbytes / (n * c) / nic, nbytes * (c - 1) / (n * c) / nvlink) + prof.fabric.nic_latency_s
    else:
        step = nbytes / n / nvlink + prof.node.nvlink_latency_s
    return 2.0 * (n - 1) * step


def estimate(sc: Scenario, net: CollectiveModel) -> Estimate:
    """One step of `sc` under balanced routing, in closed form."""
    lay, m, tr, comm = sc.layout, sc.model, sc.training, sc.comm
    lc: LayerCosts = layer_costs(sc)
    slowdown = sc.cluster.profile.efficiency.overlap_slowdown
    local = max(1, m.num_experts // lay.ep)
    rows = sc.tokens_routed_per_rank * m.top_k * lay.etp  # a rank's expert rows per MoE layer and micro-batch
    expert = cc.expert_time_s(np.full(local, rows / local), m, sc.cluster.profile, tr.dtype, lay.etp,
                              tr.grad_dtype)
    expert_fwd = float(expert[0])
    expert_bwd = float(expert[1]) + expert_fwd * lc.expert_rerun_fwd
    dispatch, combine = _all_to_all_s(sc, net)
    tp = tuple(float(x) for x in tp_collectives_s(sc, net, lay.tp_groups()[0, :1])[0])
    cp_comm, _ = ring_attention_exposed(sc, net, lc)
    cp = (float(cp_comm[0, 0, 0]), float(cp_comm[0, 0, 1]))

    def layer(moe: bool) -> dict[str, float]:
        """One layer's forward + backward on one micro-batch, by bucket, and what overlapped."""
        k = int(moe)
        out = dict.fromkeys(BUCKETS, 0.0)
        hidden = dict.fromkeys(BUCKETS, 0.0)
        out["compute"] = lc.attention_fwd_s + lc.attention_bwd_s + (
            lc.router_fwd_s + lc.router_bwd_s + expert_fwd + expert_bwd if moe
            else lc.dense_ffn_fwd_s + lc.dense_ffn_bwd_s)
        out["memory_bound"] = lc.memory_bound_fwd_s[k] + lc.memory_bound_bwd_s[k] + (
            rows * (lc.expert_row_memory_bound_s + lc.expert_row_memory_bound_bwd_s) if moe else 0.0)
        out["kernel_launch"] = lc.launch_fwd_s[k] + lc.launch_bwd_s[k]
        for phase in range(2):
            tp_s = tp[k]
            if comm.tp_comm_overlap:
                hide = min(tp_s, lc.tp_overlap_budget_s[k][phase])
                hidden["tensor_parallel"] += hide
                tp_s -= hide
            out["tensor_parallel"] += tp_s
            out["context_parallel"] += cp[phase]
            if not moe:
                continue
            a2a = dispatch + combine
            if comm.moe_a2a_overlap:  # the steady state: the other pass of another micro-batch hides it
                partner = (lc.attention_bwd_s + lc.router_bwd_s + expert_bwd if phase == 0
                           else lc.attention_fwd_s + lc.router_fwd_s + expert_fwd)
                hide = min(a2a, partner)
            elif comm.shared_expert_overlap:
                hide = min(dispatch, lc.shared_expert_s[phase])
            else:
                hide = 0.0
            hidden["all_to_all"] += hide
            out["all_to_all"] += a2a - hide
        out["compute"] += slowdown * sum(hidden.values())
        return {**out, **{f"hidden_{b}": v for b, v in hidden.items()}}

    per_kind = {moe: layer(moe) for moe in (False, True)}
    p2p_bytes = sc.tokens_routed_per_rank * m.hidden_size * tr.dtype.activation_bytes
    q = lay.ranks_per_stage
    stages = []
    for s in range(lay.pp):
        total = dict.fromkeys(list(BUCKETS) + [f"hidden_{b}" for b in BUCKETS], 0.0)
        for layer_index in sc.stage_layers(s):
            for key, value in per_kind[m.is_moe_layer(layer_index)].items():
                total[key] += value
        if s == lay.pp - 1:
            total["compute"] += lc.lm_head_fwd_s + lc.lm_head_bwd_s
            total["memory_bound"] += lc.lm_head_extra_fwd_s[0] + lc.lm_head_extra_bwd_s[0]
            total["kernel_launch"] += lc.lm_head_extra_fwd_s[1] + lc.lm_head_extra_bwd_s[1]
        stages.append(total)
    # pipeline transfers do not block the sender: they cost time while the pipeline fills and drains, once per hop
    p2p = [2.0 * float(net.p2p_s(p2p_bytes, int(lay.physical(s * q)), int(lay.physical(((s + 1) % lay.pp) * q))))
           for s in range(lay.pp - 1)] if lay.pp > 1 else []
    per_mb = [sum(st[b] for b in BUCKETS) for st in stages]
    slowest = int(np.argmax(per_mb))
    mbs = sc.num_micro_batches
    breakdown = {b: mbs * stages[slowest][b] for b in BUCKETS}
    # fill and drain: every other stage's micro-batch once (uniform stages: (p - 1) / v of the slowest)
    breakdown["pipeline_bubble"] = (sum(per_mb) - per_mb[slowest]) / lay.vpp
    breakdown["pipeline_transfer"] = sum(p2p) / lay.vpp
    hidden = {b: mbs * stages[slowest][f"hidden_{b}"] for b in BUCKETS}

    params = np.array([stage_params(sc, s) for s in range(lay.pp)])  # [pp, 2] dense, expert
    grad_bytes = params * tr.grad_dtype.bytes
    sync = np.zeros((2, lay.pp, q))
    for s in range(lay.pp):
        sync[0, s] = _ring_all_reduce_s(sc, float(grad_bytes[s, 0]), lay.dp_groups()[s, 0])
        sync[1, s] = _ring_all_reduce_s(sc, float(grad_bytes[s, 1]), lay.edp_groups()[s, 0, 0])
    exposed, hidden_sync = dp_overlap(sc, lc, sync)
    breakdown["dp_sync"] = float(exposed[:, slowest, 0].sum())
    hidden["dp_sync"] = float(hidden_sync[:, slowest, 0].sum())
    breakdown["compute"] += slowdown * hidden["dp_sync"]
    opt = tr.optimizer
    touched = 2 * opt.state_bytes_per_param + tr.grad_dtype.bytes + 2 * tr.dtype.weight_bytes
    shard = np.array([lay.dp_cp, lay.edp]) if opt.distributed else np.ones(2)
    breakdown["optimizer"] = float((params[slowest] / shard).sum() * touched
                                   / sc.cluster.profile.gpu.hbm_bandwidth_bytes_per_s)
    casts = weight_casts_s(sc)[slowest]
    breakdown["memory_bound"] += float(casts[0])
    breakdown["kernel_launch"] += float(casts[1])
    peak, stage = peak_memory(sc)
    return Estimate(step_s=float(sum(breakdown.values())), breakdown_s=breakdown, hidden_s=hidden,
                    peak_memory_bytes=peak, hbm_bytes=float(sc.cluster.profile.gpu.hbm_bytes), peak_stage=stage)


def peak_memory(sc: Scenario) -> tuple[float, int]:
    """(bytes, pipeline stage) of the busiest rank under balanced routing."""
    memory = peak_memory_per_rank(sc)
    busiest = int(np.argmax(memory))
    return float(memory[busiest]), busiest // sc.layout.ranks_per_stage
