"""Time of the fused attention core (QK^T, softmax, AV and, backward, their gradients) from its FLOPs and an
efficiency table over sequence length, head dimension and pass (moesim.spec.attention_efficiency)."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.spec.attention_efficiency import AttentionEfficiencyTable

# FlashAttention's convention: the backward pass is 5 GEMMs to the forward's 2 (S = QK^T is recomputed), counted as
# 2.5x the forward's FLOPs (FA3 paper arXiv:2407.08608 §4.1; flash-attention benchmarks/; fidelity.md §1)
BACKWARD_FLOP_RATIO = 2.5


def attention_core_time_s(core_flop: Any, seq_len: Any, head_dim: Any, table: AttentionEfficiencyTable,
                          peak_flop_per_s: float, backward: bool) -> np.ndarray:
    """Seconds of the attention core of one pass; vectorised: core_flop, seq_len and head_dim broadcast.

    core_flop: the FORWARD core's FLOPs, for either pass (moesim.cost.compute.attention_flop(...).core_flop):
    2·(d_qk + d_v) per query head and unmasked (query, key) pair, a causal query counting s/2 keys
    (keys_per_query). The backward pass is charged BACKWARD_FLOP_RATIO (2.5) times that. Time is
    pass FLOPs / (peak_flop_per_s x efficiency).

    The table's efficiencies assume exactly this convention, which is FlashAttention's benchmark's
    (flash-attention benchmarks/benchmark_flash_attention.py, FA3 paper Fig. 5-6): forward
    4·batch·heads·head_dim·seq_len² FLOPs, halved for causal (s²/2 pairs, the diagonal not counted), backward 2.5x
    the forward's. So efficiency x peak reproduces the published TFLOP/s: fwd causal head_dim 128 at 16k,
    616 TFLOP/s on H100 = 0.6226 of 989.4.

    seq_len: the table's axis, the length of the causal sequence the core attends over (the seq_len that
    attention_flop was given). For a sliding-window layer pass the window
    (min(window, seq_len)): a query sees at most `window` keys, as the last query of a causal sequence of that
    length does. head_dim: the head width; MLA's unequal widths (d_qk = nope + rope, d_v) pass their mean
    (d_qk + d_v) / 2, which gives the same FLOPs. Values off the table are clamped to its ends.
    peak_flop_per_s: the bf16 dense peak (the core stays bf16 under fp8 recipes: compute.gemm_peaks)."""
    flop = np.asarray(core_flop, dtype=np.float64) * (BACKWARD_FLOP_RATIO if backward else 1.0)
    eff = table.efficiency(seq_len, head_dim, backward)
    flop, eff = np.broadcast_arrays(flop, eff)
    return np.where(flop > 0, flop / (peak_flop_per_s * eff), 0.0)
