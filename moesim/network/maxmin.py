"""Flow-level max-min fair bandwidth sharing (the fluid model of flow-level network simulators).

Flows are rows of a CSR incidence structure ``flow_links = (indptr [F+1], indices [nnz])``: row f crosses
the links ``indices[indptr[f]:indptr[f+1]]`` (each link at most once). A row with weight w stands for w
identical flows; they always get identical rates, so aggregation is exact, and each of the w flows consumes
its rate on every link the row crosses. All flows start at t = 0.

Between completion events the per-flow rates are the weighted max-min fair allocation (progressive filling);
at each event the finished flows leave and the allocation is recomputed.

Water-filling, vectorised. Progressive filling raises every unfrozen flow's rate together; a link saturates
when the level reaches its fair share ``s_l = remaining_l / unfrozen_flows_l``. Shares never decrease while
the level rises (a flow frozen elsewhere at a level m <= s_l leaves (r - m)/(n - 1) >= r/n). Hence a link
whose share is no larger than the smallest share on every flow it carries (a *local* minimum) saturates at
exactly its current share, whatever happens elsewhere; all such links, not only the global minimum, are frozen
in the same round (ties within a relative 1e-12). The global minimum always qualifies, so every round makes
progress; the number of rounds R is the depth of the bottleneck dependency chain, usually a handful, at most
the number of distinct saturation levels. A round is O(nnz_active + L) numpy work (bincount, reduceat), and
frozen rows are compacted away, so a full allocation costs O(R * (nnz + L)).

Time loop. With E completion events (distinct finishing times; rows finishing within a relative
``reallocation_rtol`` of the earliest finish leave together), the solve costs O(E * R * (nnz + L)). E is the
number of distinct finishing times, up to F when every row has different bytes, so callers should aggregate
identical flows into weighted rows. ``reallocation_rtol > 0`` (lazy reallocation) bounds E by about
log(t_last / t_first) / log(1 + rtol) + 1: a batch holds every row whose projected finish under the current
rates lies within (1 + rtol) of the earliest; each such row completes at its own projected time, and capacity
it frees before the batch's last finish stays idle until then. The schedule is therefore always feasible
(no link above capacity), makespan >= link_bound_s still holds, and only the work-conservation of the
reallocation is delayed, by at most a relative rtol of the elapsed time per event.
"""

from __future__ import annotations

import numpy as np

_TIE_RTOL = 1e-12

FlowLinks = tuple[np.ndarray, np.ndarray]


def max_min_rates_bytes_per_s(flow_links: FlowLinks, flow_weight: np.ndarray,
                              link_capacity_bytes_per_s: np.ndarray) -> np.ndarray:
    """Per-flow weighted max-min fair rates [F] (bytes/s); rows with no links get +inf."""
    indptr, indices, weight, capacity = _checked_structure(flow_links, flow_weight, link_capacity_bytes_per_s)
    nlinks = np.diff(indptr)
    rates = np.full(nlinks.size, np.inf)
    rows = np.flatnonzero(nlinks > 0)
    if rows.size:
        row_of = np.repeat(np.arange(rows.size), nlinks[rows])
        rates[rows] = _water_fill(row_of, indices, nlinks[rows], weight[rows], capacity)
    return rates


def flow_completion_times(flow_links: FlowLinks, flow_bytes: np.ndarray, flow_weight: np.ndarray,
                          link_capacity_bytes_per_s: np.ndarray, *,
                          reallocation_rtol: float = _TIE_RTOL) -> np.ndarray:
    """Completion time [F] (seconds) of every row under event-driven max-min fair sharing.

    Rows with zero bytes or zero links complete at 0. ``reallocation_rtol`` (>= 1e-12) groups completion
    events; the default only merges ties (exact model), larger values trade accuracy for speed (module doc).
    """
    indptr, indices, weight, capacity = _checked_structure(flow_links, flow_weight, link_capacity_bytes_per_s)
    nbytes = np.asarray(flow_bytes, dtype=np.float64)
    if nbytes.shape != weight.shape:
        raise ValueError(f"flow_bytes has shape {nbytes.shape}, expected ({weight.size},) like flow_weight")
    if not np.all(np.isfinite(nbytes) & (nbytes >= 0)):
        raise ValueError(f"flow_bytes must be finite and >= 0, got min {nbytes.min()}")
    if not reallocation_rtol >= _TIE_RTOL:
        raise ValueError(f"reallocation_rtol must be >= {_TIE_RTOL}, got {reallocation_rtol}")
    nlinks = np.diff(indptr)
    done_s = np.zeros(nbytes.size)
    live = (nlinks > 0) & (nbytes > 0)
    rows = np.flatnonzero(live)  # original ids of active rows
    if rows.size == 0:
        return done_s
    keep_nnz = np.repeat(live, nlinks)
    link_of = indices[keep_nnz]
    counts = nlinks[rows]
    row_of = np.repeat(np.arange(rows.size), counts)
    left_bytes = nbytes[rows]
    w = weight[rows]
    now_s = 0.0
    while rows.size:
        rate = _water_fill(row_of, link_of, counts, w, capacity)
        finish_s = now_s + left_bytes / rate
        cutoff_s = finish_s.min() * (1.0 + reallocation_rtol)
        ends = finish_s <= cutoff_s
        done_s[rows[ends]] = finish_s[ends]
        step_end_s = finish_s[ends].max()
        stay = ~ends
        left_bytes = left_bytes[stay] - rate[stay] * (step_end_s - now_s)
        now_s = step_end_s
        rows, counts, w = rows[stay], counts[stay], w[stay]
        keep_nnz = stay[row_of]
        link_of = link_of[keep_nnz]
        row_of = (np.cumsum(stay) - 1)[row_of[keep_nnz]]
    return done_s


def makespan_s(flow_links: FlowLinks, flow_bytes: np.ndarray, flow_weight: np.ndarray,
               link_capacity_bytes_per_s: np.ndarray, *, reallocation_rtol: float = _TIE_RTOL) -> float:
    """Time at which the last flow completes (0.0 when there are no flows)."""
    t = flow_completion_times(flow_links, flow_bytes, flow_weight, link_capacity_bytes_per_s,
                              reallocation_rtol=reallocation_rtol)
    return float(t.max()) if t.size else 0.0


def link_bound_s(flow_links: FlowLinks, flow_bytes: np.ndarray, flow_weight: np.ndarray,
                 link_capacity_bytes_per_s: np.ndarray) -> float:
    """max over links of (weighted bytes crossing it) / capacity: a lower bound on any schedule's makespan."""
    indptr, indices, weight, capacity = _checked_structure(flow_links, flow_weight, link_capacity_bytes_per_s)
    if indices.size == 0:
        return 0.0
    row_bytes = weight * np.asarray(flow_bytes, dtype=np.float64)
    load_bytes = np.bincount(indices, weights=np.repeat(row_bytes, np.diff(indptr)), minlength=capacity.size)
    return float((load_bytes / capacity).max())


def _water_fill(row_of: np.ndarray, link_of: np.ndarray, counts: np.ndarray, weight: np.ndarray,
                capacity: np.ndarray) -> np.ndarray:
    """Max-min rates of rows 0..n-1 (each with >= 1 link; row_of sorted, ``counts`` links per row)."""
    n_links = capacity.size
    rate = np.empty(counts.size)
    ids = np.arange(counts.size)  # which rows are still unfrozen
    remaining = capacity.copy()
    w = weight.astype(np.float64)
    users = np.bincount(link_of, weights=w[row_of], minlength=n_links)
    while ids.size:
        with np.errstate(divide="ignore", invalid="ignore"):
            share = remaining / users  # only read where users > 0
        s_nnz = share[link_of]
        starts = np.cumsum(counts) - counts
        row_min = np.minimum.reduceat(s_nnz, starts)
        worse = s_nnz > row_min[row_of] * (1.0 + _TIE_RTOL)  # this link is not the row's bottleneck
        local_min = np.bincount(link_of[worse], minlength=n_links) == 0
        froze = np.logical_or.reduceat(local_min[link_of], starts)
        rate[ids[froze]] = row_min[froze]
        froze_nnz = froze[row_of]
        froze_links = link_of[froze_nnz]
        froze_row_of = row_of[froze_nnz]
        remaining = np.maximum(remaining - np.bincount(froze_links, weights=(w * row_min)[froze_row_of],
                                                       minlength=n_links), 0.0)
        users -= np.bincount(froze_links, weights=w[froze_row_of], minlength=n_links)
        stay = ~froze
        keep_nnz = ~froze_nnz
        link_of = link_of[keep_nnz]
        row_of = (np.cumsum(stay) - 1)[row_of[keep_nnz]]
        ids, counts, w = ids[stay], counts[stay], w[stay]
    if not np.all(rate > 0):
        raise ArithmeticError(f"max-min allocation produced a zero rate (min {rate.min()}); capacities too "
                              "disparate for float64?")
    return rate


def _checked_structure(flow_links: FlowLinks, flow_weight: np.ndarray, link_capacity_bytes_per_s: np.ndarray):
    indptr, indices = (np.asarray(a) for a in flow_links)
    weight = np.asarray(flow_weight)
    capacity = np.asarray(link_capacity_bytes_per_s, dtype=np.float64)
    if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError(f"flow_links indptr must be 1-D, start at 0 and be non-decreasing, got {indptr[:8]}...")
    if indices.ndim != 1 or indices.size != indptr[-1]:
        raise ValueError(f"flow_links indices has {indices.size} entries, indptr says {indptr[-1]}")
    if weight.shape != (indptr.size - 1,):
        raise ValueError(f"flow_weight has shape {weight.shape}, expected ({indptr.size - 1},)")
    if weight.size and not (np.all(weight >= 1) and np.all(weight == np.round(weight))):
        raise ValueError(f"flow_weight must be positive integers, got min {weight.min()}")
    if capacity.ndim != 1 or not np.all(np.isfinite(capacity) & (capacity > 0)):
        raise ValueError("link_capacity_bytes_per_s must be a 1-D array of finite values > 0")
    if indices.size and (indices.min() < 0 or indices.max() >= capacity.size):
        raise ValueError(f"link ids must lie in [0, {capacity.size}), got [{indices.min()}, {indices.max()}]")
    return indptr.astype(np.int64), indices.astype(np.intp), weight.astype(np.float64), capacity
