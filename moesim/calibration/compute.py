"""Measure what the compute model (moesim/cost/gemm.py, cost/attention.py, the memory-bound ops and the launch count)
needs, on the device at hand: a dense GEMM shape sweep, element-wise bandwidth, the launch overhead and the fused
attention core (causal scaled_dot_product_attention over a seq_len x head_dim grid, forward and forward+backward).
Rows in the layouts of moesim.calibration.samples (GEMM_COLUMNS, ELEMENTWISE_COLUMNS, LAUNCH_COLUMNS,
ATTENTION_COLUMNS); torch loads lazily.

Every sample times `calls` back-to-back calls at once (CUDA events on a GPU, the wall clock on a CPU) and keeps
the per-call time, `repeats` times after `warmup` calls; `calls` is chosen so one timing lasts about
`target_s`. Operands rotate through enough copies to exceed the caches (`cache_bytes`), so a small GEMM or copy
reads HBM (DRAM on a CPU), as the model assumes, instead of the L2 cache left warm by the previous call."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.calibration.compute_fit import attention_forward_flop
from moesim.calibration.kernels import timer
from moesim.calibration.samples import ATTENTION_COLUMNS, ELEMENTWISE_COLUMNS, GEMM_COLUMNS, LAUNCH_COLUMNS
from moesim.cost.attention import BACKWARD_FLOP_RATIO

MiB = 1 << 20
CPU_MIN_CACHE_BYTES = 64 * MiB  # what CPU operands rotate through at least (twice a 32 MiB L3)
CPU_MAX_CACHE_BYTES = 2048 * MiB  # and at most: a flush buffer plus operand copies of this size per rank
MAX_COPIES = 512  # operand copies rotated through at most (tiny shapes stay cached on a CPU; that is fine)
MAX_CALLS = 10_000


@dataclass(frozen=True)
class ComputePlan:
    """What to measure. gemm_shapes: (m, n, k) of [m, k] x [k, n]; elementwise_bytes: bytes of ONE tensor."""

    gemm_shapes: tuple[tuple[int, int, int], ...]
    elementwise_bytes: tuple[int, ...]
    repeats: int
    warmup: int
    target_s: float  # wall time of one timing of back-to-back calls
    launch_calls: int  # tiny ops per timing of the launch overhead
    cache_bytes: int  # operands rotate through copies of at least this many bytes in all


def _grid(ms, ns, ks) -> tuple[tuple[int, int, int], ...]:
    return tuple(itertools.product(ms, ns, ks))


def _cpu_cache(quick: bool, cache_bytes: int | None) -> int:
    """What CPU operands rotate through: twice the last-level cache (an AMD EPYC VM reports 32 MiB, an Intel Xeon
    one 480 MiB, whose 64 MiB flush left the FFN timings 13-17 % faster than after 1 GiB), at least 64 MiB; quick
    keeps 64 MiB (its allocations would dominate its seconds); at most CPU_MAX_CACHE_BYTES (a VM reporting a
    bogus size must not allocate it)."""
    if quick or not cache_bytes:
        return CPU_MIN_CACHE_BYTES
    return min(CPU_MAX_CACHE_BYTES, max(CPU_MIN_CACHE_BYTES, 2 * cache_bytes))


def compute_plan(device: str, quick: bool, cache_bytes: int | None = None) -> ComputePlan:
    """The sweep for a GPU (bf16 at hundreds of TFLOP/s) or one CPU thread (fp32 at ~0.1 TFLOP/s). Both cover
    skinny m (1 to 16 rows: operand-bound), small k (32 to 512: output-write bound) and large square-ish shapes;
    quick keeps a handful (seconds on a CPU). cache_bytes: the device's largest cache (device_cache_bytes)."""
    if device.startswith("cuda"):
        cache = 2 * (cache_bytes or 50 * MiB)  # H100/H200: 50 MiB of L2
        if quick:
            return ComputePlan(_grid((16, 2048), (4096,), (512, 4096)), (64 * MiB, 256 * MiB), 5, 2, 2e-3, 200,
                               cache)
        return ComputePlan(_grid((1, 16, 128, 512, 2048, 8192), (1024, 4096, 16384), (256, 1024, 4096, 16384)),
                           tuple(s * MiB for s in (1, 4, 16, 64, 256, 1024)), 20, 5, 5e-3, 1000, cache)
    cache = _cpu_cache(quick, cache_bytes)
    if quick:
        return ComputePlan(_grid((1, 64, 512), (256,), (32, 512)), (1 * MiB, 16 * MiB), 3, 1, 1e-3, 200, cache)
    return ComputePlan(_grid((1, 4, 16, 64, 256, 1024), (128, 512, 2048), (32, 128, 512, 2048)),
                       tuple(s * MiB for s in (1, 4, 16, 64, 256)), 10, 2, 5e-3, 1000, cache)


@dataclass(frozen=True)
class AttentionPlan:
    """The attention grid: every seq_len x head_dim, each on `tokens` tokens (batch = tokens // seq_len sequences)
    and `hidden` query width (heads = hidden // head_dim), FlashAttention's benchmark's way of keeping the work per
    call alike across the grid (it uses 16k tokens and hidden 2048)."""

    seq_lens: tuple[int, ...]
    head_dims: tuple[int, ...]
    tokens: int
    hidden: int
    repeats: int
    warmup: int
    target_s: float
    cache_bytes: int


def attention_plan(device: str, quick: bool, cache_bytes: int | None = None) -> AttentionPlan:
    """A GPU: seq 512 to 16k at head dims 64, 128 and 256 on 16k tokens of hidden 2048 (FlashAttention-3's
    published grid, so the table compares with the datasheet profiles'); about ten seconds on an H100. One CPU
    thread (fp32 at ~0.1 TFLOP/s): seq 128 to 1024 at head dims 32 to 128 on 1024 tokens of hidden 256, a few
    seconds. quick keeps a 2 x 2 (GPU) or 3 x 2 (CPU) grid, under a second or two."""
    if device.startswith("cuda"):
        cache = 2 * (cache_bytes or 50 * MiB)
        if quick:
            return AttentionPlan((1024, 4096), (64, 128), 16384, 2048, 5, 2, 2e-3, cache)
        return AttentionPlan((512, 1024, 2048, 4096, 8192, 16384), (64, 128, 256), 16384, 2048, 20, 5, 5e-3, cache)
    cache = _cpu_cache(quick, cache_bytes)
    if quick:
        return AttentionPlan((64, 128, 256), (32, 64), 256, 128, 3, 1, 1e-3, cache)
    return AttentionPlan((128, 256, 512, 1024), (32, 64, 128), 1024, 256, 10, 2, 5e-3, cache)


def _torch_dtype(name: str):
    import torch  # noqa: PLC0415

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _copies(set_bytes: float, cache_bytes: int) -> int:
    return int(min(MAX_COPIES, max(1, math.ceil(cache_bytes / max(set_bytes, 1.0)))))


def _rotating(sets: list, op):
    """A call that runs op(*sets[i]) on the next operand set each time."""
    state = {"i": 0}

    def call():
        op(*sets[state["i"]])
        state["i"] = (state["i"] + 1) % len(sets)
    return call


def per_call_times(fn, device: str, repeats: int, warmup: int, target_s: float,
                   calls: int | None = None) -> tuple[np.ndarray, int]:
    """([repeats] seconds per call, calls per timing): fn called back to back, `calls` at a time (default: as
    many as last about target_s, from one timed call after the warm-up)."""
    timed = timer(device)
    for _ in range(max(warmup, 1)):
        fn()
    if calls is None:
        one = timed(fn)
        calls = int(min(MAX_CALLS, max(1, math.ceil(target_s / max(one, 1e-9)))))

    def batch():
        for _ in range(calls):
            fn()
    return np.array([timed(batch) for _ in range(repeats)]) / calls, calls


def _stats(times: np.ndarray) -> tuple[float, float, float]:
    return float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90))


def measure_gemms(plan: ComputePlan, dtype_name: str, device: str, seed: int = 0) -> pd.DataFrame:
    """GEMM_COLUMNS rows: torch.matmul(a, b, out=c) for every (m, n, k) of the plan."""
    import torch  # noqa: PLC0415

    dtype = _torch_dtype(dtype_name)
    gen = torch.Generator(device=device).manual_seed(seed)  # operands made where they are used: no host copy
    size = torch.finfo(dtype).bits // 8
    rows = []
    for m, n, k in plan.gemm_shapes:
        copies = _copies((m * k + k * n + m * n) * size, plan.cache_bytes)
        sets = [(torch.randn(m, k, generator=gen, device=device, dtype=dtype),
                 torch.randn(k, n, generator=gen, device=device, dtype=dtype),
                 torch.empty(m, n, device=device, dtype=dtype)) for _ in range(copies)]
        times, calls = per_call_times(_rotating(sets, lambda x, y, z: torch.matmul(x, y, out=z)), device,
                                      plan.repeats, plan.warmup, plan.target_s)
        del sets
        rows.append((dtype_name, m, n, k, 2.0 * m * n * k, *_stats(times), calls, plan.repeats))
    return pd.DataFrame(rows, columns=list(GEMM_COLUMNS))


def measure_elementwise(plan: ComputePlan, dtype_name: str, device: str) -> pd.DataFrame:
    """ELEMENTWISE_COLUMNS rows: a copy (2 tensors' bytes moved) and an add (3) at every size of the plan."""
    import torch  # noqa: PLC0415

    dtype = _torch_dtype(dtype_name)
    size = torch.finfo(dtype).bits // 8
    ops = {"copy": (2, lambda src, dst, _: dst.copy_(src)), "add": (3, lambda a, b, c: torch.add(a, b, out=c))}
    rows = []
    for nbytes in plan.elementwise_bytes:
        elements = max(1, nbytes // size)
        for op, (tensors, fn) in ops.items():
            copies = _copies(tensors * elements * size, plan.cache_bytes)
            sets = [tuple(torch.ones(elements, device=device, dtype=dtype) for _ in range(3))
                    for _ in range(copies)]
            times, calls = per_call_times(_rotating(sets, fn), device, plan.repeats, plan.warmup, plan.target_s)
            del sets
            moved = float(tensors * elements * size)
            median, p10, p90 = _stats(times)
            rows.append((op, dtype_name, elements, moved, median, p10, p90, moved / median / 1e9, calls,
                         plan.repeats))
    return pd.DataFrame(rows, columns=list(ELEMENTWISE_COLUMNS))


def measure_launch(plan: ComputePlan, dtype_name: str, device: str) -> pd.DataFrame:
    """LAUNCH_COLUMNS row: x.add_(1) on a one-element tensor, plan.launch_calls back to back per timing."""
    import torch  # noqa: PLC0415

    x = torch.zeros(1, device=device, dtype=_torch_dtype(dtype_name))
    times, calls = per_call_times(lambda: x.add_(1), device, plan.repeats, max(plan.warmup, 10), plan.target_s,
                                  calls=plan.launch_calls)
    return pd.DataFrame([("add_scalar", dtype_name, *_stats(times), calls, plan.repeats)],
                        columns=list(LAUNCH_COLUMNS))


def sdpa_backend(q, k, v) -> str:
    """The implementation scaled_dot_product_attention(q, k, v, is_causal=True) dispatches to on these tensors, as
    torch itself chooses it (torch._fused_sdp_choice, what SDPA calls on CPU and CUDA: flash_attention,
    efficient_attention, cudnn_attention, math), or "unknown" where this torch does not have it."""
    import torch  # noqa: PLC0415

    try:
        from torch.nn.attention import SDPBackend  # noqa: PLC0415

        return SDPBackend(int(torch._fused_sdp_choice(q, k, v, None, 0.0, True))).name.lower()
    except (AttributeError, ImportError, RuntimeError, TypeError, ValueError):
        return "unknown"


def measure_attention(plan: AttentionPlan, dtype_name: str, device: str, seed: int = 0) -> pd.DataFrame:
    """ATTENTION_COLUMNS rows: causal torch.nn.functional.scaled_dot_product_attention, forward and forward with
    backward (torch.autograd.grad for q, k and v), at every seq_len x head_dim of the plan."""
    import torch  # noqa: PLC0415

    sdpa = torch.nn.functional.scaled_dot_product_attention
    dtype = _torch_dtype(dtype_name)
    gen = torch.Generator(device=device).manual_seed(seed)
    size = torch.finfo(dtype).bits // 8

    def forward(q, k, v, _):
        sdpa(q, k, v, is_causal=True)

    def forward_backward(q, k, v, grad):
        torch.autograd.grad(sdpa(q, k, v, is_causal=True), (q, k, v), grad)

    rows = []
    for head_dim in plan.head_dims:
        for seq in plan.seq_lens:
            batch, heads = max(1, plan.tokens // seq), max(1, plan.hidden // head_dim)
            shape = (batch, heads, seq, head_dim)
            copies = _copies(4 * batch * heads * seq * head_dim * size, plan.cache_bytes)  # q, k, v, output grad
            sets = [tuple(torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(i < 3)
                          for i in range(4)) for _ in range(copies)]
            backend = sdpa_backend(*sets[0][:3])
            flop = attention_forward_flop(batch, heads, seq, head_dim)
            for name, fn, ratio in (("forward", forward, 1.0),
                                    ("forward_backward", forward_backward, 1.0 + BACKWARD_FLOP_RATIO)):
                times, calls = per_call_times(_rotating(sets, fn), device, plan.repeats, plan.warmup, plan.target_s)
                rows.append((dtype_name, name, batch, heads, seq, head_dim, flop * ratio, *_stats(times), calls,
                             plan.repeats, backend))
            del sets
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def sm_count(device: str, threads: int | None) -> int:
    """GEMM tiles one wave runs: the GPU's SMs, or the CPU threads one rank computes with."""
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415

        return int(torch.cuda.get_device_properties(0).multi_processor_count)
    return int(threads or 1)


def device_cache_bytes(device: str, sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The device's largest cache in bytes: a GPU's L2, a CPU's last level (sysfs `size` of cpu0's caches, e.g.
    "491520K"); None where neither can be read."""
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415

        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)) or None
    sizes = []
    for entry in sysfs.glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
        except (OSError, UnicodeDecodeError):  # an unreadable entry says nothing about the cache
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=0) or None
