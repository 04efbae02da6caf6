"""What a hardware profile's compute keys amount to as achieved rates: a GEMM's FLOP/s over its shape, the
element-wise kernels' bandwidth over their size, the attention core's FLOP/s over sequence length and head width.
Each comes from the very cost function the simulator charges (cost/gemm.py, cost/attention.py, the HBM roofline
of ops.memory_bound_s), so a curve drawn from here is the model, not a second copy of it. Vectorised; pure."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.cost.attention import BACKWARD_FLOP_RATIO, attention_core_time_s
from moesim.cost.compute import attention_peak
from moesim.cost.gemm import gemm_rates, gemm_time_s
from moesim.spec.dtype import Dtype
from moesim.spec.hardware import ClusterProfile


def gemm_flop_per_s(profile: ClusterProfile, dtype: Dtype, m: Any, n: Any, k: Any,
                    with_launch: bool = False) -> np.ndarray:
    """Achieved FLOP/s (2·m·n·k over the modelled time) of [m, k] x [k, n] -> [m, n] in `dtype` (shapes
    broadcast). `with_launch` adds the profile's one kernel launch to the time, as a benchmark timing calls back
    to back sees it (the simulator charges launches in their own bucket). Raises SpecError when the GPU has no
    peak for `dtype`."""
    m, n, k = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m, n, k)))
    time_s = gemm_time_s(m, n, k, gemm_rates(profile, dtype))
    if with_launch:
        time_s = time_s + profile.efficiency.kernel_launch_s
    flop = 2.0 * m * n * k
    return np.divide(flop, time_s, out=np.zeros_like(flop), where=time_s > 0)


def gemm_flop_per_s_limit(profile: ClusterProfile, dtype: Dtype) -> float:
    """The most a GEMM reaches in the model: full waves of long-K tiles at the profile's GEMM efficiency."""
    return gemm_rates(profile, dtype).sm_flop_per_s * profile.gpu.sm_count


def elementwise_bytes_per_s(profile: ClusterProfile, moved_bytes: Any, with_launch: bool = True) -> np.ndarray:
    """Achieved bandwidth of a memory-bound kernel moving `moved_bytes` (all bytes read and written, STREAM's
    convention): the HBM bandwidth x the profile's hbm_efficiency, behind one kernel launch when `with_launch`
    (small kernels are launch-bound)."""
    moved = np.asarray(moved_bytes, dtype=np.float64)
    time_s = moved / elementwise_bytes_per_s_limit(profile)
    if with_launch:
        time_s = time_s + profile.efficiency.kernel_launch_s
    return np.divide(moved, time_s, out=np.zeros_like(moved), where=time_s > 0)


def elementwise_bytes_per_s_limit(profile: ClusterProfile) -> float:
    """The bandwidth memory-bound kernels achieve (what ops.memory_bound_s divides by)."""
    return profile.gpu.hbm_bandwidth_bytes_per_s * profile.efficiency.hbm


def attention_flop_per_s(profile: ClusterProfile, dtype: Dtype, seq_len: Any, head_dim: Any,
                         backward: bool = False) -> np.ndarray:
    """Achieved FLOP/s of the causal attention core (FlashAttention's FLOP convention) at `seq_len` tokens and
    heads `head_dim` wide, forward or backward, from the profile's efficiency table and the peak the core runs at
    (bf16 under an fp8 recipe). Computed as one core's FLOPs over attention_core_time_s, the simulator's time."""
    peak = attention_peak(profile, dtype)
    flop = np.ones(np.broadcast_shapes(np.shape(seq_len), np.shape(head_dim)))  # the rate does not depend on it
    time_s = attention_core_time_s(flop, seq_len, head_dim, profile.efficiency.attention, peak, backward)
    return flop * (BACKWARD_FLOP_RATIO if backward else 1.0) / time_s
