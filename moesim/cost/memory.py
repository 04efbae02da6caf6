"""Peak memory per rank (bytes) of one training step, with Megatron-core semantics.

Weights, gradients and optimizer state follow from the parameters a rank holds; activations follow
Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models" (arXiv:2205.05198,
§4), with sequence parallelism whenever tp > 1 so that every stored tensor is split over tp.

Korthikanti's per-layer coefficients (34·s·b·h + 5·a·s²·b bytes, divided by t; 34·s·b·h with FlashAttention,
plus its 4·a·s·b bytes of log-sum-exp) assume 2-byte activations,
1-byte dropout masks, multi-head attention and a GELU MLP of width 4h. Here they are rebuilt from tensor
shapes so that they hold for any dtype, grouped-query attention and SwiGLU, and they reproduce 34 and 5
exactly for that reference case (tests check the 34). Per token the stored tensors are:
  layer norms     2 inputs of h                                       -> 2h elements       (paper: 4sbh)
  attention       LN output h (QKV input), Q, K, V, core output q_out
                  (output-projection input), output dropout mask h    -> h+2q+2kv elements + h mask bytes
                                                                         (MHA: 5h el. + h -> paper: 11sbh)
                  Multi-head latent attention: Q and K of a·(nope+rope), V and the core output of a·v, and each
                  compressed latent (q_lora, kv_lora) twice: its norm's input and the up projection's input
  attention core  FlashAttention: the fp32 log-sum-exp per head and query -> 4·a bytes. (Unfused attention
                  would keep the softmax output, its mask and the dropout output per head and
                  key: a·s·(2 el. + 1 mask byte), the paper's 5as²b, which selective recompute drops.)
  MLP of width F  fc1 input h, then `ffn_matrices` tensors of width F:
                  GELU: fc1 output and GELU output (2F);
                  SwiGLU: gate and up (the fused fc1 output, 2F) and
                  the SwiGLU output (F) = 3F; plus the output mask h  -> h+mF elements + h mask bytes
                                                                         (GELU, F=4h: 9h el. + h -> 19sbh)
An MoE layer replaces the MLP by: the LN output h (read by the router and the shared experts, stored once),
fp32 router logits (num_experts), the shared experts as one MLP of width num_shared·expert_ffn_size without
their own input, the output mask h, and per expert row held by the rank its input h plus m tensors of width
expert_ffn_size/etp. Router probs, permutation indices and the prob-weighted unpermute are left out (small or
transient). Only tensors kept for the backward are counted; transient workspaces are not.
The last stage also keeps, per multi-token-prediction module, its inputs, one transformer layer and the fp32
cross-entropy softmax of its logits (mtp_activation_bytes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from moesim.cost.ops import combine_row_bytes, dispatch_row_bytes
from moesim.cost.pipeline import chunks_in_flight, peak_chunk_counts, schedule
from moesim.spec import Dtype, MoeModelSpec, Recompute, Scenario
from moesim.spec.training import RecomputeModule

_MASK_BYTES = 1  # dropout masks are stored as uint8/bool
_FP32_BYTES = Dtype.FP32.bytes  # router logits and the cross-entropy softmax are kept in fp32


@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak bytes one rank holds during a step, by kind."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    a2a_buffers_bytes: float

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.a2a_buffers_bytes)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def stage_params(scenario: Scenario, stage: int) -> tuple[float, float]:
    """(dense, expert) parameters held by one rank of pipeline stage `stage`. The last stage also holds the
    multi-token-prediction modules (Megatron places them there) and, when pp > 1, the copy of the input
    embedding they need (Megatron's GPTModel builds it `if self.pre_process or self.mtp_process`; a tied LM head
    is that copy). The stage's layers are all its model chunks' (Scenario.stage_layers: uneven splits and
    interleaving); the embedding sits on the first stage's first chunk, the LM head on the last stage's last."""
    model, lay = scenario.model, scenario.layout
    if not 0 <= stage < lay.pp:
        raise ValueError(f"stage {stage} out of range: the layout has pp = {lay.pp} stages")
    dense = expert = 0.0
    for layer in scenario.stage_layers(stage):
        d, e = _layer_params(scenario, model.is_moe_layer(layer))
        dense, expert = dense + d, expert + e
    embedding = model.embedding_params / lay.tp  # vocab-parallel
    if stage == 0:
        dense += embedding  # the input embedding
    if stage == lay.pp - 1:
        if lay.pp > 1 or not model.tie_word_embeddings:
            dense += embedding  # the LM head (a tied one is a copy of the embedding, synced like Megatron's)
        if model.num_mtp_layers:
            d, e = _layer_params(scenario, model.mtp_layer_is_moe)
            dense += model.num_mtp_layers * (d + model.mtp_projection_params / lay.tp)
            expert += model.num_mtp_layers * e
            if lay.pp > 1 and not model.tie_word_embeddings:
                dense += embedding  # MTP embeds the shifted tokens on the last stage
    return dense, expert


def _layer_params(scenario: Scenario, moe: bool) -> tuple[float, float]:
    """(dense, expert) parameters of one transformer layer on one rank."""
    model, lay = scenario.model, scenario.layout
    replicated = model.attention_tp_replicated_params  # MLA's down projections: whole on every tp rank
    dense = (model.attention_params - replicated) / lay.tp + replicated
    if not moe:
        return dense + model.ffn_params(model.dense_ffn_size) / lay.tp, 0.0
    shared = model.num_shared_experts * model.ffn_params(model.expert_ffn_size)
    # reserved placement slots hold full experts (weights, gradients, optimizer state) whether used or not
    local_experts = scenario.placement.slots_per_gpu or model.num_experts // lay.ep
    dense += shared / lay.tp + model.router_params  # the router is replicated over tp
    return dense, local_experts * model.ffn_params(model.expert_ffn_size) / lay.etp


def activation_bytes_per_layer(scenario: Scenario, moe: bool, expert_rows: float) -> float:
    """Bytes one rank stores for the backward of one layer and ONE micro-batch (see the module docstring).
    `expert_rows` (tile-padded, this micro-batch) is used by MoE layers only; it may be a numpy array."""
    return _layer_bytes(scenario, moe, expert_rows, scenario.training.recompute)


def _layer_bytes(scenario: Scenario, moe: bool, expert_rows, recompute: Recompute):
    model, dtype = scenario.model, scenario.training.dtype
    dtype_bytes = dtype.activation_bytes
    # under the fp8 recipe a linear layer saves its input in fp8 for the weight gradient (Megatron's MoE README:
    # "50% activation reduction"): 1 byte plus the recipe's scales (blockwise: an fp32 per 1x128 tile, mxfp8: an
    # E8M0 byte per 1x32 block; fidelity.md §2) instead of dtype_bytes per element of each GEMM input kept
    recipe = scenario.training.fp8_recipe
    fp8_saving = dtype_bytes - (Dtype.FP8.bytes + recipe.scale_bytes_per_activation) if dtype is Dtype.FP8 else 0
    h = model.hidden_size
    tokens = scenario.tokens_routed_per_rank  # s·b/t: sequence parallelism splits every tensor over tp
    if recompute is Recompute.FULL:
        return tokens * h * dtype_bytes  # only the layer input is kept
    # selective recompute drops what its modules recompute (Megatron-LM --recompute-modules); the layer's
    # input (and each recomputed module's input) stays
    drops = scenario.training.recompute_modules if recompute is Recompute.SELECTIVE else ()
    norms = 2 * h * dtype_bytes
    # LN output (the projections' input), Q, K, V, the core's output (the output projection's input), MLA's
    # latents; a sliding window changes none of them
    qkv = model.q_width + model.k_width + model.v_width
    if RecomputeModule.MLA_UP_PROJ in drops and model.is_mla:  # Q, K, V come back from the kept latents
        qkv = 0
    ln_out = h * (dtype_bytes - fp8_saving)  # the projections' input (fp8 under the recipe)
    stored = (h + qkv + model.attn_out_width + _latent_width(model)) * dtype_bytes
    attention = stored - (h + model.attn_out_width) * fp8_saving + h * _MASK_BYTES
    if RecomputeModule.LAYERNORM in drops:
        attention -= ln_out
    # FlashAttention keeps no s x s scores, only the fp32 log-sum-exp per head and query: a/t heads x s·b = a ·
    # tokens. Korthikanti's 5·a·s²·b term (unfused attention) does not apply to the runs being modelled.
    total = tokens * (norms + attention + model.num_attention_heads * _FP32_BYTES)
    m = model.activation.ffn_matrices  # stored intermediate tensors of width F: 3 (gated) or 2 (GELU)

    def mlp(width: float, recomputed: bool = False, act_recomputed: bool = False) -> float:
        """fc1 input h, m tensors of the width; fc1's and fc2's inputs in fp8 under the recipe. Recomputed:
        only the input; without its activation output (fc2's input) when that is recomputed."""
        if recomputed:
            return h * dtype_bytes
        kept = (h + m * width) * dtype_bytes - (h + width) * fp8_saving
        return kept - width * (dtype_bytes - fp8_saving) if act_recomputed else kept

    if not moe:
        dense = mlp(model.dense_ffn_size, RecomputeModule.MLP in drops)
        if RecomputeModule.LAYERNORM in drops and RecomputeModule.MLP not in drops:
            dense -= ln_out  # the MLP's input is the norm's output
        return total + tokens * (dense + h * _MASK_BYTES)
    whole_moe = RecomputeModule.MOE in drops
    shared_width = model.num_shared_experts * model.expert_ffn_size
    shared = mlp(shared_width, whole_moe or RecomputeModule.SHARED_EXPERTS in drops) if shared_width \
        else h * dtype_bytes  # the router's input: the LN output
    if RecomputeModule.LAYERNORM in drops and not whole_moe:
        # the norm's output as counted above: bf16 for the router (and a recomputed shared block's input), the
        # shared fc1's fp8 copy otherwise
        shared_kept = shared_width and RecomputeModule.SHARED_EXPERTS not in drops
        shared -= h * (dtype_bytes - fp8_saving) if shared_kept else h * dtype_bytes
    router = 0.0 if whole_moe else model.num_experts * _FP32_BYTES
    per_token = shared + router + h * _MASK_BYTES
    per_row = 0.0 if whole_moe else mlp(model.expert_ffn_size / scenario.layout.etp,
                                        act_recomputed=RecomputeModule.MOE_ACT in drops)
    return total + tokens * per_token + expert_rows * per_row


def _latent_width(model: MoeModelSpec) -> int:
    """MLA: each compressed latent (query, key/value) is kept twice per token, as its RMSNorm's input and as the
    up projection's input. The rope key part needs nothing beyond K (its rotation is linear)."""
    return 2 * ((model.q_lora_rank or 0) + model.kv_lora_rank) if model.is_mla else 0


def mtp_activation_bytes(scenario: Scenario, expert_rows, recompute: Recompute):
    """What one multi-token-prediction module keeps for the backward of one micro-batch: its two inputs
    (hidden state and embedding of the shifted tokens) with their norms' outputs, concatenated as the
    projection's input (4h), its transformer layer, and the fp32 softmax of its cross-entropy over the
    vocab-parallel logits. Full recompute keeps the two inputs and the layer's input."""
    model, dtype_bytes = scenario.model, scenario.training.dtype.activation_bytes
    tokens, h = scenario.tokens_routed_per_rank, model.hidden_size
    inputs = (2 if recompute is Recompute.FULL else 4) * h * dtype_bytes
    loss = model.vocab_size * _FP32_BYTES
    return tokens * (inputs + loss) + _layer_bytes(scenario, model.mtp_layer_is_moe, expert_rows, recompute)


def a2a_buffer_bytes(scenario: Scenario, expert_rows: float) -> float:
    """Send (tokens_routed_per_rank·top_k rows) + receive (expert_rows) buffers of one all-to-all. The dispatch's
    and the combine's have the same rows; the larger row sets the peak (the combine's bf16 rows under fp8
    dispatch: moesim.cost.ops.dispatch_row_bytes, combine_row_bytes). Permutation buffers are ignored (the
    permuted tokens are the send buffer)."""
    send_rows = scenario.tokens_routed_per_rank * scenario.model.top_k
    row_bytes = max(dispatch_row_bytes(scenario.model, scenario.training),
                    combine_row_bytes(scenario.model, scenario.training))
    return (send_rows + expert_rows) * row_bytes


def balanced_expert_rows(scenario: Scenario) -> float:
    """Expert rows one rank gets per micro-batch when routing is perfectly balanced, tile-padded per local
    expert. An ep group receives what it sends; with etp > 1 every etp shard sees its etp group's rows."""
    lay = scenario.layout
    local_experts = scenario.model.num_experts // lay.ep
    rows = scenario.tokens_routed_per_rank * scenario.model.top_k * lay.etp
    tile = scenario.cluster.profile.efficiency.tile_rows
    return float(local_experts * math.ceil(rows / local_experts / tile) * tile)


def micro_batches_in_flight(scenario: Scenario, stage: int) -> float:
    """Micro-batches' worth of the stage's layers whose forward has run and backward not, at most (in layer units:
    a model chunk holds 1/vpp of the stage's layers). 1F1B: min(pp - s, m). Interleaved 1F1B:
    min(2·(pp - s - 1) + (vpp - 1)·pp + 1, m·vpp) / vpp, i.e. pp + (pp - 1)/vpp on the first stage
    (moesim.cost.pipeline.chunks_in_flight)."""
    lay = scenario.layout
    chunks = chunks_in_flight(stage, lay.pp, scenario.num_micro_batches, lay.vpp)
    return chunks if lay.vpp == 1 else chunks / lay.vpp


def rank_memory(scenario: Scenario, rank: int, expert_rows_per_micro_batch: float) -> MemoryBreakdown:
    """Peak memory of `rank`, when each micro-batch puts at most `expert_rows_per_micro_batch` (tile-padded)
    expert rows on it."""
    lay = scenario.layout
    if not 0 <= rank < lay.world_size:
        raise ValueError(f"rank {rank} out of range: world size is {lay.world_size}")
    if expert_rows_per_micro_batch < 0:
        raise ValueError(f"expert_rows_per_micro_batch must be >= 0, got {expert_rows_per_micro_batch}")
    parts = _stage_breakdown(scenario, lay.stage_of(rank), float(expert_rows_per_micro_batch))
    return MemoryBreakdown(**{k: float(v) for k, v in asdict(parts).items()})


def peak_memory_per_rank(scenario: Scenario, expert_rows_per_rank: np.ndarray | None = None) -> np.ndarray:
    """Total peak bytes per rank, shape [world_size]. `expert_rows_per_rank[r]` is rank r's (tile-padded)
    expert rows per micro-batch and MoE layer; activations are linear in it, so the mean over the stage's MoE
    layers of each layer's worst micro-batch gives the exact worst-case sum. None means balanced routing."""
    world = scenario.layout.world_size
    if expert_rows_per_rank is None:
        rows = np.full(world, balanced_expert_rows(scenario))
    else:
        rows = np.asarray(expert_rows_per_rank, dtype=float)
        if rows.shape != (world,):
            raise ValueError(f"expert_rows_per_rank has shape {rows.shape}; expected ({world},)")
        if np.any(rows < 0) or not np.all(np.isfinite(rows)):
            raise ValueError(f"expert_rows_per_rank must be finite and >= 0; got min {rows.min()}")
    out = np.empty(world)
    for stage in range(scenario.layout.pp):  # ranks of a stage differ only in their expert rows
        ranks = scenario.layout.stage_ranks(stage)
        out[ranks] = _stage_breakdown(scenario, stage, rows[ranks]).total_bytes
    return out


def _stage_breakdown(scenario: Scenario, stage: int, rows) -> MemoryBreakdown:
    """Breakdown for ranks of `stage` holding `rows` expert rows; fields are arrays when `rows` is."""
    tr, lay = scenario.training, scenario.layout
    dense, expert = stage_params(scenario, stage)
    params = dense + expert
    state = tr.optimizer.state_bytes_per_param
    if tr.optimizer.distributed:  # dense state is sharded over dp, expert state over edp
        optimizer = state * (dense / lay.dp_cp + expert / lay.edp)
    else:
        optimizer = state * params
    zero = 0.0 * np.asarray(rows)  # broadcasts scalars to the shape of `rows`
    return MemoryBreakdown(
        weights_bytes=zero + params * tr.dtype.weight_memory_bytes,
        gradients_bytes=zero + params * tr.grad_dtype.bytes,
        optimizer_bytes=zero + optimizer,
        activations_bytes=zero + _stage_activation_bytes(scenario, stage, rows),
        a2a_buffers_bytes=zero + a2a_buffer_bytes(scenario, rows),
    )


def _stage_activation_bytes(scenario: Scenario, stage: int, rows):
    """Stored activations of the passes in flight at the stage's peak, plus one-off terms: under FULL recompute
    the one layer being recomputed holds a SELECTIVE-recompute layer's activations, and the last stage keeps the
    fp32 cross-entropy softmax over the vocab-parallel logits for the one micro-batch it has in flight.
    The peak is taken over the schedule (moesim.cost.pipeline.peak_chunk_counts): with 1F1B, micro_batches_in_flight
    copies of the stage's layers; interleaved, the mix of model chunks in flight, each with its own MoE and dense
    layers."""
    model, recompute, lay = scenario.model, scenario.training.recompute, scenario.layout
    per_chunk = []  # one micro-batch's activations of each model chunk
    num_moe = num_dense = 0
    for chunk in range(lay.vpp):
        layers = scenario.chunk_layers(stage, chunk)
        moe = sum(model.is_moe_layer(i) for i in layers)
        dense = len(layers) - moe
        per_micro_batch = moe * activation_bytes_per_layer(scenario, True, rows)
        if dense:
            per_micro_batch = per_micro_batch + dense * activation_bytes_per_layer(scenario, False, rows)
        per_chunk.append(per_micro_batch)
        num_moe, num_dense = num_moe + moe, num_dense + dense
    order = schedule(stage, lay.pp, scenario.num_micro_batches, lay.vpp)
    total = 0.0
    for counts in peak_chunk_counts(order, lay.vpp):
        total = np.maximum(total, sum(n * b for n, b in zip(counts, per_chunk)))
    if recompute is Recompute.FULL:
        # the layer being recomputed runs with flash attention, which never stores the s x s scores
        working = _layer_bytes(scenario, True, rows, Recompute.SELECTIVE) if num_moe else 0.0
        if num_dense:
            working = np.maximum(working, _layer_bytes(scenario, False, rows, Recompute.SELECTIVE))
        total = total + working
    if stage == scenario.layout.pp - 1:  # the last stage has one micro-batch in flight
        total = total + scenario.tokens_routed_per_rank * model.vocab_size * _FP32_BYTES
        if model.num_mtp_layers:
            total = total + model.num_mtp_layers * mtp_activation_bytes(scenario, rows, recompute)
    return total
