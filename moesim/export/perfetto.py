"""Simulator records -> Chrome Trace Event Format (JSON), which ui.perfetto.dev and chrome://tracing load.

Layout: one process per node ("node N", pid = rank // ranks_per_node), one thread per rank ("rank R",
tid = rank, sorted by rank). Every record becomes one complete event ("ph": "X"): name = op, cat = phase,
ts/dur in microseconds; "args" holds micro_batch, layer, bytes, rows and wait_us (the part of a collective
spent waiting for the group's last member; from the optional `wait_s` column) where they apply.
Steps are laid end to end on one time axis: record times are relative to their step's start, and step s is
shifted by the summed durations (max end_s over all ranks) of the kept steps before it.

Zero-duration records are dropped, except dispatch/combine: a zero-length all-to-all is the rank that
arrived last at the rendezvous, which is worth seeing when reading skew. Records with negative duration
are always dropped.

Built column-wise with numpy; the per-event dicts come from one list comprehension over Python lists, so
10^6 records take seconds, not minutes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.io.results import write_json_atomic
from moesim.sim.records import OpKind
from moesim.spec.errors import SpecError

_US_PER_S = 1e6
_KEEP_ZERO_DURATION = (OpKind.DISPATCH.value, OpKind.COMBINE.value)


def _as_str_array(col: pd.Series) -> np.ndarray:
    """A categorical/str/Enum column as an object array of plain strings (Enum members -> their value)."""
    cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
    names = np.array([c.value if isinstance(c, Enum) else str(c) for c in cat.cat.categories] + [""],
                     dtype=object)
    return names[cat.cat.codes.to_numpy()]  # code -1 (missing) -> ""


def _step_offsets_s(df: pd.DataFrame) -> pd.Series:
    """Offset (s) of every kept step on the shared axis: the summed durations of the steps before it."""
    duration_s = df.groupby("step", sort=True, observed=True)["end_s"].max().clip(lower=0.0)
    return duration_s.cumsum() - duration_s


def _thin_ranks(ranks: np.ndarray, max_ranks: int | None) -> np.ndarray:
    """`max_ranks` of the sorted distinct `ranks`, evenly spaced, always the first and the last."""
    if max_ranks is None or len(ranks) <= max_ranks:
        return ranks
    idx = np.unique(np.rint(np.linspace(0, len(ranks) - 1, max_ranks)).astype(np.int64))
    return ranks[idx]


def _args(mb: int, layer: int, nbytes: float, rows: int, wait_us: float) -> dict[str, Any]:
    """Only the fields that apply: -1 micro-batch/layer and 0 bytes/rows/wait are left out."""
    args: dict[str, Any] = {}
    if mb != -1:
        args["micro_batch"] = mb
    if layer != -1:
        args["layer"] = layer
    if nbytes != 0:
        args["bytes"] = nbytes
    if rows != 0:
        args["rows"] = rows
    if wait_us != 0:
        args["wait_us"] = wait_us
    return args


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building ~10^6 small acyclic dicts triggers the cyclic GC over and over (3-4x slower); pause it
    for the duration and restore the previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _complete_events(df: pd.DataFrame, offsets_s: pd.Series, ranks_per_node: int) -> list[dict]:
    """One "X" event per kept record, ordered by (rank, time)."""
    op = _as_str_array(df["op"])
    start = df["start_s"].to_numpy(dtype=np.float64) + offsets_s.reindex(df["step"].to_numpy()).to_numpy()
    dur = df["end_s"].to_numpy(dtype=np.float64) - df["start_s"].to_numpy(dtype=np.float64)
    rank = df["rank"].to_numpy(dtype=np.int64)
    keep = (dur > 0) | ((dur == 0) & np.isin(op, _KEEP_ZERO_DURATION))
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((start[idx], rank[idx]))]
    wait_s = df["wait_s"].to_numpy(dtype=np.float64)[idx] if "wait_s" in df.columns else np.zeros(len(idx))
    cols = zip(op[idx].tolist(), _as_str_array(df["phase"])[idx].tolist(),
               (start[idx] * _US_PER_S).tolist(), (dur[idx] * _US_PER_S).tolist(),
               (rank[idx] // ranks_per_node).tolist(), rank[idx].tolist(),
               df["micro_batch"].to_numpy(dtype=np.int64)[idx].tolist(),
               df["layer"].to_numpy(dtype=np.int64)[idx].tolist(),
               df["bytes"].to_numpy(dtype=np.float64)[idx].tolist(),
               df["rows"].to_numpy(dtype=np.int64)[idx].tolist(), (wait_s * _US_PER_S).tolist())
    with _gc_paused():
        return [{"name": n, "cat": c, "ph": "X", "ts": t, "dur": d, "pid": p, "tid": r,
                 "args": _args(m, ly, b, rw, w)} for n, c, t, d, p, r, m, ly, b, rw, w in cols]


def _metadata_events(ranks: np.ndarray, ranks_per_node: int) -> list[dict]:
    events: list[dict] = []
    for node in np.unique(ranks // ranks_per_node).tolist():
        events.append({"name": "process_name", "ph": "M", "pid": node, "tid": 0, "args": {"name": f"node {node}"}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": node, "tid": 0,
                       "args": {"sort_index": node}})
    for rank in ranks.tolist():
        node = rank // ranks_per_node
        events.append({"name": "thread_name", "ph": "M", "pid": node, "tid": rank, "args": {"name": f"rank {rank}"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": node, "tid": rank,
                       "args": {"sort_index": rank}})
    return events


def _check_args(ranks_per_node: int, max_ranks: int | None) -> None:
    if isinstance(ranks_per_node, bool) or not isinstance(ranks_per_node, (int, np.integer)) or ranks_per_node < 1:
        raise SpecError("ranks_per_node", ranks_per_node, "an integer >= 1 (GPUs per node)")
    if max_ranks is not None and (isinstance(max_ranks, bool) or not isinstance(max_ranks, (int, np.integer))
                                  or max_ranks < 2):
        raise SpecError("max_ranks", max_ranks, "an integer >= 2 (rank 0 and the last rank are always shown), "
                                                "or None for all ranks")


def chrome_trace(records: pd.DataFrame, *, ranks_per_node: int, max_ranks: int | None = 64,
                 steps: list[int] | None = None) -> dict:
    """Chrome Trace Event Format dict for `records` (columns of moesim.sim.records.RECORD_COLUMNS).

    `steps` keeps only those steps; `max_ranks` keeps that many ranks, evenly spaced over the sorted ranks
    and always including the first and the last (None keeps all), and notes the thinning in "metadata"."""
    _check_args(ranks_per_node, max_ranks)
    df = records
    if steps is not None:
        df = df[df["step"].isin(list(steps))]
    offsets_s = _step_offsets_s(df)  # over all ranks: thinning must not shorten a step
    all_ranks = np.unique(df["rank"].to_numpy(dtype=np.int64))
    ranks = _thin_ranks(all_ranks, max_ranks)
    trace: dict[str, Any] = {"traceEvents": [], "displayTimeUnit": "ms"}
    if len(ranks) < len(all_ranks):
        df = df[df["rank"].isin(ranks)]
        trace["metadata"] = {"moesim_note": f"showing {len(ranks)} of {len(all_ranks)} ranks"}
    trace["traceEvents"] = (_metadata_events(ranks, ranks_per_node)
                            + _complete_events(df, offsets_s, ranks_per_node))
    return trace


def write_chrome_trace(path: str | PathLike[str], trace: dict) -> Path:
    """Write a trace dict from `chrome_trace` atomically as compact JSON (traces get large)."""
    return write_json_atomic(path, trace, indent=None)
