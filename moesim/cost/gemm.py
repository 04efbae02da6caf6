"""Time of a GEMM from its shape: tile and wave quantisation over the GPU's SMs, each tile's output write, and the
HBM roofline. Pure and numpy-vectorised.

A GEMM [m, k] x [k, n] -> [m, n] is cut into output tiles of (tile_m, tile_n); each SM computes one tile at a
time, so the GEMM runs ceil(tiles / SMs) waves (NVIDIA's "Matrix Multiplication Background" guide: tile and wave
quantisation). One tile costs its main loop, 2·tile_m·tile_n·k FLOP at the SM's share of peak x `gemm_efficiency`,
plus the write of its output tile at the SM's share of HBM bandwidth, which the main loop does not hide. The
output write is what makes small-K GEMMs slow: DeepGEMM's fp8 rows on H800 (fidelity.md 3: M 4096 with N x K =
32768 x 512, 4096 x 7168, 7168 x 2048, 7168 x 16384 at 775, 1410, 1168, 1520 TFLOP/s) come out at 750, 1341, 1156,
1391 with the H100 profile's numbers and no knob fitted to them. Skinny GEMMs (few rows) are bound by reading their
operands: the time is never less than all operand and output bytes over the achieved HBM bandwidth. The library
picks the tile shape (of the profile's `gemm_tiles`) that finishes first, as cuBLAS's heuristics do.

Shapes: m, n, k broadcast against each other; a [..., E] `rows` array is one grouped GEMM of E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.spec.dtype import Dtype
from moesim.spec.hardware import ClusterProfile



@dataclass(frozen=True)
class GemmRates:
    """What GEMMs of one precision run at on one GPU."""

    sm_count: int
    tiles: np.ndarray  # [C, 2] candidate output tiles (rows, columns)
    sm_flop_per_s: float  # one SM's main-loop FLOP/s: peak x gemm efficiency / SMs
    hbm_bytes_per_s: float  # achieved HBM bandwidth of the whole GPU
    input_bytes: float  # bytes of an operand element (fp8: 1)
    output_bytes: float  # bytes of an output element (bf16 under fp8 too)
    # the weight gradient accumulates into Megatron's main_grad buffer of the training's grad_dtype
    # (gradient_accumulation_fusion, on by default with Transformer Engine): its epilogue reads and writes it
    wgrad_output_bytes: float = 8.0

    @property
    def sm_hbm_bytes_per_s(self) -> float:
        return self.hbm_bytes_per_s / self.sm_count


def gemm_rates(profile: ClusterProfile, dtype: Dtype, linear: bool = True,
               grad_dtype: Dtype = Dtype.FP32) -> GemmRates:
    """Rates of the linear layers' GEMMs (`linear`: QKV/out projections, FFNs, experts) or of the GEMMs Transformer
    Engine keeps in bf16 under an fp8 recipe (router, LM head). Under fp8 the linear GEMMs run at the fp8 peak and
    fp8_matmul_ratio of the bf16 efficiency (fidelity.md 5; DeepSeek-V3 report 3.3)."""
    eff = profile.efficiency
    fp8 = dtype is Dtype.FP8 and linear
    if dtype is Dtype.FP8 and not linear:
        dtype = Dtype.BF16
    peak = profile.gpu.peak(dtype) * eff.gemm * (eff.fp8_matmul_ratio if fp8 else 1.0)
    sms = profile.gpu.sm_count
    return GemmRates(sm_count=sms, tiles=np.array(eff.gemm_tiles, dtype=np.float64), sm_flop_per_s=peak / sms,
                     hbm_bytes_per_s=profile.gpu.hbm_bandwidth_bytes_per_s * eff.hbm,
                     input_bytes=float(dtype.bytes), output_bytes=float(dtype.activation_bytes),
                     wgrad_output_bytes=2.0 * grad_dtype.bytes)


def _tile_time_s(k, tm, tn, rates: GemmRates, output_bytes: float):
    return 2.0 * tm * tn * k / rates.sm_flop_per_s + tm * tn * output_bytes / rates.sm_hbm_bytes_per_s


def gemm_time_s(m, n, k, rates: GemmRates, output_bytes: float | None = None) -> np.ndarray:
    """Seconds of [m, k] x [k, n] -> [m, n] (broadcast shapes; 0 where any dimension is 0)."""
    out = rates.output_bytes if output_bytes is None else output_bytes
    m, n, k = (np.asarray(x, dtype=np.float64) for x in (m, n, k))
    tm, tn = rates.tiles[:, 0], rates.tiles[:, 1]
    tiles = np.ceil(m[..., None] / tm) * np.ceil(n[..., None] / tn)  # [..., C]
    waves = np.ceil(tiles / rates.sm_count)
    compute = (waves * _tile_time_s(k[..., None], tm, tn, rates, out)).min(axis=-1)
    memory = ((m * k + k * n) * rates.input_bytes + m * n * out) / rates.hbm_bytes_per_s
    return np.where(m * n * k > 0, np.maximum(compute, memory), 0.0)


def dense_backward_s(m, n, k, rates: GemmRates) -> np.ndarray:
    """Backward of a linear layer whose forward is [m, k] x [k, n]: the input gradient [m, n] x [n, k] and the
    weight gradient [k, m] x [m, n], whose reduction runs over the m tokens."""
    return gemm_time_s(m, k, n, rates) + gemm_time_s(k, n, m, rates, rates.wgrad_output_bytes)


def grouped_gemm_time_s(rows, n: int, k: int, rates: GemmRates) -> np.ndarray:
    """Seconds of one grouped GEMM: expert e computes [rows[..., e], k] x [k, n]. All experts' tiles share the
    waves (one launch); each active expert's weight is read once. rows [..., E] -> [...]."""
    rows = np.asarray(rows, dtype=np.float64)
    tm, tn = rates.tiles[:, 0], rates.tiles[:, 1]
    tiles = (np.ceil(rows[..., None] / tm) * np.ceil(n / tn)).sum(axis=-2)  # [..., C]
    waves = np.ceil(tiles / rates.sm_count)
    compute = (waves * _tile_time_s(k, tm, tn, rates, rates.output_bytes)).min(axis=-1)
    total = rows.sum(axis=-1)
    active = (rows > 0).sum(axis=-1)
    memory = ((total * k + active * k * n) * rates.input_bytes + total * n * rates.output_bytes) \
        / rates.hbm_bytes_per_s
    return np.where(total > 0, np.maximum(compute, memory), 0.0)


def grouped_wgrad_time_s(rows, n: int, k: int, rates: GemmRates) -> np.ndarray:
    """Seconds of the weight gradients of a grouped GEMM whose forward is [rows_e, k] x [k, n]: expert e computes
    [k, rows_e] x [rows_e, n], a reduction over its own rows, so few rows mean short main loops behind the same
    output write. Tiles of different depths share the waves: the work is summed and spread over the SMs, with the
    wave quantisation of the tile count. rows [..., E] -> [...]."""
    rows = np.asarray(rows, dtype=np.float64)
    tm, tn = rates.tiles[:, 0], rates.tiles[:, 1]
    per_expert = np.ceil(k / tm) * np.ceil(n / tn)  # [C] tiles of one expert's weight gradient
    active = (rows > 0).sum(axis=-1)[..., None]  # [..., 1]
    tiles = active * per_expert  # [..., C]
    work = per_expert * (_tile_time_s(rows[..., None], tm, tn, rates, rates.wgrad_output_bytes)
                         * (rows[..., None] > 0)).sum(axis=-2)  # [..., C] SM-seconds
    waves = np.ceil(tiles / rates.sm_count)
    quantised = np.where(tiles > 0, work * waves * rates.sm_count / np.maximum(tiles, 1.0), 0.0) / rates.sm_count
    compute = quantised.min(axis=-1)
    total = rows.sum(axis=-1)
    memory = (total * (k + n) * rates.input_bytes + active[..., 0] * k * n * rates.wgrad_output_bytes) \
        / rates.hbm_bytes_per_s
    return np.where(total > 0, np.maximum(compute, memory), 0.0)
