"""Everything one step's ranks will do, computed up front as numpy arrays (no simpy here): op durations
per stage, per layer, per micro-batch, per rank or per communication group. The engine only replays them.

Local rank index inside a stage is q = etp_rank + etp * (ep_rank + ep * edp_rank) = tp_rank + tp * dp_rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import compute as cc
from moesim.cost import gemm as gg
from moesim.cost import ops
from moesim.cost.memory import stage_params  # the memory model owns per-rank parameter counts
from moesim.network.dispatch import allgather_rows, flex_rows
from moesim.network.flow import FlowNetwork
from moesim.placement.base import EMPTY, Placement, ReplicaSplit, contiguous
from moesim.network.model import CollectiveModel
from moesim.routing.capacity import apply_gate
from moesim.spec.comm import TokenDispatcher
from moesim.spec.network import AllReduceAlgorithm
from moesim.spec.scenario import Scenario
from moesim.spec.training import Recompute, RecomputeModule


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer compute that is identical for every rank of a stage (seconds). GEMMs and the attention core are
    the ops; memory-bound kernels (norms, RoPE, residuals, router softmax/top-k, permute, activations, fp8 casts,
    cross-entropy) and kernel launches are their own ops, so the breakdown shows them (moesim.cost.ops)."""

    attention_fwd_s: float
    attention_bwd_s: float
    dense_ffn_fwd_s: float
    dense_ffn_bwd_s: float
    router_fwd_s: float  # router + shared experts
    router_bwd_s: float
    lm_head_fwd_s: float
    lm_head_bwd_s: float
    attention_core_s: tuple[float, float]  # (forward, backward) of the attention core alone, inside attention_*_s
    shared_expert_s: tuple[float, float]  # (forward, backward) of the shared experts' GEMMs, inside router_*_s
    tp_overlap_budget_s: tuple[tuple[float, float], tuple[float, float]]  # GEMMs next to the TP collectives that
    # can hide them: (dense layer, MoE layer) x (forward, backward)
    memory_bound_fwd_s: tuple[float, float]  # (dense layer, MoE layer) outside the routed experts
    memory_bound_bwd_s: tuple[float, float]
    launch_fwd_s: tuple[float, float]  # (dense layer, MoE layer)
    launch_bwd_s: tuple[float, float]
    lm_head_extra_fwd_s: tuple[float, float]  # (memory-bound: final norm + cross-entropy, launches)
    lm_head_extra_bwd_s: tuple[float, float]
    expert_row_memory_bound_s: float  # per routed-expert row: its activation (+ fp8 casts), forward
    expert_row_memory_bound_bwd_s: float  # the same, backward (+ what it recomputes)
    expert_rerun_fwd: float  # routed experts' forwards the backward reruns (full or moe recompute: 1)


@dataclass(frozen=True)
class MoeLayerWork:
    """One MoE layer of one step, for all micro-batches. m = micro-batch, q = local rank in the stage."""

    dispatch_s: np.ndarray  # [M, q] time of the dispatch all-to-all of the EP group rank q belongs to (with
    # etp > 1, then the all-gather of the received rows in its ETP group: etp_collectives_s)
    combine_s: np.ndarray  # [M, q] the combine: the same bytes in the other direction (incast becomes outcast;
    # with etp > 1 after the reduce-scatter of the partial outputs in the ETP group)
    expert_fwd_s: np.ndarray  # [M, q]
    expert_bwd_s: np.ndarray  # [M, q] input and weight gradients (a recomputed forward not included)
    computed_rows: np.ndarray  # [M, q] rows rank q computes, tile padding excluded (its activations run on these;
    # LayerCosts.expert_row_memory_bound_s each)
    expert_rows: np.ndarray  # [M, q] rows rank q computes (capacity padding and tile padding included)
    sent_rows: np.ndarray  # [M, q] rows rank q dispatches (capacity padding included)
    returned_rows: np.ndarray  # [M, q] rows rank q sends back in the combine (what it received)
    sent_bytes: np.ndarray  # [M, q] dispatch bytes rank q puts on the network (local ones excluded)
    expert_max_over_mean: np.ndarray  # [M] routed demand over the whole stage's tokens, before capacity
    gpu_max_over_mean: np.ndarray  # [M] busiest rank's computed rows / mean inside the EP group (max over groups)
    dropped_fraction: np.ndarray  # [M] dropped assignments / routed assignments
    dropped_first_fraction: np.ndarray  # [M] dropped first choices / first choices
    padding_fraction: np.ndarray  # [M] capacity-padding rows / computed rows
    unrouted_fraction: np.ndarray  # [M] tokens that reached no expert (expert choice) / tokens
    a2a_bytes: np.ndarray  # [M] dispatch bytes on the network over the whole stage (capacity padding included)
    a2a_tier_bytes: np.ndarray  # [M, 3] dispatch bytes that crossed NVLink, a NIC, the spine (PXN hops included)
    link_bytes: np.ndarray  # [links] bytes per link of one forward pass (dispatch + combine, all micro-batches)
    a2a_matrix: np.ndarray  # [ep, ep] dispatch bytes of the stage's first EP group, mean over micro-batches
    sent_per_expert: np.ndarray  # [M, q, E] rows rank q sends to each logical expert: kept assignments (+ padding
    # when padded per source); `moesim execute` routes its real tokens by these
    computed_per_expert: np.ndarray  # [M, edp * etp, E] rows each expert computes in each EP group (kept + padding)


def layer_costs(sc: Scenario) -> LayerCosts:
    m, lay, prof, dt = sc.model, sc.layout, sc.cluster.profile, sc.training.dtype
    gd = sc.training.grad_dtype
    linear, high = gg.gemm_rates(prof, dt, grad_dtype=gd), gg.gemm_rates(prof, dt, linear=False, grad_dtype=gd)
    tokens = sc.tokens_per_micro_batch

    core = cc.attention_core_s(m, tokens, sc.training.seq_len, lay.tp, prof, dt, cp=lay.cp)
    windowed = m.num_windowed_layers
    if windowed:  # the engine charges every layer alike: each core's time, averaged over the model's layers
        window = cc.attention_core_s(m, tokens, sc.training.seq_len, lay.tp, prof, dt, windowed=True, cp=lay.cp)
        core = tuple((windowed * w + (m.num_layers - windowed) * c) / m.num_layers for w, c in zip(window, core))
    projections = cc.gemms_time_s(cc.attention_gemms(m, tokens, lay.tp), linear)
    dense = cc.gemms_time_s(cc.ffn_gemms(m, tokens, m.dense_ffn_size, lay.tp), linear)
    router_s, shared = _router_and_shared_s(sc)
    head = cc.gemms_time_s(((tokens, m.vocab_size / lay.tp, m.hidden_size),), high)
    tr = sc.training
    full = tr.recompute is Recompute.FULL  # the backward reruns the whole forward first
    # selective recompute reruns its modules' forward in the backward (Megatron-LM --recompute-modules)
    again = tr.recomputes
    attn_fwd = projections[0] + core[0]
    attn_again = (core[0] if again(RecomputeModule.CORE_ATTN) else 0.0) \
        + (cc.gemms_time_s(cc.mla_up_projection_gemms(m, tokens, lay.tp), linear)[0]
           if again(RecomputeModule.MLA_UP_PROJ) else 0.0)
    attn_bwd = projections[1] + core[1] + (attn_fwd if full else attn_again)
    dense_bwd = dense[1] + (dense[0] if full or again(RecomputeModule.MLP) else 0.0)
    router_fwd = router_s[0] + shared[0]
    router_again = router_fwd if full or again(RecomputeModule.MOE) else (
        shared[0] if again(RecomputeModule.SHARED_EXPERTS) else 0.0)
    router_bwd = router_s[1] + shared[1] + router_again
    head_fwd, head_bwd = head[0], head[1]  # full recompute checkpoints the transformer layers, not the LM head
    if m.num_mtp_layers:  # the engine's op list stays as it is: MTP runs inside the last stage's LM-head op
        mtp_fwd, mtp_bwd = _mtp_s(sc)
        head_fwd, head_bwd = head_fwd + mtp_fwd, head_bwd + mtp_bwd

    mb, kernels = ops.memory_bound_bytes(sc), ops.kernel_counts(sc)

    def hbm_s(nbytes: float) -> float:
        return float(ops.memory_bound_s(nbytes, sc))

    # (dense layer, MoE layer); a backward's own bytes and kernels (ops: 2x the forward's plus the fp8 recipe's
    # gradient casts), plus what it recomputes: the whole forward under full recompute, or the selected modules
    mem_fwd = (hbm_s(mb.attention_bytes + mb.dense_mlp_bytes), hbm_s(mb.attention_bytes + mb.moe_bytes))
    norms_again = 2.0 * hbm_s(mb.norm_bytes) if again(RecomputeModule.LAYERNORM) else 0.0
    moe_mem_again = hbm_s(mb.moe_bytes) if again(RecomputeModule.MOE) else 0.0
    mem_bwd = (hbm_s(mb.attention_bwd_bytes + mb.dense_mlp_bwd_bytes) + (mem_fwd[0] if full else norms_again),
               hbm_s(mb.attention_bwd_bytes + mb.moe_bwd_bytes) + (mem_fwd[1] if full
                                                                   else norms_again + moe_mem_again))
    launch = prof.efficiency.kernel_launch_s
    # delayed scaling's amax update runs once per pipeline chunk and pass: spread over the chunk's layers
    amax_s = launch * kernels.amax_update / sc.mean_chunk_layers
    launch_fwd = (launch * (kernels.attention + kernels.dense_mlp) + amax_s,
                  launch * (kernels.attention + kernels.moe) + amax_s)
    launch_bwd = (launch * (kernels.attention_bwd + kernels.dense_mlp_bwd) + amax_s,
                  launch * (kernels.attention_bwd + kernels.moe_bwd) + amax_s)
    if full:
        launch_bwd = (launch_bwd[0] + launch_fwd[0], launch_bwd[1] + launch_fwd[1])
    head_extra = (hbm_s(mb.lm_head_bytes), launch * kernels.lm_head)
    head_extra_bwd = (ops.BACKWARD_BYTES_FACTOR * head_extra[0], launch * kernels.lm_head_bwd)
    experts_again = full or again(RecomputeModule.MOE)
    row_fwd = hbm_s(mb.expert_row_bytes)
    # rerun experts (expert_rerun_fwd) bring their measured activation with them; the activation recomputed alone
    # is charged here, also where a calibrated expert FFN's time held its first run
    row_again = row_fwd if experts_again else \
        hbm_s(mb.expert_row_bytes + mb.expert_act_measured_bytes) if again(RecomputeModule.MOE_ACT) else 0.0
    row_bwd = hbm_s(mb.expert_row_bwd_bytes) + row_again
    budget = ((projections[0] + dense[0], projections[1] + dense[1]),
              (projections[0] + shared[0], projections[1] + shared[1]))
    return LayerCosts(attn_fwd, attn_bwd, dense[0], dense_bwd, router_fwd, router_bwd, head_fwd, head_bwd, core,
                      shared, budget,
                      memory_bound_fwd_s=mem_fwd, memory_bound_bwd_s=mem_bwd,
                      launch_fwd_s=launch_fwd, launch_bwd_s=launch_bwd,
                      lm_head_extra_fwd_s=head_extra, lm_head_extra_bwd_s=head_extra_bwd,
                      expert_row_memory_bound_s=row_fwd, expert_row_memory_bound_bwd_s=row_bwd,
                      expert_rerun_fwd=1.0 if experts_again else 0.0)


def _router_and_shared_s(sc: Scenario) -> tuple[tuple[float, float], tuple[float, float]]:
    """(router GEMM, shared experts' GEMMs), each (forward, backward) seconds. The router stays in bf16 under fp8
    (Transformer Engine; DeepSeek-V3 report 3.3)."""
    m, lay, prof, dt = sc.model, sc.layout, sc.cluster.profile, sc.training.dtype
    router = cc.gemms_time_s(((sc.tokens_routed_per_rank, m.num_experts, m.hidden_size),),
                             gg.gemm_rates(prof, dt, linear=False, grad_dtype=sc.training.grad_dtype))
    shared = cc.gemms_time_s(cc.ffn_gemms(m, sc.tokens_per_micro_batch, m.expert_ffn_size * m.num_shared_experts,
                                          lay.tp), gg.gemm_rates(prof, dt, grad_dtype=sc.training.grad_dtype)) \
        if m.num_shared_experts else (0.0, 0.0)
    return router, shared


def _mtp_s(sc: Scenario) -> tuple[float, float]:
    """(forward, backward) seconds of the multi-token-prediction modules on a last-stage rank, per micro-batch:
    projection, one transformer layer, the shared LM head and loss. Its MoE layer's experts get balanced
    routing (no routing is drawn for it) and its all-to-all and TP collectives are not simulated."""
    m, lay, prof, dt = sc.model, sc.layout, sc.cluster.profile, sc.training.dtype
    linear = gg.gemm_rates(prof, dt, grad_dtype=sc.training.grad_dtype)
    tokens = sc.tokens_per_micro_batch
    core = cc.attention_core_s(m, tokens, sc.training.seq_len, lay.tp, prof, dt, windowed=m.mtp_layer_windowed,
                               cp=lay.cp)
    gemms = ((tokens, m.hidden_size / lay.tp, 2 * m.hidden_size), *cc.attention_gemms(m, tokens, lay.tp))
    if m.mtp_layer_is_moe:
        local_experts = m.num_experts // lay.ep
        rows = sc.tokens_routed_per_rank * m.top_k * lay.etp / local_experts  # each etp shard sees its group's
        router, shared = _router_and_shared_s(sc)
        experts = cc.expert_time_s(np.full(local_experts, rows), m, prof, dt, lay.etp, sc.training.grad_dtype)
        ffn = (router[0] + shared[0] + float(experts[0]), router[1] + shared[1] + float(experts[1]))
    else:
        gemms = (*gemms, *cc.ffn_gemms(m, tokens, m.dense_ffn_size, lay.tp))
        ffn = (0.0, 0.0)
    layer = cc.gemms_time_s(gemms, linear)
    head = cc.gemms_time_s(((tokens, m.vocab_size / lay.tp, m.hidden_size),),
                           gg.gemm_rates(prof, dt, linear=False, grad_dtype=sc.training.grad_dtype))
    forward = layer[0] + ffn[0] + core[0]
    tr = sc.training
    rerun = forward if tr.recompute is Recompute.FULL else (core[0] if tr.recomputes(RecomputeModule.CORE_ATTN)
                                                            else 0.0)
    backward = layer[1] + ffn[1] + core[1] + rerun + head[1]
    return m.num_mtp_layers * (forward + head[0]), m.num_mtp_layers * backward


def _all_to_all(net: CollectiveModel, links: FlowNetwork, groups: np.ndarray,
                ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time [M, G], link bytes [M, links]) of one exchange: when the timing model is the link model, each
    group's link loads are computed once for both."""
    if net is links:
        return links.all_to_all_and_link_bytes(groups, ranks)
    return net.all_to_all_s(groups, ranks), links.link_bytes(groups, ranks)


def wire_rows(sc: Scenario, rows: np.ndarray, group: np.ndarray) -> np.ndarray:
    """[..., src, dst] rows the scenario's token dispatcher sends inside each EP group, from the rows plain
    all-to-all would send; `group` holds the global ranks of one EP group (all groups share its node pattern)."""
    dispatcher = sc.comm.dispatcher
    if dispatcher is TokenDispatcher.ALLTOALL:
        return rows
    if dispatcher is TokenDispatcher.ALLGATHER:
        return allgather_rows(rows.shape, sc.tokens_routed_per_rank)
    gpus = sc.cluster.profile.node.gpus_per_node
    m = sc.model
    return flex_rows(rows, sc.tokens_routed_per_rank, m.top_k, m.num_experts, group // gpus, group % gpus)


def moe_layer_work(sc: Scenario, net: CollectiveModel, links: FlowNetwork, loads: np.ndarray, stage: int,
                   gate_rng: np.random.Generator, placement: Placement | None = None) -> MoeLayerWork:
    """loads [M, q, E]: assignments each local rank's router asks for, per expert, in this layer.
    `net` times the all-to-alls; `links` accounts their bytes on the topology's links (whatever model times).
    `placement` says which EP rank's slots hold which expert (None: contiguous expert parallelism); every EP
    group of the stage holds the same placement."""
    lay, m = sc.layout, sc.model
    M, E = loads.shape[0], m.num_experts
    place = placement if placement is not None else contiguous(E, lay.ep)
    # the gate works per EP group and logical expert: [M, edp, etp, ep_src, E]
    groups = loads.reshape(M, lay.edp, lay.ep, lay.etp, E).transpose(0, 1, 3, 2, 4)
    gate = apply_gate(groups, sc.gate, sc.tokens_routed_per_rank, m.top_k, gate_rng)
    sent = gate.sent.transpose(0, 1, 3, 2, 4)  # [M, edp, ep_src, etp, E]
    if place.split is ReplicaSplit.EVEN:  # every source splits alike: one [E, G] matrix, BLAS products
        w = place.even_matrix(E)
        per = place.contiguous_block(E)
        if per is not None:  # one holder per expert: a block sum, the product's exact value (whole counts)
            to_rank = sent.reshape(sent.shape[:-1] + (lay.ep, per)).sum(-1, dtype=np.float64)
        else:
            to_rank = sent @ w  # [M, edp, ep_src, etp, ep_dst]
        # each replica computes its share of the expert's rows, capacity padding included
        rows_eg = (gate.computed[..., None] * w).sum(axis=2)  # [M, edp, E, ep]; etp shards compute them all
    else:
        split = place.split_matrix(E)  # [ep_src, E, ep_dst]: how each source spreads an expert's rows
        to_rank = np.matmul(sent, split[None, None])  # [M, edp, ep_src, etp, ep_dst]
        arriving = np.einsum("mdste,seg->mdteg", sent, split, optimize=True)  # [M, edp, etp, E, ep_dst]
        total = arriving.sum(-1, keepdims=True)
        holders = place.holders(E)
        even = holders / holders.sum(-1, keepdims=True)
        share = np.where(total > 0, arriving / np.where(total > 0, total, 1.0), even)
        rows_eg = (gate.computed[..., None] * share).sum(axis=2)  # [M, edp, E, ep]
    se = place.slot_expert
    slot_rows = np.where(se == EMPTY, 0.0, rows_eg[..., np.maximum(se, 0), np.arange(lay.ep)[:, None]])  # [M,edp,G,S]
    expert_fwd, expert_bwd = cc.expert_time_s(slot_rows, m, sc.cluster.profile, sc.training.dtype,
                                              lay.etp, sc.training.grad_dtype)  # [M, edp, ep] each
    padded = cc.padded_rows(slot_rows, sc.cluster.profile.efficiency.tile_rows).sum(-1)  # [M, edp, ep]
    recv = to_rank.sum(axis=2)  # [M, edp, etp, ep_dst] rows each rank receives

    # the forward's dispatch (and the combine's backward) may carry fp8 rows; the combine stays bf16
    scale = ops.combine_row_bytes(m, sc.training) / ops.dispatch_row_bytes(m, sc.training)
    ranks = lay.ep_groups()[stage].reshape(-1, lay.ep)  # [edp * etp, ep]: the stage's EP groups run together
    wired = wire_rows(sc, to_rank.transpose(0, 1, 3, 2, 4), ranks[0])  # [M, edp, etp, src, dst]
    matrix = wired * ops.dispatch_row_bytes(m, sc.training)
    groups = matrix.reshape(M, -1, lay.ep, lay.ep)
    back = groups.swapaxes(-1, -2) if scale == 1.0 else groups.swapaxes(-1, -2) * scale
    dispatch, dispatch_links = _all_to_all(net, links, groups, ranks)  # [M, edp * etp], [M, links]
    combine, combine_links = _all_to_all(net, links, back, ranks)
    dispatch, combine = dispatch.reshape(M, lay.edp, lay.etp), combine.reshape(M, lay.edp, lay.etp)
    tier = links.topology.link_tier
    # a byte crossing a tier loads one egress and one ingress link of it
    tier_bytes = np.stack([dispatch_links[:, tier == t].sum(-1) / 2.0 for t in range(3)], axis=-1)
    sent_bytes = (matrix * (1.0 - np.eye(lay.ep))).sum(-1)  # [M, edp, etp, ep_src]

    def per_rank(x_edp_ep: np.ndarray) -> np.ndarray:  # [M, edp, ep] -> [M, q] (same for every etp shard)
        return np.repeat(x_edp_ep[..., None], lay.etp, axis=-1).reshape(M, -1)

    def per_rank_group(x_edp_etp: np.ndarray) -> np.ndarray:  # [M, edp, etp] -> [M, q]
        return np.repeat(x_edp_etp[:, :, None, :], lay.ep, axis=2).reshape(M, -1)

    def per_micro_batch(x: np.ndarray) -> np.ndarray:  # [M, edp, etp] -> [M]
        return x.reshape(M, -1).sum(-1)

    # [M, edp, ep] each; an EP group's members share one dispatch time (the engine's collectives): its slowest
    # member's ETP group sets it
    etp_gather, etp_scatter = (np.broadcast_to(x.max(-1, keepdims=True), x.shape)
                               for x in etp_collectives_s(sc, net, recv.sum(axis=2), stage))

    gpu_rows = slot_rows.sum(-1)  # [M, edp, ep]
    expert_load = loads.sum(axis=1)  # [M, E]
    tokens = float(sc.tokens_routed_per_rank * lay.ranks_per_stage)
    return MoeLayerWork(
        dispatch_s=per_rank_group(dispatch) + per_rank(etp_gather),
        combine_s=per_rank_group(combine) + per_rank(etp_scatter),
        expert_fwd_s=per_rank(expert_fwd),
        expert_bwd_s=per_rank(expert_bwd),
        computed_rows=per_rank(gpu_rows),
        expert_rows=per_rank(padded),
        sent_rows=sent.sum(-1).reshape(M, -1),
        returned_rows=recv.transpose(0, 1, 3, 2).reshape(M, -1),
        sent_bytes=sent_bytes.transpose(0, 1, 3, 2).reshape(M, -1),
        expert_max_over_mean=expert_load.max(-1) / np.maximum(expert_load.mean(-1), 1e-12),
        gpu_max_over_mean=(gpu_rows.max(-1) / np.maximum(gpu_rows.mean(-1), 1e-12)).max(-1),
        dropped_fraction=per_micro_batch(gate.dropped) / (tokens * m.top_k),
        dropped_first_fraction=per_micro_batch(gate.dropped_first) / np.maximum(per_micro_batch(gate.first_choices), 1),
        padding_fraction=per_micro_batch(gate.padding) / np.maximum(slot_rows.reshape(M, -1).sum(-1), 1),
        unrouted_fraction=per_micro_batch(gate.unrouted_tokens) / tokens,
        a2a_bytes=sent_bytes.reshape(M, -1).sum(-1),
        a2a_tier_bytes=tier_bytes,
        link_bytes=dispatch_links.sum(0) + combine_links.sum(0),
        a2a_matrix=groups[:, 0].mean(0),
        sent_per_expert=sent.reshape(M, -1, E),
        computed_per_expert=gate.computed.reshape(M, -1, E),
    )


def etp_collectives_s(sc: Scenario, net: CollectiveModel, gathered_rows: np.ndarray, stage: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Expert tensor parallelism under Megatron's alltoall dispatcher: after the all-to-all each ETP group (the etp
    ranks of one EP rank) all-gathers the rows its members received, so that every shard computes all of them,
    and reduce-scatters the partial outputs before the combine. gathered_rows [M, edp, ep]: the rows of each ETP
    group. Returns (all-gather, reduce-scatter) seconds [M, edp, ep], zeros when etp is 1 or another dispatcher
    runs (its tokens reach every shard already). Each is the network's time for the group: two calls per layer (a
    latency and the largest group's bytes), the bytes term scaled to each group's rows."""
    lay, m, tr = sc.layout, sc.model, sc.training
    zeros = np.zeros(gathered_rows.shape)
    if lay.etp == 1 or sc.comm.dispatcher is not TokenDispatcher.ALLTOALL:
        return zeros, zeros
    groups = lay.etp_groups()[stage]  # [edp, ep, etp]
    out = []
    for row_bytes, collective in ((ops.dispatch_row_bytes(m, tr), net.all_gather_s),
                                  (ops.combine_row_bytes(m, tr), net.reduce_scatter_s)):
        nbytes = gathered_rows * row_bytes
        largest = float(nbytes.max())
        if largest <= 0:
            out.append(zeros)
            continue
        latency = np.asarray(collective(1.0, groups))  # [edp, ep]
        per_byte = (np.asarray(collective(largest, groups)) - latency) / largest
        out.append(np.where(nbytes > 0, latency[None] + per_byte[None] * nbytes, 0.0))
    return out[0], out[1]


@dataclass(frozen=True)
class StaticWork:
    """Costs that do not change from step to step, indexed by stage s and local rank q (seconds)."""

    layers: LayerCosts
    tp_comm_s: np.ndarray  # [pp, q, 2] one layer's TP collectives in one pass; [..., 0] dense, [..., 1] MoE layer
    cp_comm_s: np.ndarray  # [pp, q, 2] one layer's exposed ring-attention exchange; [..., 0] forward, [..., 1] bwd
    cp_bytes: tuple[float, float]  # bytes one rank sends in that exchange (forward, backward)
    p2p_s: np.ndarray  # [pp, q] activation (or gradient) transfer from stage s to s+1 (last stage: to stage 0
    # with vpp > 1, else 0)
    p2p_bytes: float
    dp_dense_s: np.ndarray  # [pp, q] exposed all-reduce of non-expert gradients over the dp x cp group
    dp_expert_s: np.ndarray  # [pp, q] exposed all-reduce of expert gradients over the edp group
    dp_hidden_s: np.ndarray  # [2, pp, q] the part of each (dense, expert) that overlapped compute
    optimizer_s: np.ndarray  # [pp] optimizer update on one rank of the stage
    weight_cast_s: np.ndarray  # [pp, 2] the fp8 recipe's once-per-step weight casts (memory-bound, launches)
    grad_bytes: np.ndarray  # [pp, 2] dense, expert gradient bytes per rank


def tp_collectives_s(sc: Scenario, net: CollectiveModel, groups: np.ndarray) -> np.ndarray:
    """[..., 2] seconds of one layer's sequence-parallel collectives in one pass for each TP group of `groups`
    [..., tp] (GPU ids): [..., 0] a dense layer, [..., 1] an MoE layer. Attention does an all-gather and a
    reduce-scatter; a dense FFN or the shared experts add another pair."""
    lay, m = sc.layout, sc.model
    if lay.tp == 1:
        return np.zeros(groups.shape[:-1] + (2,))
    gathered = sc.tokens_per_micro_batch * m.hidden_size * sc.training.dtype.activation_bytes
    one = np.asarray(net.all_gather_s(gathered, groups))
    shared = 2 if m.num_shared_experts else 0
    return np.stack([(2 + 2) * one, (2 + shared) * one], axis=-1)


def static_work(sc: Scenario, net: CollectiveModel) -> StaticWork:
    lay, m, tr = sc.layout, sc.model, sc.training
    q = lay.ranks_per_stage
    tp_comm = np.repeat(tp_collectives_s(sc, net, lay.tp_groups()), lay.tp, axis=1)  # [pp, q, 2]

    layers = layer_costs(sc)
    cp_comm, cp_bytes = ring_attention_exposed(sc, net, layers)

    p2p_bytes = sc.tokens_routed_per_rank * m.hidden_size * tr.dtype.activation_bytes
    p2p = np.zeros((lay.pp, q))
    for s in range(lay.pp if lay.vpp > 1 else lay.pp - 1):  # interleaving: the last stage sends on to stage 0
        for i in range(q):
            src = s * q + i
            p2p[s, i] = net.p2p_s(p2p_bytes, int(lay.physical(src)), int(lay.physical((src + q) % lay.world_size)))

    params = np.array([stage_params(sc, s) for s in range(lay.pp)])  # [pp, 2] dense, expert
    grad_bytes = params * tr.grad_dtype.bytes
    opt = tr.optimizer

    def sync_s(nbytes: float, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whole sync, its parameter all-gather part): an all-reduce, or with the distributed optimizer a
        reduce-scatter of the gradients and an all-gather of the updated parameters. With ring collectives each is
        timed as the network times it (a ring's halves of the all-reduce, or what a calibrated profile measured
        for each); with another all-reduce algorithm (NVLS, hierarchical) the all-reduce's time, half of it the
        gather (NCCL's reduce-scatter and all-gather follow the same algorithms)."""
        if not opt.distributed or sc.network.all_reduce is not AllReduceAlgorithm.RING:
            whole = net.all_reduce_s(nbytes, groups)
            return whole, (whole / 2.0 if opt.distributed else np.zeros_like(whole))
        gather = net.all_gather_s(nbytes, groups)
        return net.reduce_scatter_s(nbytes, groups) + gather, gather

    # q = t + tp * (c + cp * d): the dense group of a rank is its tp rank's; q = t + etp * (j + ep * d) alike
    dense = [sync_s(grad_bytes[s, 0], lay.dp_groups()[s]) for s in range(lay.pp)]  # each [tp]
    expert = [sync_s(grad_bytes[s, 1], lay.edp_groups()[s]) for s in range(lay.pp)]  # each [ep, etp]
    dp_dense, gather_dense = (np.tile(np.stack([d[i] for d in dense]), (1, lay.dp_cp)) for i in (0, 1))
    dp_expert, gather_expert = (np.tile(np.stack([e[i] for e in expert]).reshape(lay.pp, lay.ep * lay.etp),
                                        (1, lay.edp)) for i in (0, 1))

    # read + write per param: state, gradient, the weights (the fp8 recipe's fp8 copy is written by its weight
    # casts on the next step's first micro-batch: weight_casts_s)
    touched = 2 * opt.state_bytes_per_param + tr.grad_dtype.bytes + 2 * tr.dtype.weight_bytes
    shard = np.array([lay.dp_cp, lay.edp]) if opt.distributed else np.ones(2)
    optimizer_s = (params / shard).sum(-1) * touched / sc.cluster.profile.gpu.hbm_bandwidth_bytes_per_s
    exposed, hidden = dp_overlap(sc, layers, np.stack([dp_dense, dp_expert]), np.stack([gather_dense, gather_expert]))
    return StaticWork(layers, tp_comm, cp_comm, cp_bytes, p2p, float(p2p_bytes), exposed[0], exposed[1], hidden,
                      optimizer_s, weight_casts_s(sc), grad_bytes)


def dp_overlap(sc: Scenario, layers: LayerCosts, sync_s: np.ndarray, gather_s: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(exposed, hidden) seconds of the gradient syncs sync_s [2, pp, q] under the overlap options. With the
    distributed optimizer a sync is a reduce-scatter and the parameters' all-gather, gather_s [2, pp, q] of it
    (default: half of it, a ring's; without, the whole all-reduce is the reduction). overlap_grad_reduce runs the
    reduction bucket by bucket during the last micro-batch's backward: what one micro-batch's backward of the
    stage's layers (outside the routed experts) cannot cover stays exposed, and at least the last layer's bucket.
    overlap_param_gather runs the all-gather under the next step's first forward alike."""
    comm, lay = sc.comm, sc.layout
    if not (comm.overlap_grad_reduce or comm.overlap_param_gather):
        return sync_s, np.zeros_like(sync_s)
    per_stage = np.array(sc.stage_layer_counts, dtype=np.float64)[None, :, None]
    fwd, bwd = np.zeros(lay.pp), np.zeros(lay.pp)
    lc = layers
    for layer in range(sc.model.num_layers):
        moe = int(sc.model.is_moe_layer(layer))
        stage = sc.stage_of_layer(layer)
        fwd[stage] += lc.attention_fwd_s + (lc.router_fwd_s if moe else lc.dense_ffn_fwd_s) \
            + lc.memory_bound_fwd_s[moe]
        bwd[stage] += lc.attention_bwd_s + (lc.router_bwd_s if moe else lc.dense_ffn_bwd_s) \
            + lc.memory_bound_bwd_s[moe]
    if not sc.training.optimizer.distributed:
        gather = np.zeros_like(sync_s)
    else:
        gather = sync_s / 2.0 if gather_s is None else gather_s
    reduce = sync_s - gather
    exposed = sync_s.copy()
    if comm.overlap_grad_reduce:
        last_bucket = reduce / per_stage
        exposed = exposed - reduce + np.maximum(last_bucket, reduce - bwd[None, :, None])
    if comm.overlap_param_gather:
        exposed = exposed - gather + np.maximum(0.0, gather - fwd[None, :, None])
    return exposed, sync_s - exposed


def weight_casts_s(sc: Scenario) -> np.ndarray:
    """[pp, 2] (memory-bound, launch) seconds of one step's fp8 weight casts on a rank of each stage: every linear
    weight cast once, on the step's first micro-batch (moesim.cost.ops.fp8_weight_casts; zero without fp8)."""
    out = np.zeros((sc.layout.pp, 2))
    casts = {moe: ops.fp8_weight_casts(sc, moe) for moe in (False, True)}
    if not casts[True].kernels and not casts[False].kernels:
        return out
    launch = sc.cluster.profile.efficiency.kernel_launch_s
    for layer in range(sc.model.num_layers):
        c = casts[sc.model.is_moe_layer(layer)]
        out[sc.stage_of_layer(layer)] += (float(ops.memory_bound_s(c.bytes, sc)), launch * c.kernels)
    return out


def ring_attention_exposed(sc: Scenario, net: CollectiveModel,
                            layers: LayerCosts) -> tuple[np.ndarray, tuple[float, float]]:
    """([pp, q, 2] exposed seconds per layer, (forward, backward) bytes per rank) of context parallelism's ring
    attention (Megatron's: cp - 1 steps, each sending this rank's key/value chunk to the next rank of the ring while
    the attention of the chunk in hand runs; the backward sends the keys/values and their gradients). A step's
    transfers (the slowest hop of the stage's rings) hide behind that step's share of the attention core; what sticks
    out is exposed. A recomputed attention core reruns its forward ring in the backward."""
    lay, m = sc.layout, sc.model
    q = lay.ranks_per_stage
    if lay.cp == 1:
        return np.zeros((lay.pp, q, 2)), (0.0, 0.0)
    kv = sc.tokens_per_micro_batch * (m.k_width + m.v_width) / lay.tp * sc.training.dtype.activation_bytes
    sent = (kv, 2.0 * kv)
    exposed = np.zeros((lay.pp, q, 2))
    rings = lay.cp_groups()  # [pp, dp, tp, cp]
    for s in range(lay.pp):
        hops = rings[s].reshape(-1, lay.cp)
        pairs = list(zip(hops.ravel().tolist(), np.roll(hops, -1, axis=-1).ravel().tolist()))
        for phase in range(2):  # every hop of every ring runs at once: a step lasts as long as the slowest
            step_s = max(float(net.p2p_s(sent[phase], a, b)) for a, b in pairs)
            hidden_by = layers.attention_core_s[phase] / lay.cp
            exposed[s, :, phase] = (lay.cp - 1) * max(0.0, step_s - hidden_by)
    tr = sc.training
    if tr.recompute is Recompute.FULL or tr.recomputes(RecomputeModule.CORE_ATTN):
        exposed[..., 1] += exposed[..., 0]  # the recomputed attention runs its forward ring again
    return exposed, (float((lay.cp - 1) * sent[0]), float((lay.cp - 1) * sent[1]))
