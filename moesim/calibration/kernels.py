"""Time expert GEMMs against tokens per expert (KERNEL_COLUMNS rows). torch (and triton on a GPU) load lazily.

One sample = one grouped GEMM of E experts, x [E * m, hidden] @ W[e] [hidden, ffn] per expert's rows, for the
mean tokens per expert m, with counts even or skewed (Zipf 1 across experts, same total). Implementations:
- "triton": moesim.kernels.grouped_gemm (GPU only; the CPU interpreter times Python, not a kernel);
- "torch_loop": one torch matmul per expert (the reference, and what CPU ranks run);
- "torch_matmul": one dense matmul of the same useful FLOP: the ceiling a grouped GEMM can reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.calibration.samples import EXPERT_FFN_COLUMNS, EXPERT_FFN_PASSES, KERNEL_COLUMNS

QUICK_TOKENS = (1, 8, 64, 256, 1024)
FULL_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class KernelShape:
    hidden: int
    ffn: int
    num_experts: int


QUICK_SHAPES = (KernelShape(256, 512, 8),)
# The expert FFN on a CPU rank: the shapes `moesim execute` runs there (its default scale limits and the two shapes
# of `moesim accuracy --execute`, tests/calibration/test_expert_ffn.py holds them equal) and one wider shape
CPU_FFN_SHAPES = (KernelShape(128, 256, 8), KernelShape(256, 512, 8), KernelShape(256, 768, 8),
                  KernelShape(1024, 1024, 8))
CPU_FFN_TOKENS = (1, 4, 16, 64, 256, 1024)
# ~40 ms a forward on one core: larger samples add minutes, not information; 1024 x 1024 still reaches 64 rows
CPU_FFN_MAX_FORWARD_FLOP = 4e9
SWIGLU_MATRICES = 3  # gate, up, down: what the expert FFN samples time (moesim.spec.model.Activation.SWIGLU)


def preset_shapes(max_hidden: int | None = None) -> tuple[KernelShape, ...]:
    """The expert GEMM shapes of the model presets (hidden x expert FFN, 8 local experts)."""
    from moesim.spec.presets import MODEL_PRESETS  # noqa: PLC0415

    shapes = sorted({(m.hidden_size, m.expert_ffn_size) for m in MODEL_PRESETS.values()})
    return tuple(KernelShape(h, f, 8) for h, f in shapes if max_hidden is None or h <= max_hidden)


def token_counts(num_experts: int, mean_tokens: int, distribution: str) -> np.ndarray:
    """[E] tokens per expert with the given mean: all equal, or Zipf(1) shares rounded to the same total."""
    total = num_experts * mean_tokens
    if distribution == "even":
        return np.full(num_experts, mean_tokens, dtype=np.int64)
    shares = 1.0 / np.arange(1, num_experts + 1)
    raw = shares / shares.sum() * total
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def timer(device: str, flush_bytes: int = 0):
    """fn -> seconds of one fn() call: CUDA events on a GPU (synchronised), the wall clock on a CPU. With
    `flush_bytes`, a buffer that large is written before each call, untimed, so that the call starts with the
    caches holding other data, as an op inside a training step does (Triton's do_bench flushes the L2 the same
    way): a loop of the same op on the same operands would otherwise time them cache-hot."""
    import torch  # noqa: PLC0415

    flush = torch.empty(flush_bytes // 4, dtype=torch.float32, device=device) if flush_bytes else None
    if device.startswith("cuda"):
        def timed(fn) -> float:
            if flush is not None:
                flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn) -> float:
            if flush is not None:
                flush.zero_()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def measure_kernels(shapes, tokens, dtype_name: str, device: str, repeats: int, warmup: int,
                    impls: tuple[str, ...] | None = None, seed: int = 0) -> pd.DataFrame:
    """KERNEL_COLUMNS rows for every shape x tokens-per-expert x distribution x implementation."""
    import torch  # noqa: PLC0415

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    if impls is None:
        cpu_impls = ("torch_loop", "torch_matmul")
        impls = ("triton", *cpu_impls) if device.startswith("cuda") else cpu_impls
    gen = torch.Generator(device="cpu").manual_seed(seed)
    timed = timer(device)
    rows = []
    for shape in shapes:
        w = (torch.randn(shape.num_experts, shape.hidden, shape.ffn, generator=gen) / shape.hidden ** 0.5)
        w = w.to(device=device, dtype=dtype)
        for m in tokens:
            for dist in ("even", "skewed"):
                counts = token_counts(shape.num_experts, m, dist)
                total = int(counts.sum())
                x = torch.randn(total, shape.hidden, generator=gen).to(device=device, dtype=dtype)
                flop = 2.0 * total * shape.hidden * shape.ffn
                for impl in impls:
                    if impl == "torch_matmul" and dist == "skewed":
                        continue  # the dense ceiling does not depend on the split
                    fn = _kernel(impl, x, w, counts)
                    for _ in range(warmup):
                        fn()
                    times = np.array([timed(fn) for _ in range(repeats)])
                    rows.append((impl, dtype_name, shape.hidden, shape.ffn, shape.num_experts, dist, m, flop,
                                 float(np.median(times)), float(np.percentile(times, 10)),
                                 float(np.percentile(times, 90)), repeats))
    return pd.DataFrame(rows, columns=list(KERNEL_COLUMNS))


def _kernel(impl: str, x, w, counts: np.ndarray):
    import torch  # noqa: PLC0415

    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    if impl == "torch_loop":
        def run():
            for e in range(w.shape[0]):
                if bounds[e + 1] > bounds[e]:
                    torch.matmul(x[bounds[e]:bounds[e + 1]], w[e])
        return run
    if impl == "torch_matmul":
        return lambda: torch.matmul(x, w[0])
    if impl == "triton":
        from moesim.kernels.grouped_gemm import grouped_gemm  # noqa: PLC0415

        ids = torch.repeat_interleave(torch.arange(w.shape[0], device=x.device),
                                      torch.as_tensor(counts, device=x.device))[:, None]
        return lambda: grouped_gemm(x, w, ids)
    raise ValueError(f"unknown kernel implementation {impl!r}")


def measure_expert_ffn(shapes, tokens, dtype_name: str, device: str, repeats: int, warmup: int,
                       max_forward_flop: float = float("inf"), max_bytes: float = float("inf"),
                       flush_bytes: int = 0, impl: str | None = None, seed: int = 0, log=None) -> pd.DataFrame:
    """EXPERT_FFN_COLUMNS rows: E experts' SwiGLU FFN of tokens_per_expert rows each, forward and forward +
    backward, for every shape x tokens, each timing after a cache flush of flush_bytes (timer). Samples above
    max_forward_flop or, by ffn_bytes' estimate, max_bytes are skipped (and one out of memory all the same, said
    through `log`). impl (default by device): "torch_loop", the torch loop a CPU rank of `moesim execute` runs, or
    "triton", the Triton expert_ffn its GPU ranks run (the weights stacked on every call, as they run it)."""
    import torch  # noqa: PLC0415

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    impl = impl or ("triton" if device.startswith("cuda") else "torch_loop")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    timed = timer(device, flush_bytes)
    rows = []
    for shape in shapes:
        h, f, E = shape.hidden, shape.ffn, shape.num_experts

        def weight(rows_: int, cols: int) -> torch.Tensor:
            w = torch.randn(rows_, cols, generator=gen) / rows_ ** 0.5
            return w.to(device=device, dtype=dtype).requires_grad_()

        sizes = [m for m in tokens if ffn_forward_flop(shape, m) <= max_forward_flop
                 and ffn_bytes(shape, m, dtype.itemsize) <= max_bytes]
        if not sizes:
            continue
        weights = [[weight(h, f), weight(h, f), weight(f, h)] for _ in range(E)]
        for m in sizes:
            try:
                rows += _time_ffn(impl, dtype_name, shape, m, gen, dtype, device, weights, timed, repeats, warmup)
            except torch.OutOfMemoryError:
                if log is not None:
                    log(f"expert FFN {h}x{f}, {m} tokens per expert: out of device memory, skipped")
    return pd.DataFrame(rows, columns=list(EXPERT_FFN_COLUMNS))


def ffn_forward_flop(shape: KernelShape, tokens_per_expert: int) -> float:
    """Useful FLOP of one forward of E experts' SwiGLU FFN, tokens_per_expert rows each."""
    return 2.0 * shape.num_experts * tokens_per_expert * shape.hidden * shape.ffn * SWIGLU_MATRICES


def ffn_bytes(shape: KernelShape, tokens_per_expert: int, elem_bytes: int) -> float:
    """An upper estimate of the memory one expert FFN sample holds at once: the weights, their gradients and the
    stacked copies the Triton path makes (3 x 3 E·h·f elements), and per row the input, output and their gradients
    (4 h) and the fp32 pre-activations with the backward's temporaries (about 10 f, 4 bytes each)."""
    rows = shape.num_experts * tokens_per_expert
    weights = 3.0 * shape.num_experts * shape.hidden * shape.ffn
    return 3.0 * weights * elem_bytes + rows * (4.0 * shape.hidden * elem_bytes + 10.0 * shape.ffn * 4)


def _time_ffn(impl: str, dtype_name: str, shape: KernelShape, m: int, gen, dtype, device: str, weights: list,
              timed, repeats: int, warmup: int) -> list[tuple]:
    """The two passes' rows of one size (EXPERT_FFN_PASSES)."""
    import torch  # noqa: PLC0415

    x = (torch.randn(shape.num_experts * m, shape.hidden, generator=gen) / 4).to(device=device, dtype=dtype)
    forward = _ffn(impl, x.requires_grad_(), weights, m)
    grads = [torch.ones_like(y) for y in forward()]
    passes = dict(zip(EXPERT_FFN_PASSES, (forward, lambda: torch.autograd.backward(forward(), grads))))
    rows = []
    for name, fn in passes.items():
        for _ in range(warmup):
            fn()
        times = np.array([timed(fn) for _ in range(repeats)])
        rows.append((impl, dtype_name, shape.hidden, shape.ffn, shape.num_experts, m, name,
                     ffn_forward_flop(shape, m) * (3.0 if name == "forward_backward" else 1.0),
                     float(np.median(times)),
                     float(np.percentile(times, 10)), float(np.percentile(times, 90)), repeats))
    return rows


def _ffn(impl: str, x, weights: list, rows_per_expert: int):
    """() -> the experts' outputs (a list), as the trainer computes them."""
    import torch  # noqa: PLC0415

    if impl == "torch_loop":
        from moesim.kernels.reference import swiglu_ffn  # noqa: PLC0415

        def run():
            return [swiglu_ffn(x[e * rows_per_expert:(e + 1) * rows_per_expert], *w) for e, w in enumerate(weights)]
        return run
    from moesim.kernels.expert_ffn import expert_ffn, launch_options  # noqa: PLC0415 - triton only where it runs

    ids = torch.arange(len(weights), device=x.device).repeat_interleave(rows_per_expert)
    w_gate, w_up, w_down = ([w[i] for w in weights] for i in range(3))
    return lambda: [expert_ffn(x, ids, w_gate, w_up, w_down, **launch_options(x))]


def measure_memory_bandwidth(device: str, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Copy bandwidth in bytes/s (read + write counted once each, as STREAM copy does)."""
    import torch  # noqa: PLC0415

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timed = timer(device)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2.0 * nbytes / best
