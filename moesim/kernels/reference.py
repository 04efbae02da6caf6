"""Naive torch references for the expert kernels; the test oracle for ``grouped_gemm``.

Everything is computed in fp32 and cast back to the input dtype once at the end, so the
reference carries no rounding of intermediate results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ffn(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One expert's SwiGLU FFN ``(silu(x @ w_gate) * (x @ w_up)) @ w_down`` in x's dtype: what a CPU rank of
    ``moesim execute`` runs per expert, and what ``moesim calibrate`` times there.

    x: [R, H]; w_gate, w_up: [H, F]; w_down: [F, H]. Returns [R, H].
    """
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


def grouped_gemm_ref(x: torch.Tensor, w: torch.Tensor, expert_ids: torch.Tensor,
                     gate: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token sum over the top-k choices of ``gate * (x @ w[expert])``.

    x: [T, K]; w: [E, K, N]; expert_ids: [T, k] integer in [0, E); gate: [T, k] or None
    (None means weight 1). Returns [T, N] in ``x.dtype``:
    ``out[t] = sum_j gate[t, j] * x[t] @ w[expert_ids[t, j]]``.
    """
    T, k = expert_ids.shape
    xf = x.float()
    out = torch.zeros(T, w.shape[2], dtype=torch.float32, device=x.device)
    for j in range(k):
        y = _per_expert_matmul(xf, w, expert_ids[:, j])
        if gate is not None:
            y = y * gate[:, j].float().unsqueeze(1)
        out += y
    return out.to(x.dtype)


def swiglu_expert_mlp_ref(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                          w_down: torch.Tensor, expert_ids: torch.Tensor,
                          gate: torch.Tensor) -> torch.Tensor:
    """MoE SwiGLU MLP: per (token, choice) ``(silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e]``.

    x: [T, H]; w_gate, w_up: [E, H, F]; w_down: [E, F, H]; expert_ids, gate: [T, k].
    Returns [T, H] in ``x.dtype``: the gate-weighted sum over the k choices.
    """
    T, k = expert_ids.shape
    xf = x.float()
    out = torch.zeros(T, w_down.shape[2], dtype=torch.float32, device=x.device)
    for j in range(k):
        e = expert_ids[:, j]
        h = torch.nn.functional.silu(_per_expert_matmul(xf, w_gate, e)) * _per_expert_matmul(xf, w_up, e)
        out += _per_expert_matmul(h, w_down, e) * gate[:, j].float().unsqueeze(1)
    return out.to(x.dtype)


def _per_expert_matmul(xf: torch.Tensor, w: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Row t of the result is ``xf[t] @ w[experts[t]]`` in fp32.

    xf: [T, K] fp32; w: [E, K, N]; experts: [T]. Returns [T, N] fp32. A loop over experts
    (not a gathered [T, K, N] weight) keeps memory at one expert's weight at a time.
    """
    out = torch.zeros(xf.shape[0], w.shape[2], dtype=torch.float32, device=xf.device)
    for e in torch.unique(experts).tolist():
        rows = (experts == e).nonzero(as_tuple=True)[0]
        out.index_add_(0, rows, xf[rows] @ w[e].float())
    return out
