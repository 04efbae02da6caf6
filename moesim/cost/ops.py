"""What a transformer MoE layer costs besides its GEMMs and attention core: memory-bound kernels (bytes moved over
the HBM bandwidth such kernels achieve) and one launch overhead per kernel, per rank and micro-batch.

The ops and their bytes follow ../shared/specs/fidelity.md §1 (forward; a memory-bound backward reads the input
and the incoming gradient and writes the outgoing one: BACKWARD_BYTES_FACTOR times the forward bytes):
  RMSNorm              read + write T·h                         (input norm, pre-MLP norm, final norm)
  residual add         read 2, write 1 of T·h
  RoPE                 read + write the rotated Q and K heads
  router               softmax/sigmoid, top-k, aux loss: ~4 passes over fp32 [T, E] scores
  permute / unpermute  read T, write k·T rows (and back); rows of dispatch_row_bytes / combine_row_bytes
  activation           SwiGLU: read 2f, write f per row (GELU: read f, write f)
  cross-entropy        ~3 passes over the fp32 [T, V/tp] logits
T is the rank's tokens: with sequence parallelism norms and residuals see tokens/tp, the gathered activations
inside attention and the MLP see all tokens with 1/tp of the heads or width.

Under dtype: fp8 the training's fp8_recipe (Megatron-LM --fp8-recipe, fidelity.md §5) adds memory-bound casts,
which are not BACKWARD_BYTES_FACTOR x their forward:
  forward              each linear layer's input, [rows, in_width], cast to fp8 ([m, k] of compute.Gemm)
  backward             each linear layer's output gradient, [rows, out_width], cast to fp8 ([m, n])
  once per step        each linear weight cast to fp8 on the first micro-batch, then reused (fp8_weight_casts)
  delayed scaling      the amax history update of every fp8 tensor, once per pass (amax_update_bytes)
  fp8 dispatch         the MoE input cast once per token before the dispatch instead of once per expert row
Attention's core, the router, the norms and the LM head stay in bf16: they are not Transformer Engine fp8 modules
(fidelity.md §5; DeepSeek-V3 §3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.cost import compute as cc
from moesim.spec.dtype import Dtype, Fp8Recipe
from moesim.spec.model import MoeModelSpec
from moesim.spec.scenario import Scenario
from moesim.spec.training import TrainingSpec

BACKWARD_BYTES_FACTOR = 2.0
_FP32 = Dtype.FP32.bytes
_BF16 = Dtype.BF16.bytes  # what activations and gradients are between kernels, also under an fp8 recipe
_FP8 = Dtype.FP8.bytes
_ROUTER_PASSES = 4  # softmax (read, write), top-k (read), aux-loss statistics (read)
_CE_PASSES = 3  # max, exp-sum, gradient
# kernels one layer launches in its forward (backward: twice as many): norm, QKV, RoPE, attention, out-proj,
# residual add; norm, FFN (fc1, activation, fc2), residual add. An MoE layer has router GEMM, softmax/top-k,
# aux loss, permute, grouped fc1, activation, grouped fc2, unpermute (+ the shared experts' three).
ATTENTION_KERNELS = 6
DENSE_MLP_KERNELS = 5
MOE_KERNELS = 10
EXPERT_FFN_KERNELS = 3  # of those: grouped fc1, activation, grouped fc2
SHARED_EXPERT_KERNELS = 3
LM_HEAD_KERNELS = 3  # final norm, LM-head GEMM, cross-entropy

# --- fp8 recipes (fidelity.md §5) -------------------------------------------------------------------------------
# Every fp8 tensor is written twice: Hopper's fp8 tensor cores take K-major operands only, so a linear's input
# (fprop; wgrad needs it transposed), weight (fprop; dgrad transposed) and output gradient (dgrad; wgrad
# transposed) each need a row-wise and a column-wise (transposed) fp8 copy (TE docs
# performance_considerations.rst; fidelity.md §2, §5 "+1 B transposed on Hopper"). MXFP8 needs both too: its
# scales run along the reduction dimension, which differs between the two GEMMs.
FP8_COPIES = 2
# Current (tensorwise) scaling launches three kernels per cast: amax (a read of the whole bf16 tensor), scale from
# amax, cast (TE pytorch/csrc/quantizer.cpp, Float8CurrentScalingQuantizer::quantize_impl); the others one cast
# kernel (delayed: cast + transpose + amax fused; blockwise and mxfp8: per-block amax inside the cast).
CURRENT_SCALING_CAST_KERNELS = 3
# Delayed scaling keeps per fp8 tensor an fp32 amax history and a scale. Megatron-LM --fp8-amax-history-len
# defaults to 1 (TE's own default: 1024; fidelity.md §5). Transformer Engine holds 3 entries per GEMM for the
# forward (input, weight, output) and 2 for the backward (output gradient, input gradient) (TE module/base.py,
# fp8 meta "scaling_fwd" / "scaling_bwd"); each update reads and writes the rolled history and writes scale and
# inverse scale (derived).
AMAX_HISTORY_LEN = 1
AMAX_ENTRIES_FWD = 3
AMAX_ENTRIES_BWD = 2
AMAX_UPDATE_BYTES_PER_ENTRY = (2 * AMAX_HISTORY_LEN + 2) * _FP32


def cast_bytes_per_element(recipe: Fp8Recipe) -> float:
    """HBM bytes of casting one bf16 element of a linear layer's input or output gradient to fp8: read it (twice
    under current scaling: amax first), write FP8_COPIES fp8 copies, each with its scales (blockwise: an fp32 per
    1x128 tile; mxfp8: an E8M0 byte per 1x32 block; per-tensor recipes: one fp32 per tensor, left out).
    delayed 4, tensorwise 6, blockwise 2 + 2·(1 + 4/128) = 4.0625, mxfp8 2 + 2·(1 + 1/32) = 4.0625."""
    return _BF16 * (1 + recipe.amax_passes) + FP8_COPIES * (_FP8 + recipe.scale_bytes_per_activation)


def weight_cast_bytes_per_element(recipe: Fp8Recipe) -> float:
    """HBM bytes of casting one bf16 weight element to its two fp8 copies (with scales: blockwise one fp32 per
    128x128 block, mxfp8 one E8M0 byte per 1x32 block). delayed 4, tensorwise 6, blockwise 4 + 8/16384."""
    return _BF16 * (1 + recipe.amax_passes) + FP8_COPIES * (_FP8 + recipe.scale_bytes_per_weight)


def dispatch_cast_bytes_per_element(recipe: Fp8Recipe) -> float:
    """fp8 dispatch: the sender casts each token once, row-wise only (the row it sends): read bf16, write fp8 and
    its 1x128 scales. 2 + 1 + 4/128 = 3.03125 under blockwise."""
    return _BF16 * (1 + recipe.amax_passes) + _FP8 + recipe.scale_bytes_per_activation


def requant_bytes_per_element(recipe: Fp8Recipe) -> float:
    """fp8 dispatch: the receiver makes the column-wise copy the weight gradient needs from the fp8 row it got:
    read fp8 + scales, write fp8 + scales (1x128 tiles along the other dimension). 2·(1 + 4/128) = 2.0625 (derived:
    a 1x128-scaled row cannot be transposed without rescaling)."""
    return 2 * (_FP8 + recipe.scale_bytes_per_activation)


def cast_kernels(recipe: Fp8Recipe) -> int:
    """Kernels of one fp8 cast (of an input, an output gradient or a weight)."""
    return CURRENT_SCALING_CAST_KERNELS if recipe is Fp8Recipe.TENSORWISE else 1


def dispatch_row_bytes(model: MoeModelSpec, training: TrainingSpec) -> float:
    """Bytes of one token row of the dispatch-direction all-to-all: the forward dispatch and the backward of the
    combine. bf16 rows (hidden x activation bytes), or, with fp8_dispatch, hidden fp8 bytes plus an fp32 scale
    per 128 elements: DeepEP's fp8 payload h + (h/128)·4 B, 0.516x bf16 at h = 7168 (fidelity.md §3;
    DeepEP tests/legacy/test_internode.py). DeepSeek-V3 §3.3 quantizes both the activation before the experts'
    up-projection and the activation gradient before their down-projection for communication. Top-k ids and
    weights are not counted (nor are they in bf16)."""
    h = model.hidden_size
    if training.fp8_dispatch:
        recipe = training.fp8_recipe  # blockwise: TrainingSpec refuses fp8_dispatch with any other
        return float(h * _FP8 + math.ceil(h / recipe.activation_block) * recipe.scale_bytes)
    return float(h * training.dtype.activation_bytes)


def combine_row_bytes(model: MoeModelSpec, training: TrainingSpec) -> float:
    """Bytes of one token row of the combine-direction all-to-all (the forward combine and the backward of the
    dispatch): bf16 under every recipe ("for both the forward and backward combine components, we retain them
    in BF16", DeepSeek-V3 §3.3)."""
    return float(model.hidden_size * training.dtype.activation_bytes)


def _casts_fwd(gemms: tuple[cc.Gemm, ...], recipe: Fp8Recipe) -> float:
    """The inputs' casts: [m, k] each."""
    return cast_bytes_per_element(recipe) * sum(m * k for m, _, k in gemms)


def _casts_bwd(gemms: tuple[cc.Gemm, ...], recipe: Fp8Recipe) -> float:
    """The output gradients' casts: [m, n] each."""
    return cast_bytes_per_element(recipe) * sum(m * n for m, n, _ in gemms)


@dataclass(frozen=True)
class MemoryBoundBytes:
    """Bytes of one layer's memory-bound kernels on one rank and micro-batch. The forward fields; the `_bwd` ones
    are the backward's (BACKWARD_BYTES_FACTOR x the forward's other kernels plus the output gradients' fp8 casts;
    a full recompute's rerun of the forward not included)."""

    attention_bytes: float  # input norm, RoPE, residual add (+ fp8 casts of the projections' inputs)
    dense_mlp_bytes: float  # pre-MLP norm, activation, residual add (a dense layer) (+ fp8 casts)
    moe_bytes: float  # pre-MLP norm, router softmax/top-k, permute + unpermute, shared experts, residual add
    #                   (+ the shared experts' fp8 casts, fp8 dispatch's per-token cast, the experts' amax updates)
    expert_row_bytes: float  # per routed expert row the rank computes: its activation (+ fc1's and fc2's input casts)
    lm_head_bytes: float  # final norm + cross-entropy (last stage)
    norm_bytes: float  # one RMSNorm (what recomputing a norm costs)
    attention_bwd_bytes: float
    dense_mlp_bwd_bytes: float
    moe_bwd_bytes: float
    expert_row_bwd_bytes: float  # per row: BACKWARD_BYTES_FACTOR x its activation + fc1's, fc2's output-gradient casts
    # per row: the activation's bytes where a calibrated expert FFN's time holds them (then not in expert_row_bytes):
    # what recomputing the activation alone still costs
    expert_act_measured_bytes: float = 0.0


def memory_bound_bytes(sc: Scenario, fp8_gemms: bool | None = None) -> MemoryBoundBytes:
    """`fp8_gemms`: the linear layers run in fp8 under sc.training.fp8_recipe (default: whether dtype is fp8)."""
    m, lay, tr = sc.model, sc.layout, sc.training
    fp8 = tr.dtype is Dtype.FP8 if fp8_gemms is None else fp8_gemms
    act = tr.dtype.activation_bytes  # bf16/fp16 between kernels, also under an fp8 recipe; fp32 in fp32 training
    h, tp = m.hidden_size, lay.tp
    t_seq = sc.tokens_routed_per_rank  # sequence-parallel: norms and residuals see tokens / tp
    t_all = sc.tokens_per_micro_batch  # gathered inside attention and the MLP, 1/tp of heads or width each
    norm = 2.0 * t_seq * h * act
    residual = 3.0 * t_seq * h * act
    rope = 2.0 * t_all * (m.num_attention_heads + m.num_kv_heads) * m.rope_head_width * act / tp
    act_width = (3 if m.activation.ffn_matrices == 3 else 2)  # SwiGLU: read gate+up, write; GELU: read, write
    dense_width, shared_width = m.dense_ffn_size / tp, m.num_shared_experts * m.expert_ffn_size / tp
    routed = t_seq * m.top_k  # rows the rank's tokens become
    router = _ROUTER_PASSES * t_seq * m.num_experts * _FP32
    # permute: read the tokens, write their rows; unpermute the other way (as the dispatch and combine send them)
    permute = (t_seq + routed) * (dispatch_row_bytes(m, tr) + combine_row_bytes(m, tr))
    expert_act = act_width * m.expert_ffn_size / lay.etp * act
    measured_act = expert_act if expert_ffn_measured(sc) else 0.0  # in the calibrated FFN's time (cc.expert_time_s)
    expert_act -= measured_act
    base = dict(attention=norm + rope + residual, dense=norm + residual + t_all * act_width * dense_width * act,
                moe=norm + residual + router + permute + t_all * act_width * shared_width * act, row=expert_act)
    fp8_fwd, fp8_bwd = fp8_overhead_bytes(sc) if fp8 else (_NO_FP8, _NO_FP8)
    fwd = {k: v + fp8_fwd[k] for k, v in base.items()}
    bwd = {k: BACKWARD_BYTES_FACTOR * v + fp8_bwd[k] for k, v in base.items()}
    lm_head = norm + _CE_PASSES * t_all * m.vocab_size / tp * _FP32
    return MemoryBoundBytes(fwd["attention"], fwd["dense"], fwd["moe"], fwd["row"], lm_head, norm,
                            bwd["attention"], bwd["dense"], bwd["moe"], bwd["row"], measured_act)


def expert_ffn_measured(sc: Scenario) -> bool:
    """Whether the profile's calibrated expert FFN prices the routed experts (cc.expert_time_s): its time then
    holds the experts' activation and their grouped fc1, activation and fc2 launches."""
    m, lay, tr = sc.model, sc.layout, sc.training
    return cc.expert_ffn_calibration(m, sc.cluster.profile, tr.dtype, lay.etp) is not None


_NO_FP8 = dict(attention=0.0, dense=0.0, moe=0.0, row=0.0)


def fp8_overhead_bytes(sc: Scenario) -> tuple[dict[str, float], dict[str, float]]:
    """(forward, backward) bytes the fp8 recipe adds to one layer on one rank and micro-batch, keyed by op:
    `attention`, `dense` (a dense layer's MLP), `moe` (per layer: shared experts, fp8 dispatch's per-token cast,
    the routed experts' amax updates) and `row` (per routed expert row). The per-step weight casts are
    fp8_weight_casts'. Forward: the linear inputs' casts; backward: the output gradients' casts; delayed scaling
    adds each pass's amax history updates."""
    m, lay, tr = sc.model, sc.layout, sc.training
    recipe, t_all, t_seq = tr.fp8_recipe, sc.tokens_per_micro_batch, sc.tokens_routed_per_rank
    attention = cc.attention_gemms(m, t_all, lay.tp)
    dense = cc.ffn_gemms(m, t_all, m.dense_ffn_size, lay.tp)
    shared = cc.ffn_gemms(m, t_all, m.num_shared_experts * m.expert_ffn_size, lay.tp) if m.num_shared_experts \
        else ()
    fc1, fc2 = cc.ffn_gemms(m, 1.0, m.expert_ffn_size, lay.etp)  # per row
    fwd = dict(attention=_casts_fwd(attention, recipe), dense=_casts_fwd(dense, recipe),
               moe=_casts_fwd(shared, recipe), row=_casts_fwd((fc1, fc2), recipe))
    bwd = dict(attention=_casts_bwd(attention, recipe), dense=_casts_bwd(dense, recipe),
               moe=_casts_bwd(shared, recipe), row=_casts_bwd((fc1, fc2), recipe))
    if tr.fp8_dispatch:
        # the experts' fc1 input (forward) and fc2's output gradient (backward) travel in fp8: cast once per token
        # on the sender, and per row only the column-wise copy is made on the receiver
        token_cast = t_seq * m.hidden_size * dispatch_cast_bytes_per_element(recipe)
        row_saving = m.hidden_size * (cast_bytes_per_element(recipe) - requant_bytes_per_element(recipe))
        fwd["moe"], bwd["moe"] = fwd["moe"] + token_cast, bwd["moe"] + token_cast
        fwd["row"], bwd["row"] = fwd["row"] - row_saving, bwd["row"] - row_saving
    if recipe is Fp8Recipe.DELAYED:
        for key, gemms in amax_tensors(sc).items():
            fwd[key] += gemms * AMAX_ENTRIES_FWD * AMAX_UPDATE_BYTES_PER_ENTRY
            bwd[key] += gemms * AMAX_ENTRIES_BWD * AMAX_UPDATE_BYTES_PER_ENTRY
    return fwd, bwd


def local_experts(sc: Scenario) -> int:
    """Experts one rank holds weights for (reserved placement slots hold full experts, used or not)."""
    return sc.placement.slots_per_gpu or sc.model.num_experts // sc.layout.ep


def amax_tensors(sc: Scenario) -> dict[str, int]:
    """fp8 GEMMs (each with its own fp8 meta) of one layer by op: attention, dense MLP, and MoE (shared experts
    and each local expert's fc1 and fc2, as Transformer Engine's GroupedLinear keeps one meta per GEMM)."""
    m = sc.model
    shared = 2 if m.num_shared_experts else 0
    return dict(attention=len(cc.attention_gemms(m, 1.0, 1)), dense=2, moe=shared + 2 * local_experts(sc))


@dataclass(frozen=True)
class WeightCasts:
    """One layer's weight casts to fp8 on one rank, once per step: Transformer Engine casts the weights on a
    step's first micro-batch and reuses them (`is_first_microbatch`; Megatron's set_is_first_microbatch)."""

    bytes: float
    kernels: int


def fp8_weight_casts(sc: Scenario, moe: bool) -> WeightCasts:
    """Per step, one (MoE or dense) layer's linear weights held by one rank (attention, dense FFN or shared and
    local experts; not the router), each cast to its two fp8 copies: weight_cast_bytes_per_element each, and
    cast_kernels per weight tensor (each local expert's two). Zero unless dtype is fp8."""
    m, lay, tr = sc.model, sc.layout, sc.training
    if tr.dtype is not Dtype.FP8:
        return WeightCasts(0.0, 0)
    weights = list(cc.attention_gemms(m, 1.0, lay.tp))
    if not moe:
        weights += cc.ffn_gemms(m, 1.0, m.dense_ffn_size, lay.tp)
    else:
        if m.num_shared_experts:
            weights += cc.ffn_gemms(m, 1.0, m.num_shared_experts * m.expert_ffn_size, lay.tp)
        weights += local_experts(sc) * list(cc.ffn_gemms(m, 1.0, m.expert_ffn_size, lay.etp))
    elements = sum(n * k for _, n, k in weights)  # a weight is [k, n]
    return WeightCasts(elements * weight_cast_bytes_per_element(tr.fp8_recipe),
                       len(weights) * cast_kernels(tr.fp8_recipe))


def memory_bound_s(nbytes, sc: Scenario):
    """Seconds to move `nbytes` at the HBM bandwidth memory-bound kernels achieve (scalar or numpy)."""
    prof = sc.cluster.profile
    return nbytes / (prof.gpu.hbm_bandwidth_bytes_per_s * prof.efficiency.hbm)


@dataclass(frozen=True)
class KernelCounts:
    """Kernels launched in one layer's (or the LM head's) forward on one rank, and in its backward (`_bwd`: twice
    the forward's kernels other than the fp8 casts, plus one cast per output gradient). `amax_update`: delayed
    scaling's fused amax-history update, once per fp8 autocast region and pass: Megatron-LM wraps each
    transformer block (one pipeline chunk) in one region under delayed scaling and each layer in its own under
    the other recipes, whose regions update nothing (megatron/core/transformer/transformer_block.py,
    use_outer_fp8_context)."""

    attention: int
    dense_mlp: int
    moe: int
    lm_head: int
    attention_bwd: int
    dense_mlp_bwd: int
    moe_bwd: int
    lm_head_bwd: int
    amax_update: int


def kernel_counts(sc: Scenario, fp8_gemms: bool | None = None) -> KernelCounts:
    """`fp8_gemms` as for memory_bound_bytes. Under fp8 each linear layer adds one cast of its input in the
    forward and one of its output gradient in the backward (cast_kernels each); fp8 dispatch adds the sender's
    per-token cast in both."""
    m, tr = sc.model, sc.training
    fp8 = tr.dtype is Dtype.FP8 if fp8_gemms is None else fp8_gemms
    q = cast_kernels(tr.fp8_recipe) if fp8 else 0
    n_attention = len(cc.attention_gemms(m, 1.0, 1))
    shared = SHARED_EXPERT_KERNELS if m.num_shared_experts else 0
    n_moe = (2 if m.num_shared_experts else 0) + 2 + (1 if fp8 and tr.fp8_dispatch else 0)  # + grouped fc1, fc2
    # MLA: its down and up projections beyond QKV + out, and the RMSNorms of its latents (query and key/value)
    mla = (n_attention - 2) + ((2 if m.q_lora_rank else 1) if m.is_mla else 0)
    measured = EXPERT_FFN_KERNELS if expert_ffn_measured(sc) else 0  # launched inside the calibrated FFN's time
    fwd = dict(attention=ATTENTION_KERNELS + mla + q * n_attention, dense_mlp=DENSE_MLP_KERNELS + 2 * q,
               moe=MOE_KERNELS - measured + shared + q * n_moe, lm_head=LM_HEAD_KERNELS)
    extra = dict(attention=q * n_attention, dense_mlp=2 * q, moe=q * n_moe, lm_head=0)
    bwd = {f"{k}_bwd": 2 * (v - extra[k]) + extra[k] for k, v in fwd.items()}
    return KernelCounts(**fwd, **bwd, amax_update=1 if fp8 and tr.fp8_recipe is Fp8Recipe.DELAYED else 0)
