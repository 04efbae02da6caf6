"""What a transformer MoE layer costs besides its GEMMs and attention core: memory-bound kernels (bytes moved over
the HBM bandwidth such kernels achieve) and one launch overhead per kernel, per rank and micro-batch.

The ops and their bytes follow ../shared/specs/fidelity.md §1 (forward; a memory-bound backward reads the input
and the incoming gradient and writes the outgoing one: BACKWARD_BYTES_FACTOR times the forward bytes):
  RMSNorm              read + write T·h                         (input norm, pre-MLP norm, final norm)
  residual add         read 2, write 1 of T·h
  RoPE                 read + write the rotated Q and K heads
  router               softmax/sigmoid, top-k, aux loss: ~4 passes over fp32 [T, E] scores
  permute / unpermute  read T·h, write k·T·h rows (and back)
  activation           SwiGLU: read 2f, write f per row (GELU: read f, write f)
  cross-entropy        ~3 passes over the fp32 [T, V/tp] logits
  fp8 quantization     read 2 B, write 1 B (+ 1 B transposed for the weight gradient on Hopper) per GEMM input
T is the rank's tokens: with sequence parallelism norms and residuals see tokens/tp, the gathered activations
inside attention and the MLP see all tokens with 1/tp of the heads or width.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.spec.scenario import Scenario
from moesim.spec.training import Recompute

BACKWARD_BYTES_FACTOR = 2.0
_FP32 = 4
_ROUTER_PASSES = 4  # softmax (read, write), top-k (read), aux-loss statistics (read)
_CE_PASSES = 3  # max, exp-sum, gradient
# kernels one layer launches in its forward (backward: twice as many): norm, QKV, RoPE, attention, out-proj,
# residual add; norm, FFN (fc1, activation, fc2), residual add. An MoE layer has router GEMM, softmax/top-k,
# aux loss, permute, grouped fc1, activation, grouped fc2, unpermute (+ the shared experts' three).
ATTENTION_KERNELS = 6
DENSE_MLP_KERNELS = 5
MOE_KERNELS = 10
SHARED_EXPERT_KERNELS = 3
LM_HEAD_KERNELS = 3  # final norm, LM-head GEMM, cross-entropy
FP8_QUANTIZE_KERNELS_PER_GEMM = 1


@dataclass(frozen=True)
class MemoryBoundBytes:
    """Forward bytes of one layer's memory-bound kernels on one rank and micro-batch."""

    attention_bytes: float  # input norm, RoPE, residual add (+ fp8 quantization of the projections' inputs)
    dense_mlp_bytes: float  # pre-MLP norm, activation, residual add (a dense layer)
    moe_bytes: float  # pre-MLP norm, router softmax/top-k, permute + unpermute, shared experts, residual add
    expert_row_bytes: float  # per routed expert row the rank computes: its activation (+ fp8 quantization)
    lm_head_bytes: float  # final norm + cross-entropy (last stage)
    norm_bytes: float  # one RMSNorm (what recomputing a norm costs)


def memory_bound_bytes(sc: Scenario, fp8_gemms: bool) -> MemoryBoundBytes:
    """`fp8_gemms`: the linear layers' inputs are quantized to fp8 before each GEMM."""
    m, lay = sc.model, sc.layout
    act = 2  # activations stay bf16/fp16 outside the GEMMs, also under an fp8 recipe
    h, tp = m.hidden_size, lay.tp
    t_seq = sc.tokens_routed_per_rank  # sequence-parallel: norms and residuals see tokens / tp
    t_all = sc.tokens_per_micro_batch  # gathered inside attention and the MLP, 1/tp of heads or width each
    quant = (2 + 1 + 1) if fp8_gemms else 0  # read bf16, write fp8, write the transposed fp8 copy

    norm = 2.0 * t_seq * h * act
    residual = 3.0 * t_seq * h * act
    rope_heads = m.num_attention_heads + m.num_kv_heads
    rope = 2.0 * t_all * rope_heads * m.rope_head_width * act / tp
    # GEMM inputs quantized: the QKV (or MLA down) input h per token, the out-proj input (heads x v) per token
    attn_quant = quant * t_all * (h + m.num_attention_heads * m.v_head_width / tp)
    attention = norm + rope + residual + attn_quant

    act_width = (3 if m.activation.ffn_matrices == 3 else 2)  # SwiGLU: read gate+up, write; GELU: read, write
    dense_width = m.dense_ffn_size / tp
    dense = norm + residual + t_all * (act_width * dense_width * act + quant * (h + dense_width))

    routed = t_seq * m.top_k  # rows the rank's tokens become
    router = _ROUTER_PASSES * t_seq * m.num_experts * _FP32
    permute = 2.0 * (t_seq * h + routed * h) * act  # permute and unpermute
    shared_width = m.num_shared_experts * m.expert_ffn_size / tp
    shared = t_all * (act_width * shared_width * act + quant * (h + shared_width)) if shared_width else 0.0
    moe = norm + residual + router + permute + shared

    expert_width = m.expert_ffn_size / lay.etp
    expert_row = act_width * expert_width * act + quant * (h + expert_width)

    logits = t_all * m.vocab_size / tp
    lm_head = norm + _CE_PASSES * logits * _FP32
    return MemoryBoundBytes(attention, dense, moe, expert_row, lm_head, norm)


def memory_bound_s(nbytes, sc: Scenario):
    """Seconds to move `nbytes` at the HBM bandwidth memory-bound kernels achieve (scalar or numpy)."""
    prof = sc.cluster.profile
    return nbytes / (prof.gpu.hbm_bandwidth_bytes_per_s * prof.efficiency.hbm)


@dataclass(frozen=True)
class KernelCounts:
    """Kernels launched in one layer's (or the LM head's) forward on one rank; backward launches twice as many."""

    attention: int
    dense_mlp: int
    moe: int
    lm_head: int


def kernel_counts(sc: Scenario, fp8_gemms: bool) -> KernelCounts:
    m = sc.model
    q = FP8_QUANTIZE_KERNELS_PER_GEMM if fp8_gemms else 0
    shared = SHARED_EXPERT_KERNELS + 2 * q if m.num_shared_experts else 0
    return KernelCounts(attention=ATTENTION_KERNELS + 2 * q, dense_mlp=DENSE_MLP_KERNELS + 2 * q,
                        moe=MOE_KERNELS + 2 * q + shared, lm_head=LM_HEAD_KERNELS)


def memory_bound_backward_factor(recompute: Recompute) -> float:
    """Backward bytes of a memory-bound op relative to its forward's; full recompute reruns the forward too."""
    return BACKWARD_BYTES_FACTOR + (1.0 if recompute is Recompute.FULL else 0.0)
