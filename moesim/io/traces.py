"""Routing traces: how many (token, expert) assignments each source rank sent to each expert.

In memory a trace is dense: counts[step, layer, micro_batch, src_rank, expert]. On disk the moesim format is
Parquet in long form with the columns of TRACE_COLUMNS (int64, one row per non-zero count is enough: missing
rows are zeros) plus key/value metadata `moesim_trace_version`, `top_k` (may be absent) and `source`.
The shared SmartMoE counts.npz and the SmartMoE artifact's raw logs load into the same structure.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from moesim.io.results import write_bytes_atomic
from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace

TRACE_COLUMNS = ("step", "layer", "micro_batch", "src_rank", "expert", "tokens")
TRACE_VERSION = "1"
MAX_DENSE_ELEMENTS = 2_000_000_000  # a dense trace larger than this is refused rather than exhausting memory


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


def read_trace(path: Path) -> RoutingTrace:
    """A moesim Parquet trace; any file without the metadata (written by another tool) is densified from
    its columns, with sizes taken from the largest index seen."""
    src = str(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise SpecError("", src, f"a readable Parquet trace file ({type(exc).__name__})", source=src) from None
    missing = [c for c in TRACE_COLUMNS if c not in table.column_names]
    if missing:
        raise SpecError(missing[0], table.column_names, f"columns {', '.join(TRACE_COLUMNS)}", source=src)
    meta = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()}
    for col in TRACE_COLUMNS:
        if table.column(col).null_count:
            raise SpecError(col, f"{table.column(col).null_count} missing values", "non-negative integers", source=src)
    frame = table.select(list(TRACE_COLUMNS)).to_pandas()
    for col in TRACE_COLUMNS:
        values = frame[col]
        if not pd.api.types.is_integer_dtype(values) or (len(values) and values.min() < 0):
            raise SpecError(col, str(values.dtype), "non-negative integers", source=src)
    return _densify(frame, meta, src)


def _densify(frame: pd.DataFrame, meta: dict, src: str) -> RoutingTrace:
    try:
        steps = np.array(json.loads(meta["steps"]), dtype=np.int64) if "steps" in meta \
            else np.unique(frame["step"].to_numpy())
        shape_meta = [int(n) for n in json.loads(meta["shape"])] if "shape" in meta else None
        top_k = int(meta["top_k"]) if "top_k" in meta else None
        if steps.ndim != 1 or np.any(np.diff(steps) <= 0) or (shape_meta is not None and (
                len(shape_meta) != 4 or min(shape_meta) < 0)):
            raise ValueError("inconsistent")
    except (ValueError, TypeError, OverflowError):
        raise SpecError("metadata", {k: meta[k] for k in ("steps", "shape", "top_k") if k in meta},
                        "moesim trace metadata: steps = increasing integers, shape = 4 sizes, top_k = an integer",
                        source=src) from None
    if shape_meta is not None:
        layers, mbs, ranks, experts = shape_meta
    else:
        layers, mbs, ranks, experts = (int(frame[c].max()) + 1 if len(frame) else 0
                                       for c in ("layer", "micro_batch", "src_rank", "expert"))
    shape = (len(steps), layers, mbs, ranks, experts)
    if int(np.prod(shape, dtype=np.float64)) > MAX_DENSE_ELEMENTS:
        raise SpecError("", shape, f"a trace of at most {MAX_DENSE_ELEMENTS:,} dense counts", source=src)
    step_pos = np.searchsorted(steps, frame["step"].to_numpy())
    if len(frame) and (np.any(step_pos >= len(steps)) or np.any(steps[np.minimum(step_pos, len(steps) - 1)]
                                                                  != frame["step"].to_numpy())):
        raise SpecError("step", "a step not listed in the metadata", "steps listed in the file's metadata", source=src)
    counts = np.zeros(shape, dtype=np.int64)
    keys = (step_pos, *(frame[c].to_numpy() for c in ("layer", "micro_batch", "src_rank", "expert")))
    for axis, (key, size) in enumerate(zip(keys[1:], shape[1:]), start=1):
        if len(key) and key.max() >= size:
            raise SpecError(TRACE_COLUMNS[axis], int(key.max()), f"< {size}", source=src)
    np.add.at(counts, keys, frame["tokens"].to_numpy().astype(np.int64))
    return _trace(counts, steps, top_k, meta.get("source", src), src)


def _trace(counts: np.ndarray, steps: np.ndarray, top_k: int | None, name: str, src: str) -> RoutingTrace:
    """RoutingTrace, with its validation errors naming the file."""
    try:
        return RoutingTrace(counts, steps, top_k, name)
    except SpecError as exc:
        raise exc.with_source(src) from None


def load_smartmoe_npz(path: Path) -> RoutingTrace:
    """The converted SmartMoE artifact trace: counts[snapshot, layer, rank, micro_batch, expert] + iterations."""
    src = str(path)
    try:
        with np.load(path) as z:
            counts, iterations = z["counts"], z["iterations"]
    except (OSError, KeyError, ValueError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        raise SpecError("", src, f"an .npz with arrays 'counts' and 'iterations' ({type(exc).__name__})",
                        source=src) from None
    if counts.ndim != 5:
        raise SpecError("counts", counts.shape, "shape (snapshots, layers, ranks, micro_batches, experts)", source=src)
    if not np.issubdtype(counts.dtype, np.integer):
        raise SpecError("counts", str(counts.dtype), "an integer array", source=src)
    if counts.size and counts.min() < 0:
        raise SpecError("counts", int(counts.min()), "non-negative counts", source=src)
    if not np.issubdtype(iterations.dtype, np.integer):
        raise SpecError("iterations", str(iterations.dtype), "integers", source=src)
    return _trace(np.ascontiguousarray(counts.transpose(0, 1, 3, 2, 4)), iterations.astype(np.int64), 2,
                  f"SmartMoE artifact trace (thu-pacman/SmartMoE-AE moe_trace, GPL-3.0) via {path.name}", src)


_LOG_NAME = re.compile(r"table_iter(\d+)_rank(\d+)\.log$")


def import_smartmoe_logs(directory: Path, top_k: int | None = 2) -> RoutingTrace:
    """The SmartMoE artifact's raw logs: table_iter{N}_rank{r}.log, one line per layer `layer: [[E counts] x mbs]`."""
    files = {}
    for f in sorted(Path(directory).glob("table_iter*_rank*.log")):
        m = _LOG_NAME.search(f.name)
        if m:
            files[(int(m.group(1)), int(m.group(2)))] = f
    if not files:
        raise SpecError("", str(directory), "a directory with table_iter{N}_rank{r}.log files", source=str(directory))
    iters = sorted({i for i, _ in files})
    ranks = sorted({r for _, r in files})
    if ranks != list(range(len(ranks))):
        raise SpecError("rank", ranks, "ranks 0..R-1 with none missing", source=str(directory))
    missing = [f"table_iter{it}_rank{r}.log" for it in iters for r in ranks if (it, r) not in files]
    if missing:
        raise SpecError("rank", missing, "one log per iteration and rank (0..R-1)", source=str(directory))
    tables = {key: _parse_log(f) for key, f in files.items()}
    first = next(iter(tables.values()))
    counts = np.zeros((len(iters), *first.shape[:2], len(ranks), first.shape[2]), dtype=np.int64)
    for (it, rank), table in tables.items():
        if table.shape != first.shape:
            raise SpecError("layers", table.shape, f"the same shape as the other logs {first.shape}",
                            source=str(files[(it, rank)]))
        counts[iters.index(it), :, :, rank, :] = table
    return _trace(counts, np.array(iters, dtype=np.int64), top_k, f"SmartMoE raw logs in {directory}", str(directory))


def _parse_log(path: Path) -> np.ndarray:
    """[layers, micro_batches, experts] from one log file."""
    rows = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError("", str(path), f"a readable UTF-8 text log ({type(exc).__name__})", source=str(path)) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        layer, sep, body = line.partition(":")
        try:
            if not sep:
                raise ValueError("no ':'")
            values = np.array(json.loads(body), dtype=np.float64)
            if values.size and (values.min() < 0 or not np.all(values == np.round(values)) or values.max() >= 2**53):
                raise ValueError("counts must be non-negative whole numbers")
            if int(layer) in rows:
                raise ValueError(f"layer {int(layer)} repeated")
            rows[int(layer)] = values.astype(np.int64)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"line {lineno}", line[:60], f"'layer: [[counts], ...]' ({exc})", source=str(path)) from None
    layers = sorted(rows)
    if layers != list(range(len(layers))) or len({rows[l].shape for l in layers}) != 1 or rows[0].ndim != 2:
        raise SpecError("layers", layers, "layers 0..L-1, each a [micro_batches x experts] table", source=str(path))
    return np.stack([rows[l] for l in layers])


def load_trace(path: str | Path) -> RoutingTrace:
    """By kind: a .parquet moesim trace, a SmartMoE .npz, or a directory of SmartMoE raw logs."""
    path = Path(path)
    if path.is_dir():
        return import_smartmoe_logs(path)
    if not path.is_file():
        raise SpecError("", str(path), "an existing trace: .parquet, .npz or a directory of SmartMoE logs",
                        source=str(path))
    if path.suffix == ".npz":
        return load_smartmoe_npz(path)
    return read_trace(path)
