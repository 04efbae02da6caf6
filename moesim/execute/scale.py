"""A plan -> the scenario `moesim execute` can run on the machine at hand, and every change said in words.

What is executed: data, tensor (Megatron's sequence parallel), expert (all-to-all with uneven splits),
expert-tensor (the alltoall dispatcher's all-gather and reduce-scatter in the ETP group) and pipeline
parallelism (1F1B, and interleaved with virtual stages: the model grows to pp x vpp layers where it must), the
alltoall, allgather and flex dispatchers (flex as DeepEP inside one node: one row per (token, destination rank),
the gates beside it, padding computed at the expert), the plan's routing (the simulator's own draws, same seed),
its gate (capacity, dropping, padding), its placement policy (replicas with token splitting, per-step shadows,
migrations of weights and Adam state; its slots and redundant experts scaled with the experts), attention, shared
experts, dense layers, the LM head and loss, gradient all-reduce over dp and edp (reduce-scatter and all-gather
with the distributed optimizer), fused Adam. What is not executed yet is scaled to 1 and said: context
parallelism. The model shrinks to what a rank of this machine runs in seconds: its widths, layers, experts,
vocabulary and batch (the defaults below), and runs fp32 on CPUs (bf16 on GPUs; fp8 is not executed).

Pure: no torch. The scaled scenario is checked by the same validators as a scenario file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.loader import check_placement
from moesim.spec.comm import CommSpec, TokenDispatcher
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError
from moesim.spec.hardware import ClusterProfile, ClusterSpec
from moesim.spec.layout import ParallelLayout
from moesim.spec.placement import MigrationMode, PlacementSpec
from moesim.spec.placement_params import EplbParams, FasterMoeParams
from moesim.spec.model import Activation
from moesim.spec.scenario import Scenario
from moesim.spec.simulation import RecordDetail
from moesim.spec.training import Fp8Recipe, Recompute, RecomputeModule


@dataclass(frozen=True)
class ScaleLimits:
    """The largest model `moesim execute` runs per rank (defaults: a few seconds a step on one CPU core)."""

    hidden_size: int = 256
    head_dim: int = 64
    num_layers: int = 2
    num_experts: int = 8
    ffn_size: int = 512
    vocab_size: int = 2048
    seq_len: int = 256
    num_micro_batches: int = 2


@dataclass(frozen=True)
class ScaledPlan:
    scenario: Scenario  # what runs: world = nproc ranks on one node of `profile`
    changes: tuple[str, ...]  # every change from the plan, "key: old -> new (why)"


def _largest_divisor(n: int, at_most: int, also_divides: int | None = None) -> int:
    return max(d for d in range(1, min(n, at_most) + 1)
               if n % d == 0 and (also_divides is None or also_divides % d == 0))


def scale_plan(sc: Scenario, nproc: int, profile: ClusterProfile, dtype: Dtype = Dtype.FP32,
               steps: int | None = None, limits: ScaleLimits = ScaleLimits()) -> ScaledPlan:
    """The plan `sc` shrunk to `nproc` ranks on one node of `profile` (its gpus_per_node set to nproc).
    Raises SpecError for what cannot be executed at all (expert-choice gates are checked at run time by
    moesim.execute.run)."""
    if nproc < 1:
        raise SpecError("--nproc", nproc, "an integer >= 1")
    changes: list[str] = []

    def note(key: str, old, new, why: str) -> None:
        if old != new:
            changes.append(f"{key}: {old} -> {new} ({why})")

    lay, m, tr = sc.layout, sc.model, sc.training
    if sc.routing.trace is not None:
        experts = m.num_experts  # a replayed trace routes over its own experts
        most_layers = min(m.num_layers, sc.routing.trace.num_layers)
    else:
        experts = min(m.num_experts, limits.num_experts)
        most_layers = m.num_layers
    layers = min(most_layers, limits.num_layers)
    hidden = min(m.hidden_size, limits.hidden_size)
    head_dim = min(limits.head_dim, hidden)
    heads = max(1, hidden // head_dim)
    kv_heads = _largest_divisor(heads, m.num_kv_heads if not m.is_mla else heads)
    ratio = hidden / m.hidden_size
    pp = _largest_divisor(nproc, min(lay.pp, layers), also_divides=layers)  # blocks of ranks, equal layers each
    # interleaved stages: vpp chunks of one layer each per stage (up to the plan's vpp and layers, at most 2 chunks
    # beyond the layer limit); Megatron needs the micro-batches to be a multiple of pp
    micro_batches = min(sc.num_micro_batches, limits.num_micro_batches)
    vpp = 1
    if pp > 1 and micro_batches % pp == 0:
        vpp = max((v for v in range(1, lay.vpp + 1) if pp * v <= min(most_layers, max(layers, 2 * pp))),
                  default=1)
    if vpp > 1:
        layers = max(layers - layers % (pp * vpp), pp * vpp)
    first_dense = min(m.first_k_dense, 1) if layers > 1 else 0
    # tensor parallel splits the heads, the key/value groups and the sequence: tp must divide all three
    tp = _largest_divisor(nproc // pp, lay.tp, also_divides=math.gcd(heads, kv_heads))
    dp = nproc // (pp * tp)

    def ffn(size: int) -> int:  # widths shrink with the hidden size, in multiples of 16, within the limit
        return max(16, min(limits.ffn_size, round(size * ratio / 16) * 16)) if size else 0

    # expert tensor parallel first, in shards of whole 16-column blocks, leaving at least 2 ranks to expert
    # parallelism when the plan has both; the allgather and flex dispatchers run without it
    stage = tp * dp
    alltoall = sc.comm.dispatcher is TokenDispatcher.ALLTOALL
    etp_cap = min(lay.etp, stage // min(lay.ep, 2)) if alltoall else 1
    etp = _largest_divisor(stage, max(1, etp_cap), also_divides=ffn(m.expert_ffn_size) // 16)
    ep = _largest_divisor(stage // etp, lay.ep, also_divides=experts)
    note("layout.etp", lay.etp, etp, f"the largest divisor of a stage's {stage} ranks up to the plan's, leaving "
         "expert parallelism 2 of them" if alltoall else "expert tensor parallelism runs with the alltoall "
         "dispatcher only")
    note("layout.cp", lay.cp, 1, "not executed yet: moesim execute runs data, tensor, expert, expert-tensor and "
         "pipeline parallelism")
    note("layout.vpp", lay.vpp, vpp, f"the largest up to the plan's with {pp} stage(s) x vpp layers within "
         f"{max(limits.num_layers, 2 * pp)} and the micro-batches a multiple of pp")
    note("layout.pp", lay.pp, pp, f"the largest divisor of {nproc} ranks and of the layers up to the plan's "
         f"({min(most_layers, limits.num_layers)})")
    note("layout.tp", lay.tp, tp, f"the largest divisor of a stage's {nproc // pp} ranks and of the {heads} heads "
         f"and {kv_heads} key/value groups up to the plan's")
    note("layout.ep", lay.ep, ep, f"the largest divisor of the {stage // etp} ranks per ETP shard of a stage and "
         f"{experts} experts up to the plan's")
    note("layout.dp", lay.dp, dp, f"{nproc} ranks over {pp} stage(s) of tp {tp}")
    for key in ("first_stage_layers", "last_stage_layers"):
        note(f"layout.{key}", getattr(lay, key), None, "the scaled layers split evenly over the stages")
    note("layout.order", lay.order.value, "tp-cp-ep-dp-pp", "stages are blocks of consecutive ranks")
    layout = ParallelLayout(tp=tp, cp=1, pp=pp, dp=dp, ep=ep, etp=etp, vpp=vpp)

    changes.append(f"model: {m.name} -> a scaled copy ({layers} layers, hidden {hidden}, {heads} heads of "
                   f"{head_dim}, {experts} experts): one rank of this machine runs a step in seconds")
    note("model.num_layers", m.num_layers, layers, f"{first_dense} dense + {layers - first_dense} MoE")
    note("model.first_k_dense", m.first_k_dense, first_dense, "at most one dense layer")
    note("model.moe_every", m.moe_every, 1, "every layer after the dense one is MoE")
    note("model.hidden_size", m.hidden_size, hidden, "width limit")
    note("model.num_attention_heads", m.num_attention_heads, heads, f"head_dim {head_dim}")
    note("model.num_kv_heads", m.num_kv_heads, kv_heads, "a divisor of the heads")
    if m.is_mla:
        changes.append("model.kv_lora_rank: multi-head latent attention -> grouped-query attention (MLA is not "
                       "executed)")
    if m.sliding_window is not None:
        changes.append(f"model.sliding_window: {m.sliding_window} -> full attention (not executed)")
    note("model.attention_sinks", m.attention_sinks, False, "not executed")
    note("model.num_experts", m.num_experts, experts, "expert limit")
    top_k = min(m.top_k, max(1, experts // 2))
    note("model.top_k", m.top_k, top_k, "at most half the experts")
    note("model.expert_ffn_size", m.expert_ffn_size, ffn(m.expert_ffn_size), "scaled with the hidden size")
    dense_ffn = ffn(m.dense_ffn_size)
    note("model.dense_ffn_size", m.dense_ffn_size, dense_ffn, "scaled with the hidden size")
    shared = min(m.num_shared_experts, 1)
    note("model.num_shared_experts", m.num_shared_experts, shared, "at most one")
    if shared and tp > 1:
        changes.append("model.num_shared_experts: the shared expert runs whole on each TP rank's tokens (not split "
                       "by tensor parallelism)")
    vocab = min(m.vocab_size, limits.vocab_size)
    note("model.vocab_size", m.vocab_size, vocab, "vocabulary limit")
    note("model.num_mtp_layers", m.num_mtp_layers, 0, "not executed")
    tied = m.tie_word_embeddings and pp == 1
    note("model.tie_word_embeddings", m.tie_word_embeddings, tied, "the embedding and the LM head are on different "
         "stages: the all-reduce of tied copies is not executed")
    note("model.activation", m.activation.value, Activation.SWIGLU.value, "the executed experts are SwiGLU")
    model = m.replace(preset="", name=f"{m.name} (scaled)", num_layers=layers, first_k_dense=first_dense,
                      moe_every=1, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=kv_heads,
                      head_dim=head_dim, q_lora_rank=None, kv_lora_rank=None, qk_nope_head_dim=None,
                      qk_rope_head_dim=None, v_head_dim=None, sliding_window=None, full_attention_every=None,
                      attention_sinks=False, num_experts=experts, top_k=top_k,
                      expert_ffn_size=ffn(m.expert_ffn_size), dense_ffn_size=dense_ffn, num_shared_experts=shared,
                      vocab_size=vocab, num_mtp_layers=0, activation=Activation.SWIGLU,
                      tie_word_embeddings=tied)

    seq = min(tr.seq_len, limits.seq_len)
    note("training.seq_len", tr.seq_len, seq, "sequence limit")
    note("training.micro_batch_size", tr.micro_batch_size, 1, "one sequence per micro-batch")
    gbs = dp * micro_batches
    note("training.global_batch_size", tr.global_batch_size, gbs, f"{micro_batches} micro-batches x dp {dp}")
    note("training.dtype", tr.dtype.value, dtype.value, "CPU ranks compute in fp32" if dtype is Dtype.FP32
         else "fp8 is not executed")
    note("training.recompute", tr.recompute.value, Recompute.NONE.value, "not executed")
    state_bytes = 2 * (4 if dtype is Dtype.FP32 else 2)  # torch's Adam: two moments in the parameters' dtype
    note("training.optimizer.state_bytes_per_param", tr.optimizer.state_bytes_per_param, state_bytes,
         f"the executed Adam keeps two moments in {dtype.value}, no master copy")
    note("training.grad_dtype", tr.grad_dtype.value, dtype.value, "the executed gradients are in the parameters' "
         "dtype (no fp32 main grads)")
    training = tr.replace(seq_len=seq, micro_batch_size=1, global_batch_size=gbs, dtype=dtype, grad_dtype=dtype,
                          recompute=Recompute.NONE,
                          recompute_modules=(RecomputeModule.CORE_ATTN,), fp8_recipe=Fp8Recipe.DELAYED,
                          fp8_dispatch=False,
                          optimizer=tr.optimizer.replace(state_bytes_per_param=state_bytes))
    # every dispatcher runs (flex inside the one node: its intra-node half); the overlaps are not executed yet
    comm = CommSpec(dispatcher=sc.comm.dispatcher)
    for key in type(comm).model_fields:
        note(f"comm.{key}", _plain(getattr(sc.comm, key)), _plain(getattr(comm, key)), "not executed yet")

    node = profile.node.replace(gpus_per_node=nproc)
    note("cluster", f"{sc.cluster.nodes} x {sc.cluster.profile.node.gpus_per_node} GPUs of "
         f"{sc.cluster.profile.name}", f"1 x {nproc} ranks of {profile.name}", "the machine at hand")
    cluster = ClusterSpec(profile=profile.replace(node=node), nodes=1)
    sim = sc.simulation.replace(steps=steps if steps is not None else sc.simulation.steps,
                                warmup_steps=max(1, sc.simulation.warmup_steps), records=RecordDetail.FULL)
    placement = _scale_placement(sc.placement, m.num_experts // lay.ep, lay.ep, experts, ep, note)
    note("simulation.warmup_steps", sc.simulation.warmup_steps, sim.warmup_steps, "the first step runs untimed "
         "(allocations, gloo's first connections)")
    try:
        scaled = sc.replace(name=f"{sc.name}-executed", cluster=cluster, model=model, training=training,
                            layout=layout, comm=comm, simulation=sim, placement=placement, plan=None)
        check_placement(scaled)
    except SpecError as err:
        raise SpecError(f"scaled plan: {err.key}", err.value, err.expected) from None
    return ScaledPlan(scaled, tuple(changes))


def _scale_placement(pl: PlacementSpec, per_rank: int, plan_ep: int, experts: int, ep: int, note
                     ) -> PlacementSpec:
    """The plan's placement for `experts` over `ep` ranks: spare slots per rank in the plan's proportion to the
    experts a rank holds, EPLB's redundant experts in the plan's proportion to the experts (a multiple of ep that
    fits the slots), FasterMoE's shadow limit within the experts."""
    scaled_per_rank = experts // ep
    slots = pl.slots_per_gpu
    if slots is not None:
        spare = math.ceil((slots - per_rank) * scaled_per_rank / per_rank)
        slots = min(experts, scaled_per_rank + spare)
        note("placement.slots_per_gpu", pl.slots_per_gpu, slots, f"{scaled_per_rank} experts per rank and the "
             "plan's proportion of spare slots")
    params = pl.params
    if isinstance(params, EplbParams):
        room = ep * (slots if slots is not None else scaled_per_rank) - experts
        wanted = params.redundant_experts * experts / (per_rank * plan_ep)  # the plan's share of its experts
        redundant = min(room, ep * max(1, round(wanted / ep))) if wanted > 0 else 0
        note("placement.eplb.redundant_experts", params.redundant_experts, redundant, "the plan's proportion of the "
             f"experts ({wanted:g}), rounded to a multiple of the {ep} EP ranks (at least {ep}) within the slots")
        params = params.replace(redundant_experts=redundant)
    if isinstance(params, FasterMoeParams) and params.max_shadows is not None:
        note("placement.fastermoe.max_shadows", params.max_shadows, min(params.max_shadows, experts),
             "at most the experts")
        params = params.replace(max_shadows=min(params.max_shadows, experts))
    note("placement.migration", pl.migration.value, MigrationMode.BLOCKING.value, "moved experts are transferred "
         "before the step's passes (overlapping them with compute is not executed)")
    return pl.replace(slots_per_gpu=slots, params=params, migration=MigrationMode.BLOCKING)


def _plain(value):
    return getattr(value, "value", value)
