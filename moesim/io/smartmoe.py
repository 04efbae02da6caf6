"""The SmartMoE artifact's routing traces: its `.npz` of counts and its raw per-rank logs
(`table_iter{N}_rank{r}.log`). Every size is checked against the declared shape (and MAX_TRACE_CELLS) before
anything is allocated; every error names the file, the log at fault for a directory."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from moesim.io.traces import _WHOLE, _check_names
from moesim.spec.errors import SpecError
from moesim.spec.trace import (MAX_COUNT, MAX_STEP, RoutingTrace, check_cells, check_counts,
                               check_steps)



_NPZ_AXES = {"counts": ("snapshots", "layers", "ranks", "micro_batches", "experts"), "iterations": ("snapshots",)}
_NPY_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4}  # header length field per .npy format version
_MAX_NPY_HEADER = 10_000  # numpy's own default max_header_size


def load_smartmoe_npz(path: Path) -> RoutingTrace:
    """The converted SmartMoE artifact trace: counts[snapshot, layer, rank, micro_batch, expert] + iterations.
    Exactly these two integer arrays; headers are checked before any array data is read."""
    src = str(path)
    try:
        counts, iterations = _read_npz(path, src)
        check_counts(counts, "counts")
        check_steps(iterations, "iterations")
        dtype = counts.dtype if counts.dtype.isnative and np.can_cast(counts.dtype, np.int32) else np.int32
        counts = np.ascontiguousarray(counts.transpose(0, 1, 3, 2, 4), dtype=dtype)  # -> [S, L, M, R, E]
        return RoutingTrace(counts, iterations.astype(np.int64), 2,
                            f"SmartMoE artifact trace (thu-pacman/SmartMoE-AE moe_trace, GPL-3.0) via {path.name}", src)
    except SpecError as err:
        raise err.with_source(src) from None


def _read_npz(path: Path, src: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = _npz_members(archive)
            _check_npz_headers({key: _npy_header(archive, info) for key, info in members.items()})
            return tuple(_npy_data(archive, members[key]) for key in _NPZ_AXES)
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, SpecError):
            raise
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
        raise SpecError("", src, "an .npz (zip of .npy) with integer arrays 'counts' and 'iterations' "
                                 f"({type(exc).__name__})") from None


def _npz_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """{'counts': member, 'iterations': member}; np.savez names members '<key>.npy'."""
    infos = archive.infolist()
    keys = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos]
    _check_names(keys, tuple(_NPZ_AXES), "array", "exactly the integer arrays 'counts' and 'iterations'")
    return dict(zip(keys, infos))


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of data the member holds). numpy's reader would read a version-2 header of any
    declared length (up to 4 GiB) before refusing it, so the length is checked here first."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_LENGTH_BYTES:
            raise SpecError(info.filename, f"npy format {version}", "an .npy of format version 1.0 or 2.0")
        length_bytes = f.read(_NPY_LENGTH_BYTES[version])
        length = int.from_bytes(length_bytes, "little")
        if length > _MAX_NPY_HEADER:
            raise SpecError(info.filename, f"a {length:,}-byte header", f"at most {_MAX_NPY_HEADER:,} bytes")
        header = io.BytesIO(length_bytes + f.read(length))
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = reader(header)
    return tuple(shape), dtype, info.file_size - (8 + len(length_bytes) + length)  # 8: magic and version


def _check_npz_headers(headers: dict) -> None:
    """Types, shapes and sizes from the headers, before any data is read (a header may declare any shape)."""
    for key, (shape, dtype, _) in headers.items():
        if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
            raise SpecError(key, str(dtype), "an integer array")
        if len(shape) != len(_NPZ_AXES[key]) or min(shape) < 1:
            raise SpecError(key, shape, f"shape ({', '.join(_NPZ_AXES[key])}), each >= 1")
    counts_shape = headers["counts"][0]
    check_cells(counts_shape, "counts")
    if headers["iterations"][0] != counts_shape[:1]:
        raise SpecError("iterations", headers["iterations"][0], f"one iteration per snapshot ({counts_shape[0]})")
    for key, (shape, dtype, stored) in headers.items():
        needed = math.prod(shape) * dtype.itemsize
        if stored < needed:
            raise SpecError(key, f"{max(stored, 0):,} bytes of data", f"the {needed:,} bytes of its header's shape "
                                                                      f"{shape} (a truncated array)")


def _npy_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


# ---------------------------------------------------------------- SmartMoE raw logs

_LOG_GLOB = "table_iter*_rank*.log"
_LOG_NAME = re.compile(r"table_iter([0-9]+)_rank([0-9]+)\.log")
_LOG_LINE = "'layer: [[counts of micro-batch 0], [micro-batch 1], ...]'"
# Bytes of one log read at most, checked before reading it. json.loads holds each count of a line as a Python
# object (a count written in 2-5 bytes of text takes 8-90 bytes), so parsing needs up to ~25x the log's size (at
# the cap: 250-400 MiB and 0.5-3 s, measured). 16 MiB still admits over a million counts per log (iteration x
# rank), e.g. 64 layers x 32 micro-batches x 512 experts written as 177.0; the SmartMoE artifact's logs are a few KiB.
MAX_LOG_BYTES = 16 * 2**20


def import_smartmoe_logs(directory: Path, top_k: int | None = 2) -> RoutingTrace:
    """The SmartMoE artifact's raw logs: table_iter{N}_rank{r}.log, one line per layer `layer: [[E counts] x mbs]`.
    Every iteration has one log per rank 0..R-1, all of the same shape; counts may be written as 177.0. Each log is
    at most MAX_LOG_BYTES, and the trace's size is checked against MAX_TRACE_CELLS from the first log's first line
    on (before the rest is parsed)."""
    directory = Path(directory)
    try:
        files = _log_files(directory)
        iters = sorted({i for i, _ in files})
        ranks = sorted({r for _, r in files})
        _check_complete(files, iters, ranks)
        first_key = (iters[0], 0)

        def check(layers: int, mbs: int, experts: int) -> None:  # the logs' total, named by the directory
            try:
                check_cells((len(iters), layers, mbs, len(ranks), experts), "logs")
            except SpecError as err:
                raise err.with_source(str(directory)) from None

        first = _parse_log(files[first_key], check)  # [L, M, E]
        shape = (len(iters), first.shape[0], first.shape[1], len(ranks), first.shape[2])
        check_cells(shape, "logs")  # before np.zeros (check already did, layer by layer); logs parsed one at a time
        counts = np.zeros(shape, dtype=np.int32)
        position = {it: i for i, it in enumerate(iters)}
        for (it, rank), f in sorted(files.items()):
            table = first if (it, rank) == first_key else _parse_log(f)
            if table.shape != first.shape:
                raise SpecError("layers", table.shape, f"(layers, micro_batches, experts) = {first.shape} as in "
                                                       f"{files[first_key].name}", source=str(f))
            counts[position[it], :, :, rank, :] = table
        return RoutingTrace(counts, np.array(iters, dtype=np.int64), top_k, f"SmartMoE raw logs in {directory}",
                            str(directory))
    except SpecError as err:
        raise err.with_source(str(directory)) from None


def _log_files(directory: Path) -> dict[tuple[int, int], Path]:
    """{(iteration, rank): log}; a name that looks like a log but is not one, or a second log for the same
    iteration and rank (e.g. iter01 and iter1), is an error naming it."""
    files: dict[tuple[int, int], Path] = {}
    for f in sorted(directory.glob(_LOG_GLOB)):
        m = _LOG_NAME.fullmatch(f.name)
        if m is None or any(len(g) > 19 or int(g) > MAX_STEP for g in m.groups()):
            raise SpecError("", f.name, f"a log named table_iter{{N}}_rank{{r}}.log, N and r in [0, {MAX_STEP}]",
                            source=str(f))
        if not f.is_file():  # a directory or a FIFO (reading one would block)
            raise SpecError("", f.name, "a regular log file", source=str(f))
        key = (int(m.group(1)), int(m.group(2)))
        if key in files:
            raise SpecError("", f.name, f"one log per iteration and rank ({files[key].name} is also iteration "
                                        f"{key[0]}, rank {key[1]})", source=str(f))
        files[key] = f
    if not files:
        raise SpecError("", str(directory), "a directory with table_iter{N}_rank{r}.log files")
    return files


def _check_complete(files: dict, iters: list[int], ranks: list[int]) -> None:
    if ranks != list(range(len(ranks))):
        gap = next(r for r, have in enumerate(ranks) if r != have)  # the first rank without a log
        raise SpecError("rank", ranks, f"ranks 0..R-1 with none missing (no log of rank {gap})")
    if len(files) != len(iters) * len(ranks):
        missing = []
        for it in iters:  # stops at the first few: iters x ranks can be large
            missing += [f"table_iter{it}_rank{r}.log" for r in ranks if (it, r) not in files]
            if len(missing) >= 3:
                break
        raise SpecError("rank", missing, "one log per iteration and rank (0..R-1)")


def _parse_log(path: Path, check=None) -> np.ndarray:
    """int32 [layers, micro_batches, experts] from one log file of at most MAX_LOG_BYTES. `check(layers,
    micro_batches, experts)`, when given, is called after each line, before the next is parsed."""
    src = str(path)
    rows: dict[int, np.ndarray] = {}
    try:
        for lineno, line in enumerate(_read_log(path).splitlines(), start=1):
            if not line.strip():
                continue
            head, sep, body = line.partition(":")
            layer = _WHOLE.fullmatch(head)
            if not sep or layer is None:
                raise SpecError(f"line {lineno}", line, f"{_LOG_LINE} with a whole layer number")
            if int(layer.group(1)) in rows:
                raise SpecError(f"line {lineno}", int(layer.group(1)), "each layer once")
            rows[int(layer.group(1))] = table = _parse_table(body, f"line {lineno}")
            if check is not None:
                check(len(rows), *table.shape)
        layers = sorted(rows)
        if not layers or layers != list(range(len(layers))):
            raise SpecError("layers", layers, "layers 0..L-1 with none missing, one line each")
        odd = next((l for l in layers if rows[l].shape != rows[0].shape), None)
        if odd is not None:
            raise SpecError(f"layer {odd}", rows[odd].shape, f"(micro_batches, experts) = {rows[0].shape} as layer 0")
    except SpecError as err:
        raise err.with_source(src) from None
    return np.stack([rows[l] for l in layers])


def _read_log(path: Path) -> str:
    """The log's text; its size is checked against MAX_LOG_BYTES before reading, and at most one byte more is read
    (a file that grows, or reports no size, cannot slip past)."""
    src, limit = str(path), MAX_LOG_BYTES  # read at call time: tests lower it
    expected = f"a log of at most {limit:,} bytes (MAX_LOG_BYTES)"
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise SpecError("size", f"{size:,} bytes", expected, source=src)
            raw = f.read(size + 1)  # read(n) allocates n bytes up front: the size, not the cap
            if len(raw) > size:  # it grew, or reports no size (as /proc files do): the rest up to the cap, plus one
                raw += f.read(limit + 1 - len(raw))
        if len(raw) > limit:
            raise SpecError("size", f"more than {limit:,} bytes", expected, source=src)
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError("", src, f"a readable UTF-8 text log ({type(exc).__name__})", source=src) from None


def _parse_table(body: str, where: str) -> np.ndarray:
    """int32 [micro_batches, experts] from `[[c, ...], ...]`; counts are whole numbers (177 or 177.0)."""
    try:
        table = json.loads(body)  # NaN and Infinity parse as floats; the range check below refuses them
    except (ValueError, RecursionError) as exc:
        raise SpecError(where, body.strip(), f"{_LOG_LINE} ({type(exc).__name__}: {exc})") from None
    if not isinstance(table, list) or not table or not all(isinstance(r, list) and r for r in table):
        raise SpecError(where, body.strip(), f"{_LOG_LINE}: a non-empty list of non-empty rows")
    width = len(table[0])
    if any(len(r) != width for r in table):
        raise SpecError(where, [len(r) for r in table], "rows of equal length (one count per expert)")
    try:  # vectorised: the loop in _refuse_count only names the first bad count
        if not set(map(type, itertools.chain.from_iterable(table))) <= {int, float}:  # bool, None, str, lists
            raise ValueError(where)
        values = np.array(table, dtype=np.float64)  # exact for every whole number up to 2**53; huge ints raise
        if not np.all((values >= 0) & (values <= MAX_COUNT) & (values == np.floor(values))):  # NaN fails too
            raise ValueError(where)
    except (ValueError, OverflowError):
        _refuse_count(table, where)
    return values.astype(np.int32)  # whole numbers in [0, MAX_COUNT]: exact


def _refuse_count(table: list, where: str) -> None:
    """The error naming the first count that is not a whole number of assignments in [0, MAX_COUNT]."""
    expected = f"a whole number of assignments in [0, {MAX_COUNT:,}]"
    for i, row in enumerate(table):
        for j, v in enumerate(row):  # fractions, inf and huge values stop here
            if type(v) not in (int, float) or not 0 <= v <= MAX_COUNT or v != int(v):
                raise SpecError(f"{where} micro-batch {i} expert {j}", v, expected)
    raise SpecError(where, "counts", expected)  # unreachable: the vectorised check refuses only what this refuses
