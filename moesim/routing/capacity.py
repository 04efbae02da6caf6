"""What the gate keeps: capacity, token dropping and padding at count level (../shared/specs/placement.md §1).

Shapes: loads [..., S, E] = assignments each of the S sources of one expert-parallel group routes to each of
the group's E experts; the leading axes are independent groups (micro-batches, groups). Nothing here tracks
individual tokens: which choice rank is dropped is modelled from counts (see `_dropped_first`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.spec.routing import CapacityScope, DropPolicy, GateKind, GateSpec


@dataclass(frozen=True)
class GateResult:
    sent: np.ndarray  # [..., S, E] rows each source sends to each expert: kept assignments (+ padding if padded)
    computed: np.ndarray  # [..., E] rows each expert computes (kept + padding)
    demand: np.ndarray  # [..., S, E] what the router asked for before capacity
    dropped: np.ndarray  # [...] assignments dropped
    dropped_first: np.ndarray  # [...] first-choice assignments dropped (expected count)
    first_choices: np.ndarray  # [...] first-choice assignments (= tokens routed)
    padding: np.ndarray  # [...] rows computed for nothing
    unrouted_tokens: np.ndarray  # [...] tokens that reach no expert (expert choice; estimate)


def capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float, min_capacity: int = 0) -> int:
    """capacity = ceil(k * T / E * CF), at least min_capacity."""
    return max(math.ceil(top_k * tokens / num_experts * capacity_factor - 1e-9), min_capacity)


def apply_gate(loads: np.ndarray, gate: GateSpec, tokens_per_source: int, top_k: int,
               rng: np.random.Generator) -> GateResult:
    loads = np.asarray(loads, dtype=np.int64)
    if gate.kind is GateKind.EXPERT_CHOICE:
        return _expert_choice(loads, gate, tokens_per_source)
    if gate.capacity_factor is None:  # dropless: nothing to split by choice rank; every token has one first choice
        zeros = np.zeros(loads.shape[:-2])
        tokens = np.full(loads.shape[:-2], float(tokens_per_source * loads.shape[-2]))
        return GateResult(loads, loads.sum(-2), loads, zeros, zeros, tokens, zeros, zeros)
    first = rng.binomial(loads, 1.0 / top_k)  # iid choice ranks: each assignment is a first choice w.p. 1/k
    num_sources, num_experts = loads.shape[-2:]
    if gate.scope is CapacityScope.PER_SOURCE:
        cap = _capacity_array(loads.max(-1), gate, tokens_per_source, top_k, num_experts)[..., None]  # [..., S, 1]
        kept = np.minimum(loads, cap)
        sent = np.broadcast_to(cap, loads.shape) if gate.pad_to_capacity else kept
        computed = sent.sum(-2)
    else:
        totals = loads.sum(-2)  # [..., E]
        cap = _capacity_array(totals.max(-1), gate, tokens_per_source * num_sources, top_k, num_experts)[..., None]
        kept = _share_out(loads, np.minimum(totals, cap))
        sent = kept  # first-come sources keep their tokens; padding stays at the expert (FastMoE sends no padding)
        computed = np.broadcast_to(cap, totals.shape) if gate.pad_to_capacity else kept.sum(-2)
    dropped = loads - kept
    return GateResult(np.ascontiguousarray(sent), np.ascontiguousarray(computed), loads,
                      dropped.sum((-2, -1)).astype(float), _dropped_first(loads, kept, first, gate).sum((-2, -1)),
                      first.sum((-2, -1)).astype(float), (computed.sum(-1) - kept.sum((-2, -1))).astype(float),
                      np.zeros(loads.shape[:-2]))


def _capacity_array(need: np.ndarray, gate: GateSpec, tokens: int, top_k: int, num_experts: int) -> np.ndarray:
    """Capacity per group (or per source): fixed for CF > 0; Tutel's adaptive rule for CF <= 0."""
    cf = gate.capacity_factor
    if cf > 0:
        return np.full(need.shape, capacity(tokens, top_k, num_experts, cf, gate.min_capacity))
    adaptive = np.maximum(need, gate.min_capacity)
    if cf == 0:
        return adaptive
    return np.minimum(adaptive, capacity(tokens, top_k, num_experts, -cf, gate.min_capacity))


def _share_out(loads: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Split each expert's kept total over its sources in proportion to what they sent (largest remainder,
    so the kept counts are integers that add up exactly to `keep`)."""
    totals = loads.sum(-2, keepdims=True)
    ideal = loads * (keep[..., None, :] / np.maximum(totals, 1))
    kept = np.floor(ideal).astype(np.int64)
    short = keep - kept.sum(-2)  # [..., E], each < S
    order = np.argsort(-(ideal - kept), axis=-2, kind="stable")
    rank = np.argsort(order, axis=-2, kind="stable")
    return kept + (rank < short[..., None, :]).astype(np.int64)


def _dropped_first(loads, kept, first, gate: GateSpec) -> np.ndarray:
    """Expected first choices among the dropped assignments of each (source, expert).
    probs, or position with first-choice priority: first choices are kept first; position: dropped
    assignments are a random subset, so first choices are dropped in proportion."""
    dropped = loads - kept
    if gate.drop_policy is DropPolicy.PROBS or gate.first_choice_priority:
        return np.maximum(first - kept, 0).astype(float)
    return dropped * (first / np.maximum(loads, 1))


def _expert_choice(loads: np.ndarray, gate: GateSpec, tokens: int) -> GateResult:
    """Each expert takes its top C = ceil(T*CF/E) tokens of each source: balanced by construction, nothing is
    dropped, but a token may get 0..E experts. Tokens with none are estimated as if experts chose
    independently: T * (1 - C/T)^E per source."""
    num_sources, num_experts = loads.shape[-2:]
    cap = min(capacity(tokens, 1, num_experts, gate.capacity_factor, gate.min_capacity), tokens)
    sent = np.full(loads.shape, cap, dtype=np.int64)
    zeros = np.zeros(loads.shape[:-2])
    unrouted = np.full(loads.shape[:-2], num_sources * tokens * (1 - cap / tokens) ** num_experts)
    return GateResult(sent, sent.sum(-2), loads, zeros, zeros, zeros, zeros, unrouted)
