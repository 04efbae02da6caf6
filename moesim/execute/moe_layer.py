"""One MoE layer (router, top-k, SwiGLU experts) across expert-parallel ranks, and its single-process reference.

Layout: ``ep`` ranks, ``E`` experts, ``E // ep`` consecutive experts per rank (expert ``e`` lives on rank
``e // (E // ep)``). Every rank holds its own tokens ``x [T_r, h]`` and a replica of the router weight ``[h, E]``.

Forward on each rank:

1. router: ``probs = softmax(x @ w_router)``; top-k expert ids (or ids forced by the caller) and their
   probabilities ``gate = probs.gather(1, ids)`` (not renormalised);
2. dispatch: the ``T_r * k`` (token, choice) slots are sorted by expert; the per-expert counts are exchanged
   with an ``all_to_all_single`` of ``E`` integers, then the rows with an ``all_to_all_single`` whose
   ``input_split_sizes`` / ``output_split_sizes`` are the per-destination / per-source counts (uneven);
3. the local experts' SwiGLU FFN on the received rows (a loop over local experts);
4. combine: the reverse ``all_to_all_single`` (splits swapped), un-sort, gate-weighted sum over the k choices.

Backward is autograd: :class:`AllToAllSingle` is a ``torch.autograd.Function`` whose backward is the reverse
exchange. Expert weight gradients are local to their rank; the router weight is replicated, so its gradient
is a partial sum per rank that the caller all-reduces (as data parallelism would), see :func:`allreduce_grad`.

gloo on CPU supports uneven splits in ``all_to_all_single`` (torch 2.13; the list form ``all_to_all`` rejects
uneven sizes), so that is the one exchange primitive used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moesim.kernels.reference import swiglu_expert_mlp_ref, swiglu_ffn


class AllToAllSingle(torch.autograd.Function):
    """``all_to_all_single`` on dim 0 with uneven splits; backward sends the gradients back (splits swapped)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, output_splits: list[int], input_splits: list[int], group=None):
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        return _exchange(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_in = _exchange(grad_out, ctx.input_splits, ctx.output_splits, ctx.group)
        return grad_in, None, None, None


def _exchange(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
    if x.shape[0] != sum(input_splits):
        raise ValueError(f"input has {x.shape[0]} rows, input_split_sizes sum to {sum(input_splits)}")
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=list(output_splits),
                           input_split_sizes=list(input_splits), group=group)
    return out


def all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group=None) -> torch.Tensor:
    """Differentiable uneven all-to-all of the rows of ``x``."""
    return AllToAllSingle.apply(x, list(output_splits), list(input_splits), group)


def route(x: torch.Tensor, w_router: torch.Tensor, top_k: int,
          expert_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Router: ``(expert_ids [T, k] int64, gate [T, k])``; ``gate`` is the softmax probability of each choice.

    ``expert_ids`` forces the choices (e.g. skewed routing in tests); the gate stays differentiable in
    ``w_router`` either way.
    """
    probs = torch.softmax(x @ w_router, dim=-1)
    if expert_ids is None:
        expert_ids = torch.topk(probs, top_k, dim=-1).indices
    elif expert_ids.shape != (x.shape[0], top_k):
        raise ValueError(f"expert_ids has shape {tuple(expert_ids.shape)}, expected ({x.shape[0]}, {top_k})")
    expert_ids = expert_ids.long()
    return expert_ids, probs.gather(1, expert_ids)


@dataclass(frozen=True)
class DispatchInfo:
    """What one rank's dispatch sent and received; ``recv_counts[s, j]``: rows from rank ``s`` for local expert j."""

    send_splits: list[int]
    recv_splits: list[int]
    recv_counts: torch.Tensor


def moe_layer_ep(x: torch.Tensor, w_router: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                 w_down: torch.Tensor, top_k: int, num_experts: int, expert_ids: torch.Tensor | None = None,
                 group=None) -> tuple[torch.Tensor, DispatchInfo]:
    """This rank's share of one expert-parallel MoE layer; returns ``(y [T, h], DispatchInfo)``.

    x: [T, h] this rank's tokens; w_router: [h, E] (replicated); w_gate, w_up: [E/ep, h, f] and
    w_down: [E/ep, f, h], this rank's experts; expert_ids: optional forced [T, k] global expert ids.
    """
    ep = dist.get_world_size(group)
    if num_experts % ep:
        raise ValueError(f"{num_experts} experts do not divide over {ep} ranks")
    e_local = num_experts // ep
    if w_gate.shape[0] != e_local or w_up.shape[0] != e_local or w_down.shape[0] != e_local:
        raise ValueError(f"expected {e_local} local experts, got {w_gate.shape[0]}, {w_up.shape[0]}, {w_down.shape[0]}")
    T, h = x.shape
    ids, gate = route(x, w_router, top_k, expert_ids)

    # dispatch: slots (t * k + j) sorted by expert, so rows for one destination are contiguous
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=num_experts)
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts, group=group)  # equal splits: e_local counts per rank
    recv_counts = recv_counts.view(ep, e_local)
    send_splits = counts.view(ep, e_local).sum(1).tolist()
    recv_splits = recv_counts.sum(1).tolist()
    sent = x[order // top_k]
    received = all_to_all(sent, recv_splits, send_splits, group)

    # local experts; received rows are grouped by source rank, then by local expert
    local_ids = torch.repeat_interleave(torch.arange(e_local).repeat(ep), recv_counts.reshape(-1))
    expert_out = received.new_zeros(received.shape[0], w_down.shape[2])
    for j in range(e_local):  # no skip of empty experts: the graph must reach the dispatch on every rank, or
        rows = (local_ids == j).nonzero(as_tuple=True)[0]  # its backward exchange is missing there and ranks hang
        expert_out = expert_out.index_add(0, rows, swiglu_ffn(received[rows], w_gate[j], w_up[j], w_down[j]))

    # combine: reverse exchange, un-sort, gate-weighted sum over the k choices
    returned = all_to_all(expert_out, send_splits, recv_splits, group)
    slots = returned[torch.argsort(order)]  # row t * k + j again
    y = (slots.view(T, top_k, -1) * gate.unsqueeze(-1)).sum(1)
    return y, DispatchInfo(send_splits, recv_splits, recv_counts)


def moe_layer_reference(x: torch.Tensor, w_router: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                        w_down: torch.Tensor, top_k: int, expert_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The same layer on one process: all tokens x [T, h], all experts w_gate, w_up [E, h, f], w_down [E, f, h]."""
    ids, gate = route(x, w_router, top_k, expert_ids)
    return swiglu_expert_mlp_ref(x, w_gate, w_up, w_down, ids, gate)


def allreduce_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum a replicated parameter's gradient over the ranks (in place) and return it."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t
