"""Routing traces: how many (token, expert) assignments each source rank sent to each expert.

In memory a trace is dense: counts[step, layer, micro_batch, src_rank, expert]. On disk the moesim format is
Parquet in long form with exactly the integer columns of TRACE_COLUMNS (one row per non-zero count is enough:
missing rows are zeros, duplicate rows add up) plus key/value metadata `moesim_trace_version`, `shape`
(layers, micro-batches, source ranks, experts), `steps`, `top_k` (may be absent) and `source`.
The shared SmartMoE counts.npz and the SmartMoE artifact's raw logs load into the same structure.

Every reader distrusts its file: declared sizes are checked against MAX_TRACE_CELLS (Parquet's row count against
MAX_TRACE_ROWS, a raw log's size against MAX_LOG_BYTES) before anything is allocated; counts must be whole numbers
in [0, MAX_COUNT], never wrapped or truncated; indices must lie inside the sizes; steps must be strictly increasing.
Every problem is one SpecError naming the file (for a log directory, the log at fault). A trace read from a file
remembers it (RoutingTrace.path), so that later errors about the trace (a fit too large) name it too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moesim.io.results import write_bytes_atomic
from moesim.spec.errors import SpecError
from moesim.spec.trace import (MAX_COUNT, MAX_STEP, MAX_TRACE_CELLS, RoutingTrace, check_cells, check_steps)

TRACE_COLUMNS = ("step", "layer", "micro_batch", "src_rank", "expert", "tokens")
TRACE_VERSION = "1"
# Parquet rows read at most: 67,108,864 rows are 3 GiB as six int64 columns. A row per non-zero count is the
# format, so this admits every trace of up to 2**26 non-zero counts (the shared SmartMoE trace has 24.6 M cells).
MAX_TRACE_ROWS = 2**26
_EXPECTED_COLUMNS = "exactly the integer columns " + ", ".join(TRACE_COLUMNS)
_PANDAS_INDEX = re.compile(r"__index_level_[0-9]+__")  # pandas' unnamed index column: bookkeeping, not data
_WHAT = {"tokens": "a count of assignments", "step": "a step", "index": "an index inside the metadata shape",
         "undeclared": f"an index (a trace holds at most {MAX_TRACE_CELLS:,} counts)"}
_WHOLE = re.compile(r"\s*([0-9]{1,9})\s*")


def write_trace(path: Path, trace: RoutingTrace) -> Path:
    table = pa.Table.from_pandas(trace.to_frame(), preserve_index=False)
    meta = {"moesim_trace_version": TRACE_VERSION, "source": trace.source,
            "shape": json.dumps(list(trace.counts.shape[1:])), "steps": json.dumps([int(s) for s in trace.steps])}
    if trace.top_k is not None:
        meta["top_k"] = str(trace.top_k)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k: v.encode() for k, v in meta.items()}})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return write_bytes_atomic(path, sink.getvalue().to_pybytes())


def load_trace(path: str | Path) -> RoutingTrace:
    """By kind: a .parquet moesim trace, a SmartMoE .npz, or a directory of SmartMoE raw logs."""
    # the SmartMoE readers use this module's checks: imported here, not at the top, to keep imports one way
    from moesim.io.smartmoe import import_smartmoe_logs, load_smartmoe_npz  # noqa: PLC0415

    path = Path(path)
    if path.is_dir():
        return import_smartmoe_logs(path)
    if not path.is_file():
        raise SpecError("", str(path), "an existing trace: .parquet, .npz or a directory of SmartMoE logs",
                        source=str(path))
    if path.suffix == ".npz":
        return load_smartmoe_npz(path)
    return read_trace(path)


# ---------------------------------------------------------------- moesim Parquet


def read_trace(path: Path) -> RoutingTrace:
    """A moesim Parquet trace; a file without the metadata (written by another tool) is densified from its
    columns, with sizes taken from the largest index seen."""
    src = str(path)
    try:
        return _densify(*_read_parquet(path), src)
    except SpecError as err:
        raise err.with_source(src) from None


def _read_parquet(path: Path) -> tuple[pa.Table, dict]:
    """The six columns and the parsed metadata; columns, types, row count and metadata are checked from the
    footer before any data is read."""
    try:
        with pq.ParquetFile(path) as file:
            footer = file.metadata  # the row groups' own counts are what the reader decodes: trust neither alone
            rows = max(footer.num_rows, sum(footer.row_group(i).num_rows for i in range(footer.num_row_groups)))
            _check_schema(file.schema_arrow, rows)
            meta = _metadata(file.schema_arrow)
            return file.read(columns=list(TRACE_COLUMNS)), meta
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError("", str(path), f"a readable Parquet trace file ({type(exc).__name__})") from None


def _check_schema(schema: pa.Schema, num_rows: int) -> None:
    """Columns and row count, from the footer alone (no data read yet)."""
    names = [n for n in schema.names if not _PANDAS_INDEX.fullmatch(n)]
    _check_names(names, TRACE_COLUMNS, "column", f"{_EXPECTED_COLUMNS} (pandas: to_parquet(index=False))")
    for col in TRACE_COLUMNS:
        if not pa.types.is_integer(schema.field(col).type):
            raise SpecError(col, str(schema.field(col).type), "an integer column (int8..int64 or uint8..uint64)")
    if num_rows > MAX_TRACE_ROWS:
        raise SpecError("", f"{num_rows:,} rows", f"at most {MAX_TRACE_ROWS:,} rows (one per non-zero count)")


def _check_names(names: list[str], required: tuple[str, ...], kind: str, expected: str) -> None:
    """One error for the first repeated, missing or extra name (Parquet columns, .npz arrays)."""
    seen: set[str] = set()
    repeated = next((n for n in names if n in seen or seen.add(n)), None)  # set.add returns None
    if repeated is not None:
        raise SpecError(repeated, f"a {kind} stored twice", expected)
    missing = [n for n in required if n not in seen]
    if missing:
        raise SpecError(missing[0], f"missing ({kind}s: {', '.join(names) or 'none'})", expected)
    extra = [n for n in names if n not in required]
    if extra:
        raise SpecError(extra[0], f"an extra {kind}", expected)


def _metadata(schema: pa.Schema) -> dict:
    """{'steps': int64 [S] | None, 'shape': (L, M, R, E) | None, 'top_k': int | None, 'source': str | None}."""
    raw = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (schema.metadata or {}).items()}
    version = raw.get("moesim_trace_version")
    if version is not None and version != TRACE_VERSION:
        raise SpecError("metadata.moesim_trace_version", version, f"'{TRACE_VERSION}' (the version this moesim reads)")
    steps, shape = _json_ints(raw, "steps"), _json_ints(raw, "shape")
    if steps is not None:
        if not steps:
            raise SpecError("metadata.steps", raw["steps"], "at least one step")
        bad = next((i for i, s in enumerate(steps) if not 0 <= s <= MAX_STEP), None)
        if bad is not None:
            raise SpecError(f"metadata.steps[{bad}]", steps[bad], f"a step in [0, {MAX_STEP}]")
        steps = np.array(steps, dtype=np.int64)
        check_steps(steps, "metadata.steps")
    if shape is not None:
        if len(shape) != 4 or min(shape) < 1:
            raise SpecError("metadata.shape", raw["shape"], "4 sizes >= 1: layers, micro_batches, src_ranks, experts")
        check_cells((1 if steps is None else len(steps), *shape), "metadata.shape")
    top_k = raw.get("top_k")
    if top_k is not None and not _WHOLE.fullmatch(top_k):
        raise SpecError("metadata.top_k", top_k, "a whole number of experts per token")
    return {"steps": steps, "shape": None if shape is None else tuple(shape),
            "top_k": None if top_k is None else int(top_k), "source": raw.get("source")}


def _json_ints(raw: dict, key: str) -> list[int] | None:
    if key not in raw:
        return None
    try:
        value = json.loads(raw[key])
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(type(v) is int for v in value):  # bools and floats are not sizes
        raise SpecError(f"metadata.{key}", raw[key], "a JSON list of integers")
    return value


def _columns(table: pa.Table, sizes: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    """The columns as int64 [rows], each checked in range first (uint64 above int64 max must not wrap)."""
    limits = {"step": MAX_STEP, "tokens": MAX_COUNT}
    if sizes is not None:
        limits.update((c, n - 1) for c, n in zip(TRACE_COLUMNS[1:5], sizes))
    out = {}
    for col in TRACE_COLUMNS:
        chunked = table.column(col)
        if chunked.null_count:
            raise SpecError(col, f"{chunked.null_count} missing values", "non-negative integers")
        values = chunked.to_numpy()
        high = limits.get(col, MAX_TRACE_CELLS - 1)  # an undeclared size is bounded by the cell limit anyway
        if values.size and (values.min() < 0 or values.max() > high):
            row = int(np.argmax((values < 0) | (values > high)))
            what = _WHAT.get(col, _WHAT["index" if sizes else "undeclared"])
            raise SpecError(col, int(values[row]), f"{what} in [0, {high}] (first bad at row {row})")
        out[col] = values.astype(np.int64, copy=False)
    return out


def _densify(table: pa.Table, meta: dict, src: str) -> RoutingTrace:
    cols = _columns(table, meta["shape"])
    if meta["shape"] is not None:
        sizes = meta["shape"]
    elif table.num_rows:
        sizes = tuple(int(cols[c].max()) + 1 for c in TRACE_COLUMNS[1:5])
    else:
        raise SpecError("", "no rows and no metadata shape", "a trace with at least one count")
    steps = meta["steps"] if meta["steps"] is not None else np.unique(cols["step"])
    if not len(steps):
        raise SpecError("step", "no rows and no metadata steps", "a trace with at least one step")
    shape = (len(steps), *sizes)
    check_cells(shape, "shape")  # before np.zeros
    step_pos = np.searchsorted(steps, cols["step"])
    unlisted = (step_pos >= len(steps)) | (steps[np.minimum(step_pos, len(steps) - 1)] != cols["step"])
    if unlisted.any():
        row = int(np.argmax(unlisted))
        raise SpecError("step", int(cols["step"][row]), f"a step listed in the metadata steps (row {row})")
    cells = np.ravel_multi_index((step_pos, *(cols[c] for c in TRACE_COLUMNS[1:5])), shape)
    cells, tokens = _add_duplicates(cells, cols["tokens"])
    if tokens.size and tokens.max() > MAX_COUNT:
        raise SpecError("tokens", int(tokens.max()), f"at most {MAX_COUNT:,} assignments per cell "
                                                       "(rows with the same step and indices add up)")
    counts = np.zeros(shape, dtype=np.int32)
    counts.reshape(-1)[cells] = tokens
    return RoutingTrace(counts, np.asarray(steps, dtype=np.int64), meta["top_k"], meta["source"] or src, src)


def _add_duplicates(cells: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct cells, summed int64 tokens). Exact: at most MAX_TRACE_ROWS terms of at most MAX_COUNT each."""
    if cells.size < 2 or bool(np.all(cells[1:] > cells[:-1])):  # written by write_trace: sorted and distinct
        return cells, tokens
    order = np.argsort(cells)  # the order within a run of equal cells does not matter: they are summed
    cells, tokens = cells[order], tokens[order]
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    return cells[starts], np.add.reduceat(tokens, starts)


# ---------------------------------------------------------------- SmartMoE .npz
