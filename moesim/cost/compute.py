"""FLOPs and times of the compute ops of one transformer layer on one rank (forward; backward is 2x).

Conventions: a GEMM of [m, k] x [k, n] is 2*m*k*n FLOP. `tokens` is what the rank computes on.
Sequence parallelism is on when tp > 1, so projections see all tokens of the micro-batch but only 1/tp of
the weights; the router and experts see the rank's own tokens_routed = tokens / tp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import attention as ca
from moesim.cost import gemm as gg
from moesim.spec.hardware import ClusterProfile, Dtype
from moesim.spec.model import Activation, MoeModelSpec
from moesim.spec.training import Recompute

CAUSAL_FRACTION = 0.5  # causal attention computes half of the score matrix (flash-attention skips masked tiles)


@dataclass(frozen=True)
class AttentionFlop:
    projections_flop: float  # the attention's GEMMs: QKV (or MLA's down/up) and output projections
    core_flop: float  # QK^T and AV


def keys_per_query(seq_len: int, window: int | None) -> float:
    """Mean unmasked keys per query of causal attention over `seq_len` tokens, each query seeing at most
    `window` keys (itself included; None: all earlier ones). Causal: s/2, flash-attention's benchmark convention
    (the s/2 extra diagonal pairs are not counted). Window W = left window w + 1: s·W − W(W−1)/2 pairs, i.e.
    s(w+1) − w(w+1)/2 (flash-attention hopper/benchmark_attn.py); never more than causal, so that a window as
    long as the sequence costs what no window costs."""
    causal = seq_len * CAUSAL_FRACTION
    if window is None or window >= seq_len:  # the formula below holds for W <= s only
        return causal
    pairs = seq_len * window - window * (window - 1) / 2.0
    return min(pairs / seq_len, causal)


def attention_flop(model: MoeModelSpec, tokens: int, seq_len: int, tp: int, windowed: bool = False) -> AttentionFlop:
    """One layer's attention on `tokens` tokens (sequences of seq_len), its work split over tp ranks.
    `windowed`: the layer uses the model's sliding window. The core is 2·(d_qk + d_v) FLOP per query head and
    unmasked (query, key) pair, so grouped-query attention does not shrink it and MLA counts d_qk = nope + rope
    (fidelity.md §1)."""
    projections = 2.0 * tokens * model.attention_gemm_params
    keys = keys_per_query(seq_len, model.sliding_window if windowed else None)
    core = 2.0 * tokens * model.num_attention_heads * (model.qk_head_width + model.v_head_width) * keys
    return AttentionFlop(projections / tp, core / tp)


def ffn_flop(model: MoeModelSpec, rows: float | np.ndarray, ffn_size: int, shards: int = 1):
    """An FFN of width ffn_size on `rows` tokens, its weights split over `shards` ranks."""
    return 2.0 * rows * model.hidden_size * (ffn_size / shards) * model.activation.ffn_matrices


def router_flop(model: MoeModelSpec, tokens_routed: int) -> float:
    return 2.0 * tokens_routed * model.hidden_size * model.num_experts


def lm_head_flop(model: MoeModelSpec, tokens: int, tp: int) -> float:
    return 2.0 * tokens * model.hidden_size * model.vocab_size / tp


def padded_rows(rows: np.ndarray, tile_rows: int) -> np.ndarray:
    """Each expert's rows padded up to a multiple of the GEMM row tile (0 stays 0). Fractional rows (an even
    split over replicas) round up first: a replica that gets any share computes at least one row."""
    whole = np.ceil(np.asarray(rows, dtype=np.float64) - 1e-9).astype(np.int64)
    return -(-whole // tile_rows) * tile_rows


def attention_peak(profile: ClusterProfile, dtype: Dtype) -> float:
    """Peak of the attention core: Transformer Engine keeps it in bf16 under an fp8 recipe (fidelity.md 5)."""
    return profile.gpu.peak(Dtype.BF16 if dtype is Dtype.FP8 else dtype)


def attention_core_s(model: MoeModelSpec, tokens: float, seq_len: int, tp: int, profile: ClusterProfile,
                     dtype: Dtype, windowed: bool = False, cp: int = 1) -> tuple[float, float]:
    """(forward, backward) seconds of one layer's attention core on a rank holding `tokens` of sequences of
    seq_len, at the profile's efficiency for the length one kernel sees (a windowed layer's: at most the window;
    under context parallelism each ring step attends one rank's seq_len / cp chunk) and the head width (MLA: the
    mean of d_qk and d_v, which gives the same FLOPs)."""
    flop = attention_flop(model, tokens, seq_len, tp, windowed).core_flop
    window = model.sliding_window if windowed else None
    seq = seq_len / cp if window is None else min(window, seq_len / cp)
    head_dim = (model.qk_head_width + model.v_head_width) / 2.0
    table, peak = profile.efficiency.attention, attention_peak(profile, dtype)
    return (float(ca.attention_core_time_s(flop, seq, head_dim, table, peak, backward=False)),
            float(ca.attention_core_time_s(flop, seq, head_dim, table, peak, backward=True)))


Gemm = tuple[float, float, float]  # (m, n, k) of [m, k] x [k, n] on one rank


def attention_gemms(model: MoeModelSpec, tokens: float, tp: int) -> tuple[Gemm, ...]:
    """The attention's GEMMs on `tokens` tokens, column-parallel ones split on n and the output projection on k
    over tp. MLA's down projections are duplicated on every TP rank (Megatron's parallel_mode='duplicated') and run
    on the rank's own sequence-parallel tokens, so their FLOPs split over tp too (what attention_flop counts)."""
    h = model.hidden_size
    out = (tokens, h, model.attn_out_width / tp)
    if not model.is_mla:
        return (tokens, (model.q_width + model.k_width + model.v_width) / tp, h), out
    q_down = ((tokens / tp, model.q_lora_rank, h),) if model.q_lora_rank else ()
    q = q_down if model.q_lora_rank else ((tokens, model.q_width / tp, h),)
    kv_down = (tokens / tp, model.kv_lora_rank + model.qk_rope_head_dim, h)
    return (*q, kv_down, *mla_up_projection_gemms(model, tokens, tp), out)


def mla_up_projection_gemms(model: MoeModelSpec, tokens: float, tp: int) -> tuple[Gemm, ...]:
    """Multi-head latent attention's up projections: the query latent to the heads' q (when the query is
    compressed) and the key/value latent to the heads' k_nope and v (none for other attention)."""
    if not model.is_mla:
        return ()
    heads = model.num_attention_heads
    kv_up = (tokens, heads * (model.qk_nope_head_dim + model.v_head_dim) / tp, model.kv_lora_rank)
    return ((tokens, model.q_width / tp, model.q_lora_rank), kv_up) if model.q_lora_rank else (kv_up,)


def ffn_gemms(model: MoeModelSpec, rows: float, ffn_size: int, shards: int = 1) -> tuple[Gemm, ...]:
    """An FFN's two GEMMs: fc1 (gate and up fused when gated) and fc2, their weights split over `shards`."""
    width = ffn_size / shards
    return (rows, width * (model.activation.ffn_matrices - 1), model.hidden_size), (rows, model.hidden_size, width)


def gemms_time_s(gemms: tuple[Gemm, ...], rates: gg.GemmRates) -> tuple[float, float]:
    """(forward, backward) seconds of linear-layer GEMMs; the backward is each one's input and weight gradients."""
    if not gemms:
        return 0.0, 0.0
    m, n, k = np.array(gemms, dtype=np.float64).T
    return float(gg.gemm_time_s(m, n, k, rates).sum()), float(gg.dense_backward_s(m, n, k, rates).sum())


def expert_ffn_calibration(model: MoeModelSpec, profile: ClusterProfile, dtype: Dtype, etp: int):
    """The profile's calibrated expert FFN nearest this model's expert shape (per ETP shard), or None: also for a
    model whose experts are not SwiGLU, which is what the calibration times."""
    if profile.calibration is None or model.activation is not Activation.SWIGLU:
        return None
    return profile.calibration.expert_ffn(dtype, model.hidden_size, model.expert_ffn_size // etp)


def expert_time_s(rows_per_expert: np.ndarray, model: MoeModelSpec, profile: ClusterProfile, dtype: Dtype,
                  etp: int, grad_dtype: Dtype = Dtype.FP32) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of the routed experts on each rank. rows_per_expert [..., local_experts] holds
    the rows each local expert computes, padded up to the row tile; fc1 and fc2 are one grouped GEMM each, and so
    are their input and weight gradients. Returns two [...] arrays. A calibrated profile's expert-kernel fit
    (nearest measured shape) replaces the shape model: each of the expert's GEMMs (ffn_matrices of them) pays the
    measured launch cost t0, and the backward is twice the forward. A calibrated expert FFN (the whole SwiGLU
    block as `moesim execute` runs it, activation and autograd included) is preferred to both, with its measured
    backward: its activation is then not a memory-bound op of its own (ops.memory_bound_bytes)."""
    ffn_fit = expert_ffn_calibration(model, profile, dtype, etp)
    if ffn_fit is not None:
        rows = padded_rows(rows_per_expert, ffn_fit.tile_rows)
        work_s = ffn_flop(model, rows, model.expert_ffn_size, etp) / profile.gpu.peak(dtype)
        forward = np.where(rows > 0, ffn_fit.forward_t0_s + work_s / ffn_fit.forward_eff_max, 0.0)
        backward = np.where(rows > 0, ffn_fit.backward_t0_s + 2.0 * work_s / ffn_fit.backward_eff_max, 0.0)
        return forward.sum(axis=-1), backward.sum(axis=-1)
    fit = profile.calibration.expert_kernel(dtype, model.hidden_size, model.expert_ffn_size // etp) \
        if profile.calibration is not None else None
    if fit is not None:  # measured: a per-expert launch cost plus tile-quantised work at the saturated efficiency
        rows = padded_rows(rows_per_expert, fit.tile_rows)
        flop = ffn_flop(model, rows, model.expert_ffn_size, etp)
        per_expert = np.where(rows > 0, fit.t0_s * model.activation.ffn_matrices
                              + flop / (profile.gpu.peak(dtype) * fit.eff_max), 0.0)
        forward = per_expert.sum(axis=-1)
        return forward, 2.0 * forward
    rows = padded_rows(rows_per_expert, profile.efficiency.tile_rows)
    rates = gg.gemm_rates(profile, dtype, grad_dtype=grad_dtype)
    forward = backward = np.zeros(rows.shape[:-1])
    for _, n, k in ffn_gemms(model, 1.0, model.expert_ffn_size, etp):
        forward = forward + gg.grouped_gemm_time_s(rows, n, k, rates)
        backward = backward + gg.grouped_gemm_time_s(rows, k, n, rates) + gg.grouped_wgrad_time_s(rows, n, k, rates)
    return forward, backward


def backward_multiplier(recompute: Recompute) -> float:
    """Backward cost relative to forward: 2x (input and weight gradients), +1 forward when fully recomputed."""
    return 3.0 if recompute is Recompute.FULL else 2.0


def mtp_projection_flop(model: MoeModelSpec, tokens: int, tp: int) -> float:
    """A multi-token-prediction module's projection of [hidden; embedding] (2h) to h."""
    return 2.0 * tokens * model.mtp_projection_params / tp


def _layer_flop_per_token(model: MoeModelSpec, seq_len: int, moe: bool, windowed: bool) -> float:
    """Forward FLOP per token of one transformer layer, its experts computing top_k + shared rows."""
    attn = attention_flop(model, 1, seq_len, 1, windowed)
    if not moe:
        return attn.projections_flop + attn.core_flop + ffn_flop(model, 1, model.dense_ffn_size)
    experts = (model.top_k + model.num_shared_experts) * ffn_flop(model, 1, model.expert_ffn_size)
    return attn.projections_flop + attn.core_flop + experts + router_flop(model, 1)


def mtp_flop_per_token(model: MoeModelSpec, seq_len: int) -> float:
    """Forward FLOP per token of ONE multi-token-prediction module: projection, its transformer layer (MoE and
    windowed as the model's last layer) and its pass through the shared LM head."""
    layer = _layer_flop_per_token(model, seq_len, model.mtp_layer_is_moe, model.mtp_layer_windowed)
    return mtp_projection_flop(model, 1, 1) + layer + lm_head_flop(model, 1, 1)


def model_flop_per_token(model: MoeModelSpec, seq_len: int) -> float:
    """Useful forward+backward FLOP per token (no recompute, no padding): the MFU numerator. Multi-token
    prediction is counted (its layers are trained like the others; Megatron's FLOP count includes them)."""
    attn = attention_flop(model, 1, seq_len, 1)
    dense_layers = model.num_layers - model.num_moe_layers
    forward = (model.num_layers * (attn.projections_flop + attn.core_flop)
               + dense_layers * ffn_flop(model, 1, model.dense_ffn_size)
               + model.num_moe_layers * ((model.top_k + model.num_shared_experts)
                                         * ffn_flop(model, 1, model.expert_ffn_size) + router_flop(model, 1))
               + lm_head_flop(model, 1, 1))
    windowed = model.num_windowed_layers
    if windowed:  # those layers' cores see only the window
        forward += windowed * (attention_flop(model, 1, seq_len, 1, windowed=True).core_flop - attn.core_flop)
    if model.num_mtp_layers:
        forward += model.num_mtp_layers * mtp_flop_per_token(model, seq_len)
    return 3.0 * forward


def routed_expert_flop_per_token(model: MoeModelSpec) -> float:
    """FLOP per token, forward+backward, of its top_k routed experts in the model's MoE layers: what a dropped
    assignment does not do (shared experts always run). The MTP layer's routing is not simulated, so nothing
    is dropped there."""
    return 3.0 * model.num_moe_layers * model.top_k * ffn_flop(model, 1, model.expert_ffn_size)
