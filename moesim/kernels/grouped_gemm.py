"""Triton grouped GEMM for MoE experts (fused-MoE style) and a SwiGLU expert MLP built on it.

Layout: the T*k (token, choice) *slots* are sorted by expert and each expert's group is padded
to a multiple of BLOCK_M (``align_by_expert``), so every M-block of the grid belongs to one
expert. A program gathers its rows, multiplies by that expert's weight and scatters the result
to its slots; the launcher then sums the k slots of each token.

Under ``TRITON_INTERPRET=1`` (CPU) the variable must be set before this module is imported,
because ``@triton.jit`` reads it at decoration time.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INPUT_PRECISIONS = ("tf32", "tf32x3", "ieee")
# Interpreter cost is per program instance: few, large blocks.
_INTERP_MAX_BLOCK_N = 128
_INTERP_MAX_BLOCK_K = 64
_MIN_BLOCK = 16  # tl.dot needs every block dim >= 16 on a GPU; the interpreter does not check


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, w_ptr, out_ptr, gate_ptr, sorted_slot_ptr, block_expert_ptr,
    num_slots, N, K,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_om, stride_on,
    SLOTS_PER_ROW: tl.constexpr,
    HAS_GATE: tl.constexpr,
    UPCAST_TO_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[slot, n-block] = (gate[slot] *) a[slot // SLOTS_PER_ROW] @ w[expert of this M-block].

    a: [R, K] with R * SLOTS_PER_ROW == num_slots (SLOTS_PER_ROW = top_k gathers token rows,
    1 gathers per-slot rows); w: [E, K, N]; out: [num_slots, N]; gate: [num_slots];
    sorted_slot: [num_blocks * BLOCK_M], padding = num_slots; block_expert: [num_blocks].
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # int64 offsets: E * K * N and num_slots * N can exceed 2**31 for real expert sizes.
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    slots = tl.load(sorted_slot_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    valid = slots < num_slots
    rows = slots // SLOTS_PER_ROW

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + expert * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    n_mask = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST_TO_FP32:
            # The interpreter's bf16 tl.dot multiplies raw bit patterns (triton#11584).
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    if HAS_GATE:
        g = tl.load(gate_ptr + slots, mask=valid, other=0.0).to(tl.float32)
        acc = acc * g[:, None]
    out_ptrs = out_ptr + slots[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


_autotuned_kernel = None


def _gpu_configs() -> list:
    """Autotune space for the GPU: BLOCK_M is fixed per call (it must match the alignment)."""
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw, num_stages=ns)
        for bn in (64, 128, 256) for bk in (32, 64) for nw in (4, 8) for ns in (3, 4)
    ]


def _get_autotuned_kernel():
    """The autotuned wrapper, built on first GPU use only (never under the interpreter)."""
    global _autotuned_kernel
    if _autotuned_kernel is None:
        # Tensor dtypes are part of the autotuner's cache key already.
        _autotuned_kernel = triton.autotune(
            configs=_gpu_configs(), key=["N", "K", "BLOCK_M", "SLOTS_PER_ROW", "HAS_GATE"],
        )(_grouped_gemm_kernel)
    return _autotuned_kernel


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def align_by_expert(expert_ids: torch.Tensor, num_experts: int, block_m: int
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sort the (token, choice) slots by expert and pad each expert's group to ``block_m``.

    expert_ids: [T, k] integer in [0, num_experts); slot s is (token s // k, choice s % k).
    Returns (sorted_slot_ids [num_blocks * block_m] int32, block_expert [num_blocks] int32,
    num_blocks). Padding entries hold the sentinel T*k. Within an expert, slots keep their
    order (stable sort), so the layout is deterministic. Experts with no slot get no block.
    """
    _check_block("block_m", block_m)
    if expert_ids.dim() != 2:
        raise ValueError(f"expert_ids must be [T, k], got shape {tuple(expert_ids.shape)}")
    if expert_ids.dtype.is_floating_point or expert_ids.dtype == torch.bool:
        raise ValueError(f"expert_ids must be an integer tensor, got {expert_ids.dtype}")
    flat = expert_ids.reshape(-1).to(torch.int64)
    num_slots = flat.numel()
    if num_slots >= 2**31 - 1:
        raise ValueError(f"too many slots for int32 ids: {num_slots}")
    if num_slots and (int(flat.min()) < 0 or int(flat.max()) >= num_experts):
        raise ValueError(f"expert_ids must lie in [0, {num_experts})")

    sorted_experts, order = torch.sort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    blocks_per_expert = (counts + block_m - 1) // block_m
    padded_start = torch.cumsum(blocks_per_expert * block_m, 0) - blocks_per_expert * block_m
    group_start = torch.cumsum(counts, 0) - counts
    # Slot i of the sorted order is the (i - group_start)-th of its expert.
    rank = torch.arange(num_slots, device=flat.device) - group_start[sorted_experts]
    dest = padded_start[sorted_experts] + rank

    num_blocks = int(blocks_per_expert.sum())
    sorted_slot_ids = torch.full((num_blocks * block_m,), num_slots, dtype=torch.int32, device=flat.device)
    sorted_slot_ids[dest] = order.to(torch.int32)
    block_expert = torch.repeat_interleave(
        torch.arange(num_experts, dtype=torch.int32, device=flat.device), blocks_per_expert)
    return sorted_slot_ids, block_expert, num_blocks


def grouped_gemm(x: torch.Tensor, w: torch.Tensor, expert_ids: torch.Tensor,
                 gate: torch.Tensor | None = None, block_m: int = 64, *,
                 block_n: int | None = None, block_k: int | None = None,
                 input_precision: str = "tf32") -> torch.Tensor:
    """MoE grouped GEMM: ``out[t] = sum_j gate[t, j] * x[t] @ w[expert_ids[t, j]]``.

    x: [T, K]; w: [E, K, N] (same dtype as x: fp32, fp16 or bf16); expert_ids: [T, k];
    gate: [T, k] or None (weight 1). Returns [T, N] in x.dtype, accumulated in fp32 and
    rounded once. block_n / block_k: both None = autotuned on a GPU; otherwise fixed (a None
    one takes the interpreter default: the dim's next power of 2, capped at 128 / 64).
    input_precision applies to fp32 inputs on a GPU ("tf32" default, "ieee" exact).
    """
    _check_inputs(x, w, expert_ids, gate)
    _check_options(block_m, block_n, block_k, input_precision)
    T, k = expert_ids.shape
    if T == 0 or w.shape[2] == 0:
        return torch.zeros(T, w.shape[2], dtype=x.dtype, device=x.device)
    layout = align_by_expert(expert_ids, w.shape[0], block_m)
    gate_flat = None if gate is None else gate.reshape(-1).contiguous()  # kernel indexes it by slot
    per_slot = _grouped_gemm_slots(x, w, layout, k, gate_flat, block_m, block_n, block_k, input_precision)
    return _combine(per_slot, T, k, x.dtype)


def swiglu_expert_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                      w_down: torch.Tensor, expert_ids: torch.Tensor, gate: torch.Tensor,
                      block_m: int = 64, *, block_n: int | None = None,
                      block_k: int | None = None, input_precision: str = "tf32") -> torch.Tensor:
    """MoE SwiGLU MLP: ``sum_j gate[t, j] * (silu(x[t] @ Wg[e]) * (x[t] @ Wu[e])) @ Wd[e]``.

    e = expert_ids[t, j]; the gate and up GEMMs are not gate-weighted, the down GEMM is.

    x: [T, H]; w_gate, w_up: [E, H, F]; w_down: [E, F, H]; expert_ids, gate: [T, k].
    Returns [T, H] in x.dtype. Three grouped GEMMs share one alignment: gate and up write
    per-slot rows [T*k, F] (fp32); silu(g) * u is cast to x.dtype; down gathers those rows
    by slot and applies the gate weight.
    """
    if gate is None:
        raise ValueError("swiglu_expert_mlp needs gate weights [T, k]")
    _check_inputs(x, w_gate, expert_ids, gate)
    _check_inputs(x, w_up, expert_ids, gate)
    _check_options(block_m, block_n, block_k, input_precision)
    E, H, F = w_gate.shape
    if w_up.shape != w_gate.shape or tuple(w_down.shape) != (E, F, H):
        raise ValueError(f"expected w_up [E, H, F] = {tuple(w_gate.shape)} and w_down [E, F, H] = "
                         f"{(E, F, H)}, got {tuple(w_up.shape)} and {tuple(w_down.shape)}")
    if w_down.dtype != x.dtype:
        raise ValueError(f"w_down dtype {w_down.dtype} differs from x dtype {x.dtype}")
    T, k = expert_ids.shape
    if T == 0 or H == 0:
        return torch.zeros(T, H, dtype=x.dtype, device=x.device)
    layout = align_by_expert(expert_ids, E, block_m)
    opts = (block_m, block_n, block_k, input_precision)
    g = _grouped_gemm_slots(x, w_gate, layout, k, None, *opts)
    u = _grouped_gemm_slots(x, w_up, layout, k, None, *opts)
    h = (torch.nn.functional.silu(g) * u).to(x.dtype)  # [T*k, F]
    y = _grouped_gemm_slots(h, w_down, layout, 1, gate.reshape(-1).contiguous(), *opts)
    return _combine(y, T, k, x.dtype)


def _combine(per_slot: torch.Tensor, T: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """[T*k, N] fp32 per-slot rows -> [T, N] in dtype (sum over the k choices in fp32)."""
    return per_slot.view(T, k, -1).sum(dim=1).to(dtype)


def _grouped_gemm_slots(a: torch.Tensor, w: torch.Tensor, layout: tuple, slots_per_row: int,
                        gate_flat: torch.Tensor | None, block_m: int, block_n: int | None,
                        block_k: int | None, input_precision: str) -> torch.Tensor:
    """Launch the kernel: per-slot fp32 rows [num_slots, N], slot s reading a[s // slots_per_row].

    a: [R, K]; w: [E, K, N]; layout: align_by_expert(...) for R * slots_per_row slots.
    fp32 output so that the combine rounds once, as the reference does.
    """
    sorted_slot_ids, block_expert, num_blocks = layout
    num_slots = a.shape[0] * slots_per_row
    K, N = w.shape[1], w.shape[2]
    interpreting = _interpreting()
    if not interpreting and a.device.type != "cuda":
        raise RuntimeError("grouped_gemm needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "moesim.kernels.grouped_gemm is imported")
    out = torch.empty(num_slots, N, dtype=torch.float32, device=a.device)
    # Without a gate the pointer is never read (HAS_GATE=False); out stands in for it.
    args = (a, w, out, out if gate_flat is None else gate_flat, sorted_slot_ids, block_expert,
            num_slots, N, K, a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2),
            out.stride(0), out.stride(1))
    meta = dict(SLOTS_PER_ROW=slots_per_row, HAS_GATE=gate_flat is not None,
                **dot_meta(a.dtype, interpreting, input_precision, block_m))
    if interpreting or block_n is not None or block_k is not None:
        bn = block_n if block_n is not None else _default_block(N, _INTERP_MAX_BLOCK_N)
        bk = block_k if block_k is not None else _default_block(K, _INTERP_MAX_BLOCK_K)
        grid = (num_blocks, triton.cdiv(N, bn))
        _grouped_gemm_kernel[grid](*args, **meta, BLOCK_N=bn, BLOCK_K=bk)
    else:
        grid = lambda cfg: (num_blocks, triton.cdiv(N, cfg["BLOCK_N"]))  # noqa: E731
        _get_autotuned_kernel()[grid](*args, **meta)
    return out


def dot_meta(dtype: torch.dtype, interpreting: bool, input_precision: str, block_m: int) -> dict:
    """The tl.dot options every moesim kernel takes: bf16 upcast in the interpreter (its bf16 dot is wrong,
    triton#11584), the fp32 input precision, the row block."""
    # Only fp32 operands read INPUT_PRECISION; 16-bit dots keep the default.
    return dict(UPCAST_TO_FP32=interpreting and dtype == torch.bfloat16,
                INPUT_PRECISION=input_precision if dtype == torch.float32 else "tf32", BLOCK_M=block_m)


def _default_block(dim: int, cap: int) -> int:
    """Smallest power of 2 covering dim, clamped to [16, cap]: one block when the dim is small."""
    return max(_MIN_BLOCK, min(cap, triton.next_power_of_2(max(dim, 1))))


def _check_options(block_m: int, block_n: int | None, block_k: int | None, input_precision: str) -> None:
    """Block sizes (None = automatic) and the fp32 dot precision, checked before any work."""
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if value is not None:
            _check_block(name, value)
    if input_precision not in _INPUT_PRECISIONS:
        raise ValueError(f"input_precision must be one of {_INPUT_PRECISIONS}, got {input_precision!r}")


def _check_block(name: str, value: int) -> None:
    if not isinstance(value, int) or value < _MIN_BLOCK or value & (value - 1):
        raise ValueError(f"{name} must be a power of 2 >= {_MIN_BLOCK} (tl.dot and tl.arange need it), "
                         f"got {value!r}")


def _check_inputs(x: torch.Tensor, w: torch.Tensor, expert_ids: torch.Tensor,
                  gate: torch.Tensor | None) -> None:
    """x [T, K], w [E, K, N] of one supported dtype; expert_ids [T, k]; gate [T, k] or None."""
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be fp32, fp16 or bf16, got {x.dtype}")
    if w.dtype != x.dtype:
        raise ValueError(f"w dtype {w.dtype} differs from x dtype {x.dtype}")
    if x.dim() != 2 or w.dim() != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"expected x [T, K] and w [E, K, N], got {tuple(x.shape)} and {tuple(w.shape)}")
    if expert_ids.dim() != 2 or expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"expected expert_ids [T={x.shape[0]}, k], got {tuple(expert_ids.shape)}")
    if gate is not None and gate.shape != expert_ids.shape:
        raise ValueError(f"gate shape {tuple(gate.shape)} differs from expert_ids {tuple(expert_ids.shape)}")
    devices = {t.device for t in (x, w, expert_ids, gate) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
