"""Trainable SwiGLU expert FFN on moesim's Triton grouped GEMM (forward and backward).

``expert_ffn`` runs one expert per row (top-1 slots: the caller applies the router gates)::

    y[r] = (silu(x[r] @ Wg[e]) * (x[r] @ Wu[e])) @ Wd[e],    e = expert_of_row[r]

Every GEMM is a Triton kernel on the layout of ``grouped_gemm.align_by_expert`` (rows sorted by
expert, each expert's group padded to ``block_m``; the sentinel row id R marks padding):

- forward: ``[g | u] = x @ [Wg | Wu]`` (one grouped GEMM, N = 2F), ``h = silu(g) * u``, ``y = h @ Wd``;
- backward, activations: ``dh = dy @ Wd^T`` and ``dx = [dg | du] @ [Wg | Wu]^T`` (grouped GEMMs on
  transposed *views* of the stacked weights: the kernel takes strides, so nothing is copied);
- backward, weights: ``dW[e] = A_e^T @ B_e`` over the rows of expert e (``_expert_wgrad_kernel``,
  Triton too): ``d[Wg | Wu] = x^T @ [dg | du]`` and ``dWd = h^T @ dy``.

The per-expert weights come in as separate tensors (separate optimizer parameters); they are stacked
with ``torch.stack`` / ``torch.cat`` outside the autograd Function, so autograd splits the stacked
gradient back into one gradient per tensor. Experts without rows get zero gradients, not None.

Saved for backward: x, the layout, the fp32 pre-activations ``[g | u]`` [R, 2F] and the stacked
weights (h is recomputed from g and u). Gradients flowing between the GEMMs are rounded to x.dtype
(as torch autograd does); every GEMM accumulates in fp32.

Under ``TRITON_INTERPRET=1`` (CPU) the variable must be set before ``moesim.kernels.grouped_gemm``
and this module are imported (``@triton.jit`` reads it at decoration time). Otherwise the tensors
must be on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from moesim.kernels.grouped_gemm import (
    _INTERP_MAX_BLOCK_N,
    _SUPPORTED_DTYPES,
    _check_block,
    _check_options,
    _default_block,
    _grouped_gemm_slots,
    _interpreting,
    align_by_expert,
    dot_meta,
)


@triton.jit
def _expert_wgrad_kernel(
    a_ptr, b_ptr, out_ptr, sorted_row_ptr, expert_block_start_ptr,
    num_rows, P, Q,
    stride_am, stride_ap, stride_bm, stride_bq, stride_oe, stride_op, stride_oq,
    UPCAST_TO_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """out[e, p-block, q-block] = a[rows of e]^T @ b[rows of e]: a per-expert GEMM over a variable M.

    a: [R, P]; b: [R, Q]; out: [E, P, Q]; sorted_row: [num_blocks * BLOCK_M] (align_by_expert with
    one slot per row, padding = num_rows); expert_block_start: [E + 1], expert e owns M-blocks
    [start[e], start[e + 1]). An expert without blocks stores zeros.
    """
    expert = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    pid_q = tl.program_id(2)
    first_block = tl.load(expert_block_start_ptr + expert)
    end_block = tl.load(expert_block_start_ptr + expert + 1)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    p_mask = offs_p < P
    q_mask = offs_q < Q
    acc = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    for blk in range(first_block, end_block):
        # int64 offsets: R * P can exceed 2**31 for real sizes.
        rows = tl.load(sorted_row_ptr + blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        valid = rows < num_rows  # padding rows are masked to 0 and add nothing
        # a is read transposed ([BLOCK_P, BLOCK_M]) through its strides: no copy of a^T.
        a = tl.load(a_ptr + rows[None, :] * stride_am + offs_p[:, None] * stride_ap,
                    mask=valid[None, :] & p_mask[:, None], other=0.0)
        b = tl.load(b_ptr + rows[:, None] * stride_bm + offs_q[None, :] * stride_bq,
                    mask=valid[:, None] & q_mask[None, :], other=0.0)
        if UPCAST_TO_FP32:
            # The interpreter's bf16 tl.dot multiplies raw bit patterns (triton#11584).
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    out_ptrs = out_ptr + expert * stride_oe + offs_p[:, None] * stride_op + offs_q[None, :] * stride_oq
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & q_mask[None, :])


_autotuned_wgrad = None


def _get_autotuned_wgrad():
    """The autotuned wgrad kernel, built on first GPU use only (never under the interpreter).

    Each config overwrites all of out, so the autotuner's repeated launches are harmless.
    """
    global _autotuned_wgrad
    if _autotuned_wgrad is None:
        configs = [
            triton.Config({"BLOCK_P": bp, "BLOCK_Q": bq}, num_warps=nw, num_stages=ns)
            for bp in (32, 64, 128) for bq in (64, 128) for nw in (4, 8) for ns in (3, 4)
        ]
        _autotuned_wgrad = triton.autotune(configs=configs, key=["P", "Q", "BLOCK_M"])(_expert_wgrad_kernel)
    return _autotuned_wgrad


def _expert_wgrad(a: torch.Tensor, b: torch.Tensor, layout: tuple, num_experts: int, block_m: int,
                  block_n: int | None, block_k: int | None, input_precision: str) -> torch.Tensor:
    """Per-expert ``a[rows of e]^T @ b[rows of e]`` as fp32 [E, P, Q] (zeros for an expert without rows).

    a: [R, P], b: [R, Q] of one dtype; layout: align_by_expert(...) of the R rows (one slot each).
    Fixed block_k / block_n tile P / Q; both None = autotuned on a GPU (interpreter: one block up to 128).
    """
    sorted_rows, block_expert, _ = layout
    num_rows, P = a.shape
    Q = b.shape[1]
    out = torch.empty(num_experts, P, Q, dtype=torch.float32, device=a.device)
    # M-blocks are grouped by expert in increasing order (align_by_expert): prefix sums locate each group.
    counts = torch.bincount(block_expert.long(), minlength=num_experts)
    expert_block_start = torch.zeros(num_experts + 1, dtype=torch.int32, device=a.device)
    expert_block_start[1:] = torch.cumsum(counts, 0)
    interpreting = _interpreting()
    args = (a, b, out, sorted_rows, expert_block_start, num_rows, P, Q,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), out.stride(2))
    meta = dot_meta(a.dtype, interpreting, input_precision, block_m)
    if interpreting or block_n is not None or block_k is not None:
        bp = block_k if block_k is not None else _default_block(P, _INTERP_MAX_BLOCK_N)
        bq = block_n if block_n is not None else _default_block(Q, _INTERP_MAX_BLOCK_N)
        _expert_wgrad_kernel[(num_experts, triton.cdiv(P, bp), triton.cdiv(Q, bq))](
            *args, **meta, BLOCK_P=bp, BLOCK_Q=bq)
    else:
        grid = lambda cfg: (num_experts, triton.cdiv(P, cfg["BLOCK_P"]), triton.cdiv(Q, cfg["BLOCK_Q"]))  # noqa: E731
        _get_autotuned_wgrad()[grid](*args, **meta)
    return out


def _silu_and_grad(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(g) and its derivative sigmoid(g) * (1 + g * (1 - sigmoid(g))), both of g's shape."""
    s = torch.sigmoid(g)
    return g * s, s * (1 + g * (1 - s))


class _ExpertFFN(torch.autograd.Function):
    """Autograd over the stacked weights; ``expert_ffn`` does the stacking and the checks."""

    @staticmethod
    def forward(ctx, x, expert_of_row, w_gu, w_down, block_m, block_n, block_k, input_precision):
        # x [R, H]; expert_of_row [R]; w_gu [E, H, 2F] = [Wg | Wu]; w_down [E, F, H].
        num_experts, hidden, two_f = w_gu.shape
        ctx.shapes = (num_experts, hidden, two_f // 2)
        ctx.opts = (block_m, block_n, block_k, input_precision)
        ctx.empty = x.shape[0] == 0 or hidden == 0 or two_f == 0
        if ctx.empty:
            # Nothing to launch (a grid dim of 0); y is 0 and every gradient is 0 in backward.
            return torch.zeros(x.shape[0], hidden, dtype=x.dtype, device=x.device)
        layout = align_by_expert(expert_of_row[:, None], num_experts, block_m)
        gu = _grouped_gemm_slots(x, w_gu, layout, 1, None, *ctx.opts)  # [R, 2F] fp32
        g, u = gu.chunk(2, dim=1)
        h = (torch.nn.functional.silu(g) * u).to(x.dtype)  # rounded once, as swiglu_expert_mlp does
        y = _grouped_gemm_slots(h, w_down, layout, 1, None, *ctx.opts)
        ctx.num_blocks = layout[2]
        ctx.save_for_backward(x, layout[0], layout[1], gu, w_gu, w_down)
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the Triton launches are opaque to a second backward
    def backward(ctx, dy):
        num_experts, hidden, ffn = ctx.shapes
        need_x, _, need_gu, need_down = ctx.needs_input_grad[:4]
        if ctx.empty:
            dx = torch.zeros_like(dy) if need_x else None
            dw_gu = dy.new_zeros(num_experts, hidden, 2 * ffn) if need_gu else None
            dw_down = dy.new_zeros(num_experts, ffn, hidden) if need_down else None
            return dx, None, dw_gu, dw_down, None, None, None, None
        x, sorted_rows, block_expert, gu, w_gu, w_down = ctx.saved_tensors
        layout = (sorted_rows, block_expert, ctx.num_blocks)
        opts = ctx.opts
        dtype = x.dtype
        dy = dy.to(dtype)  # the kernels need both operands of one dtype
        g, u = gu.chunk(2, dim=1)
        silu_g, dsilu_g = _silu_and_grad(g)

        dx = dw_gu = dw_down = None
        if need_down:
            h = (silu_g * u).to(dtype)  # recomputed: cheaper than saving it
            dw_down = _expert_wgrad(h, dy, layout, num_experts, *opts).to(w_down.dtype)
        if need_x or need_gu:
            # dh = dy @ Wd^T: Wd^T [E, H, F] is a strided view.
            dh = _grouped_gemm_slots(dy, w_down.transpose(1, 2), layout, 1, None, *opts)  # [R, F] fp32
            dgu = torch.cat([dh * u * dsilu_g, dh * silu_g], dim=1).to(dtype)  # [R, 2F] = [dg | du]
            if need_x:
                dx = _grouped_gemm_slots(dgu, w_gu.transpose(1, 2), layout, 1, None, *opts).to(dtype)
            if need_gu:
                dw_gu = _expert_wgrad(x, dgu, layout, num_experts, *opts).to(w_gu.dtype)
        return dx, None, dw_gu, dw_down, None, None, None, None


def expert_ffn(x: torch.Tensor, expert_of_row: torch.Tensor, w_gate: Sequence[torch.Tensor],
               w_up: Sequence[torch.Tensor], w_down: Sequence[torch.Tensor], block_m: int = 64, *,
               block_n: int | None = None, block_k: int | None = None,
               input_precision: str = "tf32") -> torch.Tensor:
    """SwiGLU expert FFN, one expert per row, differentiable in x and every weight.

    x: [R, H] (rows in any order); expert_of_row: [R] integer in [0, E); w_gate[e], w_up[e]: [H, F];
    w_down[e]: [F, H] (E tensors each, one dtype with x: fp32, fp16 or bf16; all on x's device).
    Returns y [R, H] in x.dtype with ``y[r] = (silu(x[r] @ Wg[e]) * (x[r] @ Wu[e])) @ Wd[e]``,
    e = expert_of_row[r]; no gate weighting. block_m: the alignment (power of 2 >= 16);
    block_n / block_k / input_precision: as in ``grouped_gemm`` (both blocks None = autotuned on a GPU).
    """
    _check_block("block_m", block_m)
    _check_options(block_m, block_n, block_k, input_precision)
    num_experts = len(w_gate)
    if num_experts == 0 or len(w_up) != num_experts or len(w_down) != num_experts:
        raise ValueError(f"need E >= 1 tensors in each of w_gate, w_up, w_down, got "
                         f"{len(w_gate)}, {len(w_up)}, {len(w_down)}")
    if x.dim() != 2:
        raise ValueError(f"x must be [R, H], got shape {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be fp32, fp16 or bf16, got {x.dtype}")
    rows, hidden = x.shape
    ffn = w_gate[0].shape[-1] if w_gate[0].dim() == 2 else -1
    for name, ws, shape in (("w_gate", w_gate, (hidden, ffn)), ("w_up", w_up, (hidden, ffn)),
                            ("w_down", w_down, (ffn, hidden))):
        for e, w in enumerate(ws):
            if tuple(w.shape) != shape or w.dtype != x.dtype or w.device != x.device:
                raise ValueError(f"{name}[{e}] must be {shape} {x.dtype} on {x.device} (x is [R, H] = "
                                 f"{tuple(x.shape)}), got {tuple(w.shape)} {w.dtype} on {w.device}")
    if expert_of_row.shape != (rows,) or expert_of_row.device != x.device:
        raise ValueError(f"expert_of_row must be [R={rows}] on {x.device}, got {tuple(expert_of_row.shape)} "
                         f"on {expert_of_row.device}")
    if not _interpreting() and x.device.type != "cuda":
        # Checked here too so that an empty batch fails the same way as a full one.
        raise RuntimeError("expert_ffn needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "moesim.kernels.grouped_gemm is imported")
    # Stacked outside the Function: autograd splits the stacked gradients back per tensor.
    w_gu = torch.cat([torch.stack(list(w_gate)), torch.stack(list(w_up))], dim=2)  # [E, H, 2F]
    w_dn = torch.stack(list(w_down))  # [E, F, H]
    return _ExpertFFN.apply(x, expert_of_row, w_gu, w_dn, block_m, block_n, block_k, input_precision)


def launch_options(x: torch.Tensor) -> dict:
    """``block_m`` and ``input_precision`` as ``moesim execute`` calls ``expert_ffn`` on x's device and dtype, and
    as ``moesim calibrate`` times it: 16-row groups in the CPU interpreter (each program is Python there), 64 on a
    GPU; exact fp32 products for fp32 inputs, TF32 otherwise (ignored by 16-bit inputs' tensor-core dots)."""
    return {"block_m": 16 if x.device.type == "cpu" else 64,
            "input_precision": "ieee" if x.dtype == torch.float32 else "tf32"}
