"""Replaying a recorded routing trace on a simulated run whose shape differs from the recording.

The rule (docs/traces.md has a worked example). A trace holds counts[snapshot, layer, micro_batch, src_rank,
expert] with S snapshots, L_t layers, M_t micro-batches, R_t source ranks and E_t experts. For simulated step s,
layer l, micro-batch m and source rank i the recorded row is counts[s % S, l % L_t, m % M_t, i % R_t, :]; then

1. experts: E == E_t keeps the row; E == g * E_t splits each recorded count evenly and at random over the g
   consecutive simulated experts e*g .. e*g+g-1 (a multinomial with equal probabilities, so counts stay whole and
   sum exactly); E_t == g * E sums each group of g consecutive recorded experts into one; any other E is an error;
2. row total: a row whose total R differs from the target A (tokens routed per source rank x top_k in the
   simulation) is redrawn as multinomial(A, row / R); a row that already sums to A is copied exactly; an all-zero
   row becomes multinomial(A, uniform).

Merging is applied before the redraw and splitting after it (fewest random draws; the law of the result is the
same in any order). Every draw comes from the Generator passed in, in a fixed order, so the output is a pure
function of (trace, arguments, rng state). The top-k cap (an expert gets at most one assignment per token) is
the recording's: merged experts, or a simulated top_k different from the trace's, may exceed it.

No overflow anywhere: RoutingTrace holds at most MAX_TRACE_CELLS counts of at most MAX_COUNT (int32 max) each, so
every int64 sum here (row totals, merged experts) stays below 2**61; and every output row sums to A <= int32 max,
so no single load can wrap in the int32 result.
"""

from __future__ import annotations

import numpy as np

from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace

_INT32_MAX = int(np.iinfo(np.int32).max)


def replay_loads(trace: RoutingTrace, step: int, num_micro_batches: int, num_layers: int, num_sources: int,
                 num_experts: int, assignments_per_source: int, rng: np.random.Generator) -> np.ndarray:
    """Loads of one simulated step taken from a trace, by the rule in the module docstring.

    Parameters:
        trace: counts [S, L_t, M_t, R_t, E_t] (non-negative integers).
        step: simulated step index (>= 0); uses snapshot step % S.
        num_micro_batches (M), num_layers (L), num_sources (R), num_experts (E): the simulated shape.
            E must be a multiple or a divisor of E_t.
        assignments_per_source (A): (token, expert) assignments each source rank routes per micro-batch and
            layer, i.e. tokens per rank x top_k.
        rng: the only source of randomness (used when E > E_t or when a recorded row does not sum to A).

    Returns:
        loads: int32 [M, L, R, E]; loads[m, l, i].sum() == A for every (m, l, i).
    """
    _check_shape(trace, step, num_micro_batches, num_layers, num_sources, num_experts, assignments_per_source)
    mode, group = _expert_mapping(trace.num_experts, num_experts)
    snapshot = trace.counts[step % trace.counts.shape[0]]  # [L_t, M_t, R_t, E_t]
    index = np.ix_(np.arange(num_layers) % trace.num_layers, np.arange(num_micro_batches) % trace.num_micro_batches,
                   np.arange(num_sources) % trace.num_sources)
    rows = snapshot[index].transpose(1, 0, 2, 3).astype(np.int64)  # [M, L, R, E_t]
    if mode == "merge":
        rows = rows.reshape(*rows.shape[:-1], num_experts, group).sum(axis=-1)  # [M, L, R, E]
    rows = _scale_rows(rows, assignments_per_source, rng)
    if mode == "split":
        rows = rng.multinomial(rows, np.full(group, 1.0 / group))  # [M, L, R, E_t, g]
        rows = rows.reshape(*rows.shape[:-2], num_experts)  # expert e*g + j holds part j of recorded expert e
    return rows.astype(np.int32)


def trace_expert_shares(trace: RoutingTrace, num_layers: int, num_experts: int) -> np.ndarray:
    """Mean share of each simulated expert per simulated layer, over every row of the trace.

    Parameters:
        trace: counts [S, L_t, M_t, R_t, E_t].
        num_layers (L), num_experts (E): the simulated shape; layer l maps to trace layer l % L_t, and experts
            split or merge as in replay_loads (a split expert gets 1/g of its recorded expert's share).

    Returns:
        shares: float64 [L, E], each row summing to 1: the mean over snapshots, micro-batches and source ranks of
        row / row.sum() (all-zero rows count as uniform), i.e. the expected share of replay_loads' rows.
    """
    _check_shape(trace, 0, 1, num_layers, 1, num_experts, 0)
    mode, group = _expert_mapping(trace.num_experts, num_experts)
    used = min(num_layers, trace.num_layers)
    per_layer = np.stack([_mean_row_share(trace.counts[:, layer]) for layer in range(used)])  # [used, E_t]
    if mode == "merge":
        per_layer = per_layer.reshape(used, num_experts, group).sum(axis=-1)
    elif mode == "split":
        per_layer = np.repeat(per_layer, group, axis=1) / group
    return per_layer[np.arange(num_layers) % trace.num_layers]


def _mean_row_share(counts: np.ndarray) -> np.ndarray:
    """[E_t] mean of row / row.sum() over all rows of counts [..., E_t]; an all-zero row counts as uniform."""
    rows = counts.reshape(-1, counts.shape[-1])
    totals = rows.sum(axis=1, dtype=np.int64)
    live = totals > 0
    summed = (rows[live] / totals[live, None]).sum(axis=0) + np.count_nonzero(~live) / rows.shape[1]
    return summed / rows.shape[0]


def _scale_rows(rows: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """rows [..., E] with every row redrawn as multinomial(target, row / row.sum()) unless it sums to target."""
    totals = rows.sum(axis=-1)
    redraw = totals != target
    if not redraw.any():
        return rows
    picked, picked_totals = rows[redraw].astype(np.float64), totals[redraw][:, None]
    shares = np.where(picked_totals > 0, picked / np.maximum(picked_totals, 1), 1.0 / rows.shape[-1])
    out = rows.copy()
    out[redraw] = rng.multinomial(target, shares)
    return out


def _expert_mapping(trace_experts: int, num_experts: int) -> tuple[str, int]:
    """('keep' | 'split' | 'merge', group size g)."""
    if num_experts == trace_experts:
        return "keep", 1
    if num_experts > trace_experts and num_experts % trace_experts == 0:
        return "split", num_experts // trace_experts
    if num_experts < trace_experts and trace_experts % num_experts == 0:
        return "merge", trace_experts // num_experts
    raise SpecError("routing.trace", num_experts,
                    f"a number of experts that divides or is divided by the trace's E_trace = {trace_experts}")


def _check_shape(trace: RoutingTrace, step: int, num_micro_batches: int, num_layers: int, num_sources: int,
                 num_experts: int, assignments_per_source: int) -> None:
    if trace.counts.size == 0:
        raise SpecError("routing.trace", trace.counts.shape,
                        "a trace with at least one snapshot, layer, micro-batch, source rank and expert")
    for name, value in (("num_micro_batches", num_micro_batches), ("num_layers", num_layers),
                        ("num_sources", num_sources), ("num_experts", num_experts)):
        if int(value) != value or value < 1:
            raise SpecError(name, value, "an integer >= 1")
    if int(step) != step or step < 0:
        raise SpecError("step", step, "an integer >= 0")
    if int(assignments_per_source) != assignments_per_source or not 0 <= assignments_per_source <= _INT32_MAX:
        raise SpecError("assignments_per_source", assignments_per_source, f"an integer in [0, {_INT32_MAX}]")
