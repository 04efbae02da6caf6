"""Hostile routing traces (issue 10 item 5): every reader answers a bad file with ONE SpecError line naming the
file (for a log directory, the log at fault) and the problem -- never a traceback, a wrapped count or a huge
allocation. The last part fuzzes each format with hypothesis: a mutated small trace loads as a valid trace or
raises SpecError, nothing else.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moesim.io.traces as traces
import moesim.spec.trace as trace_spec
from moesim.io.smartmoe import import_smartmoe_logs, load_smartmoe_npz
from moesim.io.traces import TRACE_COLUMNS, load_trace, read_trace
from moesim.spec.errors import SpecError
from moesim.spec.trace import MAX_COUNT, MAX_TRACE_CELLS, RoutingTrace

ROOT = Path(__file__).resolve().parents[2]
BIG = 10**12  # an index or size no trace may declare


def small_trace() -> RoutingTrace:
    """counts [3 steps, 2 layers, 2 micro-batches, 3 ranks, 4 experts] (as in test_traces.py)."""
    counts = np.random.default_rng(1).integers(0, 50, size=(3, 2, 2, 3, 4))
    counts[counts < 10] = 0
    return RoutingTrace(counts, np.array([1, 11, 21]), 2, "unit test")


def write_logs(directory: Path, counts: np.ndarray, iterations: list[int], floats: bool = False) -> Path:
    """counts [iterations, layers, micro_batches, ranks, experts] as table_iter{N}_rank{r}.log files."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, it in enumerate(iterations):
        for rank in range(counts.shape[3]):
            tables = [counts[i, layer, :, rank].astype(float if floats else int).tolist()
                      for layer in range(counts.shape[1])]
            text = "".join(f"{layer}: {table}\n" for layer, table in enumerate(tables))
            (directory / f"table_iter{it}_rank{rank}.log").write_text(text, encoding="utf-8")
    return directory


def write_npz(path: Path, counts_rank_major: np.ndarray, iterations) -> Path:
    np.savez(path, counts=counts_rank_major, iterations=np.asarray(iterations))
    return path


def error_of(load, path: Path, blame: Path | None = None, key: str | None = None) -> str:
    """The one line `load(path)` fails with; it names `blame` (default: path)."""
    with pytest.raises(SpecError) as info:
        load(path)
    line = info.value.one_line()
    assert "\n" not in line
    assert info.value.source == str(blame or path) and line.startswith(f"{blame or path}: ")
    if key is not None:
        assert info.value.key == key, line
    return line


def small_peak(load, path: Path) -> str:
    """error_of, and the loader allocated at most 64 MiB on the way (nothing sized by the hostile declaration)."""
    tracemalloc.start()
    try:
        line = error_of(load, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak
    return line


# ---------------------------------------------------------------- Parquet


def parquet(path: Path, columns: dict, meta: dict | None = None) -> Path:
    """A Parquet file with exactly these columns (numpy arrays keep their dtype) and string metadata."""
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    if meta:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    pq.write_table(table, path)
    return path


def good_columns(**override) -> dict:
    cols = {c: np.array([0, 1], dtype=np.int64) for c in TRACE_COLUMNS}
    cols["step"] = np.array([5, 7], dtype=np.int64)
    cols.update(override)
    return cols


def test_uint64_count_above_int64_max_is_refused_not_wrapped(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(tokens=np.array([1, 2**63 + 5], dtype=np.uint64)))
    line = error_of(read_trace, path, key="tokens")
    assert str(2**63 + 5) in line and "2147483647" in line and "row 1" in line


def test_count_above_int32_is_refused(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(tokens=np.array([1, MAX_COUNT + 1], dtype=np.int64)))
    error_of(read_trace, path, key="tokens")


def test_duplicate_rows_may_not_sum_past_int32(tmp_path: Path) -> None:
    half = MAX_COUNT // 2 + 1
    cols = {c: np.zeros(2, dtype=np.int64) for c in TRACE_COLUMNS}
    cols["tokens"] = np.array([half, half], dtype=np.int64)
    assert "add up" in error_of(read_trace, parquet(tmp_path / "t.parquet", cols), key="tokens")


def test_uint64_step_above_int64_max_is_refused(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(step=np.array([1, 2**64 - 1], dtype=np.uint64)))
    error_of(read_trace, path, key="step")


@pytest.mark.parametrize("column", ["layer", "micro_batch", "src_rank", "expert"])
def test_huge_index_without_metadata_is_refused_before_allocating(tmp_path: Path, column: str) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(**{column: np.array([0, BIG], dtype=np.uint64)}))
    line = small_peak(read_trace, path)
    assert "1000000000000" in line and f"{MAX_TRACE_CELLS:,}" in line


def test_huge_index_beyond_the_declared_shape_names_the_column(tmp_path: Path) -> None:
    meta = {"shape": "[2, 2, 2, 4]", "steps": "[5, 7]"}
    path = parquet(tmp_path / "t.parquet", good_columns(expert=np.array([0, BIG], dtype=np.int64)), meta)
    assert "in [0, 3]" in error_of(read_trace, path, key="expert")


@pytest.mark.parametrize("shape", ["[1000000, 1000000, 1, 1]", "[1, 1, 1, 1000000000000]"])
def test_declared_shape_beyond_the_cell_limit_is_refused_before_allocating(tmp_path: Path, shape: str) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(), {"shape": shape, "steps": "[5, 7]"})
    assert f"{MAX_TRACE_CELLS:,}" in small_peak(read_trace, path)


@pytest.mark.parametrize("steps,key", [("[5, 7, 7]", "metadata.steps[2]"), ("[7, 5]", "metadata.steps[1]"),
                                       ("[-1, 5, 7]", "metadata.steps[0]"), (f"[5, {2**70}]", "metadata.steps[1]"),
                                       ("[5.0, 7.0]", "metadata.steps"), ("[true, 7]", "metadata.steps"),
                                       ("[]", "metadata.steps"), ("[[5], [7]]", "metadata.steps"),
                                       ("[NaN]", "metadata.steps")])
def test_metadata_steps_must_be_strictly_increasing_integers(tmp_path: Path, steps: str, key: str) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(), {"steps": steps, "shape": "[2, 2, 2, 2]"})
    line = error_of(read_trace, path, key=key)
    if key.endswith("]"):
        assert "strictly increasing" in line or "in [0," in line


@pytest.mark.parametrize("meta,key", [({"shape": "[2, 2, 0, 2]"}, "metadata.shape"),
                                      ({"shape": "[2, 2, 2]"}, "metadata.shape"),
                                      ({"shape": "[2.0, 2, 2, 2]"}, "metadata.shape"),
                                      ({"top_k": "-1"}, "metadata.top_k"), ({"top_k": "3"}, "top_k"),
                                      ({"moesim_trace_version": "2"}, "metadata.moesim_trace_version")])
def test_bad_metadata_names_the_key(tmp_path: Path, meta: dict, key: str) -> None:
    error_of(read_trace, parquet(tmp_path / "t.parquet", good_columns(), meta), key=key)


@pytest.mark.parametrize("column,values,expected", [
    ("tokens", np.array([1.0, 2.5]), "integer column"), ("tokens", np.array([1.0, np.nan]), "integer column"),
    ("tokens", np.array([1.0, np.inf]), "integer column"), ("expert", np.array(["0", "1"]), "integer column"),
    ("tokens", np.array([True, False]), "integer column"), ("tokens", np.array([3, -1]), "in [0,"),
    ("layer", np.array([0, -2], dtype=np.int8), "in [0,")])
def test_mistyped_or_negative_columns_name_the_column(tmp_path: Path, column: str, values, expected: str) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(**{column: values}))
    assert expected in error_of(read_trace, path, key=column)


def test_missing_extra_repeated_and_null_columns(tmp_path: Path) -> None:
    cols = good_columns()
    del cols["src_rank"]
    assert "missing" in error_of(read_trace, parquet(tmp_path / "a.parquet", cols), key="src_rank")
    assert "extra" in error_of(read_trace, parquet(tmp_path / "b.parquet", good_columns(dst_rank=np.zeros(2))),
                               key="dst_rank")
    cols = good_columns()
    table = pa.Table.from_arrays([pa.array(v) for v in cols.values()] + [pa.array(cols["expert"])],
                                 names=[*cols, "expert"])
    pq.write_table(table, tmp_path / "c.parquet")
    assert "twice" in error_of(read_trace, tmp_path / "c.parquet", key="expert")
    path = parquet(tmp_path / "d.parquet", good_columns(tokens=pa.array([1, None], type=pa.int64())))
    assert "missing values" in error_of(read_trace, path, key="tokens")


def test_nested_column_is_mistyped(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", good_columns(layer=pa.array([[0], [1]])))
    assert "integer column" in error_of(read_trace, path, key="layer")


def test_empty_trace_without_metadata_is_refused(tmp_path: Path) -> None:
    empty = {c: np.zeros(0, dtype=np.int64) for c in TRACE_COLUMNS}
    error_of(read_trace, parquet(tmp_path / "a.parquet", empty))
    error_of(read_trace, parquet(tmp_path / "b.parquet", empty, {"shape": "[1, 1, 1, 1]"}))


def test_row_limit_is_checked_from_the_footer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces, "MAX_TRACE_ROWS", 1)
    assert "at most 1 rows" in error_of(read_trace, parquet(tmp_path / "t.parquet", good_columns()))


def test_the_repository_trace_still_loads() -> None:
    trace = read_trace(ROOT / "traces" / "tiny-moe-stdlib.parquet")
    assert trace.counts.shape == (200, 4, 4, 4, 16) and trace.counts.dtype == np.int32
    assert np.all(trace.counts.sum(axis=-1) == 512)


# ---------------------------------------------------------------- SmartMoE .npz


def npz_with_header(path: Path, shape: tuple, dtype: str = "<u2") -> Path:
    """An .npz whose counts.npy declares `shape` but holds only a header (the data is absent)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("counts.npy", header.getvalue())  # magic, version 1.0, header
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.arange(shape[0] if shape and shape[0] < 10 else 1))
        archive.writestr("iterations.npy", buf.getvalue())
    return path


def raw_counts(shape=(2, 1, 2, 1, 3), dtype=np.int64, value=1) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)  # [snapshot, layer, rank, micro_batch, expert]


def test_npz_header_declaring_a_huge_shape_is_refused_before_reading(tmp_path: Path) -> None:
    line = small_peak(load_smartmoe_npz, npz_with_header(tmp_path / "c.npz", (10**6, 10**6, 1, 1, 1)))
    assert f"{MAX_TRACE_CELLS:,}" in line


def test_npz_header_promising_more_data_than_stored(tmp_path: Path) -> None:
    line = error_of(load_smartmoe_npz, npz_with_header(tmp_path / "c.npz", (1, 1, 1, 1, 1000)), key="counts")
    assert "truncated" in line and "2,000 bytes" in line


def test_npz_version_2_header_of_4_gib_is_refused_before_reading_it(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "c.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("counts.npy", "w", force_zip64=True) as member:  # a 4 GiB header of spaces
            member.write(np.lib.format.magic(2, 0) + (2**32 - 1).to_bytes(4, "little"))
            for _ in range(64):
                member.write(b" " * 2**20)
        archive.writestr("iterations.npy", b"")
    assert "4,294,967,295-byte header" in small_peak(load_smartmoe_npz, tmp_path / "c.npz")


@pytest.mark.parametrize("counts,key,expected", [
    (raw_counts(dtype=np.uint64, value=2**63 + 1), "counts[0, 0, 0, 0, 0]", "2,147,483,647"),
    (raw_counts(value=2**40), "counts[0, 0, 0, 0, 0]", "int32"),
    (raw_counts(value=-3), "counts[0, 0, 0, 0, 0]", "[0,"),
    (raw_counts(dtype=np.float64, value=np.nan), "counts", "integer array"),
    (raw_counts(dtype=np.float64, value=2.0), "counts", "integer array"),
    (raw_counts(dtype=bool, value=True), "counts", "integer array"),
    (raw_counts((2, 1, 2, 3)), "counts", "shape"), (raw_counts((2, 1, 0, 1, 3)), "counts", ">= 1")])
def test_bad_npz_counts(tmp_path: Path, counts: np.ndarray, key: str, expected: str) -> None:
    assert expected in error_of(load_smartmoe_npz, write_npz(tmp_path / "c.npz", counts, [1, 2]), key=key)


@pytest.mark.parametrize("iterations,key", [([3, 3], "iterations[1]"), ([9, 2], "iterations[1]"),
                                            ([-1, 2], "iterations[0]"), ([1, 2, 3], "iterations"),
                                            (np.array([1, 2**64 - 1], dtype=np.uint64), "iterations[1]"),
                                            (np.array([1.0, 2.0]), "iterations")])
def test_bad_npz_iterations(tmp_path: Path, iterations, key: str) -> None:
    error_of(load_smartmoe_npz, write_npz(tmp_path / "c.npz", raw_counts(), iterations), key=key)


def test_npz_arrays_missing_extra_or_pickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", counts=raw_counts())
    assert "missing" in error_of(load_smartmoe_npz, tmp_path / "a.npz", key="iterations")
    np.savez(tmp_path / "b.npz", counts=raw_counts(), iterations=[1, 2], weights=np.ones(3))
    assert "extra" in error_of(load_smartmoe_npz, tmp_path / "b.npz", key="weights")
    np.savez(tmp_path / "c.npz", counts=np.array([None, 1], dtype=object), iterations=[1, 2])
    error_of(load_smartmoe_npz, tmp_path / "c.npz", key="counts")


def test_npz_with_a_corrupted_member(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "c.npz", raw_counts(), [1, 2])
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside counts.npy's data: the zip CRC no longer matches
    path.write_bytes(bytes(data))
    error_of(load_smartmoe_npz, path)


# ---------------------------------------------------------------- SmartMoE raw logs


def one_log(directory: Path, text: str, name: str = "table_iter1_rank0.log") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory / name


@pytest.mark.parametrize("body,expected", [
    (f"[[1, {2**40}]]", "2,147,483,647"), (f"[[1, {10**400}]]", "2,147,483,647"), ("[[1, 1e999]]", "whole"),
    ("[[1, NaN]]", "got nan"), ("[[1, -Infinity]]", "got -inf"), ("[[1, 2.5]]", "whole"), ("[[1, true]]", "whole"),
    ("[[1, null]]", "whole"), ("[[1, [2]]]", "whole"), ("[[]]", "non-empty"), ("[]", "non-empty"),
    ("5", "non-empty"), ("[[1, 2], [3]]", "equal length"), ("[" * 100_000 + "]" * 100_000, "RecursionError")])
def test_bad_log_values_name_the_log_and_line(tmp_path: Path, body: str, expected: str) -> None:
    log = one_log(tmp_path / "logs", f"0: [[1, 2]]\n1: {body}\n")
    line = error_of(import_smartmoe_logs, log.parent, blame=log)
    assert "line 2" in line and expected in line


def test_log_with_a_huge_layer_number_or_no_colon(tmp_path: Path) -> None:
    log = one_log(tmp_path / "a", f"{10**30}: [[1, 2]]\n")
    error_of(import_smartmoe_logs, log.parent, blame=log, key="line 1")
    log = one_log(tmp_path / "b", "0 [[1, 2]]\n")
    error_of(import_smartmoe_logs, log.parent, blame=log, key="line 1")


def test_log_layers_of_different_shapes_name_the_layer(tmp_path: Path) -> None:
    log = one_log(tmp_path / "logs", "0: [[1, 2]]\n1: [[1, 2], [3, 4]]\n")
    error_of(import_smartmoe_logs, log.parent, blame=log, key="layer 1")


def test_second_log_of_another_shape_is_named(tmp_path: Path) -> None:
    one_log(tmp_path, "0: [[1, 2]]\n")
    other = one_log(tmp_path, "0: [[1, 2, 3]]\n", "table_iter11_rank0.log")
    assert "table_iter1_rank0.log" in error_of(import_smartmoe_logs, tmp_path, blame=other, key="layers")


def test_the_same_iteration_twice_is_refused(tmp_path: Path) -> None:
    later = one_log(tmp_path, "0: [[1, 2]]\n", "table_iter1_rank0.log")
    one_log(tmp_path, "0: [[1, 2]]\n", "table_iter01_rank0.log")  # sorts first, so the other one is named
    line = error_of(import_smartmoe_logs, tmp_path, blame=later)
    assert "table_iter01_rank0.log is also iteration 1, rank 0" in line


@pytest.mark.parametrize("name", ["table_iter1_rank0_old.log", f"table_iter{10**25}_rank0.log",
                                  "table_iterX_rank0.log", "table_iter\u0661_rank0.log"])
def test_log_names_that_are_not_logs_are_refused(tmp_path: Path, name: str) -> None:
    one_log(tmp_path, "0: [[1, 2]]\n")
    bad = one_log(tmp_path, "0: [[1, 2]]\n", name)
    error_of(import_smartmoe_logs, tmp_path, blame=bad)


def test_a_directory_or_fifo_named_like_a_log(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "table_iter1_rank0.log").mkdir()
    error_of(import_smartmoe_logs, tmp_path / "a", blame=tmp_path / "a" / "table_iter1_rank0.log")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "table_iter1_rank0.log")  # reading it would block forever
    assert "regular" in error_of(import_smartmoe_logs, tmp_path / "b", blame=tmp_path / "b" / "table_iter1_rank0.log")


def test_logs_beyond_the_cell_limit_are_refused_before_allocating(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_logs(tmp_path, np.ones((3, 2, 2, 2, 4), dtype=int), [1, 11, 21])  # 96 cells
    monkeypatch.setattr(trace_spec, "MAX_TRACE_CELLS", 95)
    assert "at most 95 counts" in error_of(import_smartmoe_logs, tmp_path, key="logs")
    monkeypatch.setattr(trace_spec, "MAX_TRACE_CELLS", 96)
    assert import_smartmoe_logs(tmp_path).counts.size == 96


def test_missing_rank_is_named(tmp_path: Path) -> None:
    write_logs(tmp_path, np.ones((1, 1, 1, 3, 2), dtype=int), [1])
    (tmp_path / "table_iter1_rank1.log").unlink()
    assert "rank 1" in error_of(import_smartmoe_logs, tmp_path, key="rank")


# ---------------------------------------------------------------- the in-memory trace and `moesim run`


@pytest.mark.parametrize("counts,steps,key", [
    (np.ones((2, 1, 1, 1, 2), dtype=np.int64), np.array([3, 3]), "steps[1]"),
    (np.ones((2, 1, 1, 1, 2), dtype=np.int64), np.array([1.0, 2.0]), "steps"),
    (np.full((1, 1, 1, 1, 2), 2**31, dtype=np.int64), np.array([0]), "counts[0, 0, 0, 0, 0]"),
    (np.ones((1, 1, 1, 1, 2)), np.array([0]), "counts")])
def test_routing_trace_itself_holds_the_bounds(counts: np.ndarray, steps: np.ndarray, key: str) -> None:
    with pytest.raises(SpecError) as info:
        RoutingTrace(counts, steps, None, "test")
    assert info.value.key == key


def test_moesim_run_with_a_hostile_trace_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moesim.cli import main  # here, not at the top: only this test needs the whole command line

    bad = write_npz(tmp_path / "bad.npz", raw_counts(value=2**40), [1, 2])
    rc = main(["run", str(ROOT / "scenarios" / "quickstart.yaml"), "--trace", str(bad), "--no-files"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad.resolve()) in err[0] and "counts[0, 0, 0, 0, 0]" in err[0]


# ---------------------------------------------------------------- fuzz: valid trace or SpecError, nothing else

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HOSTILE_INTS = st.one_of(st.integers(-3, 40), st.sampled_from([-2**63, 2**31 - 1, 2**31, 2**62, 2**63 - 1]))


def assert_loads_or_one_line(load, path: Path) -> None:
    try:
        trace = load(path)
    except SpecError as err:
        line = err.one_line()
        assert "\n" not in line and err.source and line.startswith(err.source) and str(path) in err.source
        return
    counts = trace.counts
    assert counts.ndim == 5 and min(counts.shape) >= 1 and counts.size <= MAX_TRACE_CELLS
    assert np.issubdtype(counts.dtype, np.integer) and counts.min() >= 0 and counts.max() <= MAX_COUNT
    assert trace.steps.shape == counts.shape[:1] and np.all(np.diff(trace.steps) > 0)


def mutate_bytes(data: bytes, draw) -> bytes:
    if not data:
        return data
    edits = draw(st.lists(st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)), max_size=4))
    out = bytearray(data)
    for pos, byte in edits:
        out[pos] = byte
    return bytes(out[:draw(st.integers(0, len(out)))]) if draw(st.booleans()) else bytes(out)


@FUZZ
@given(data=st.data())
def test_fuzz_parquet(data) -> None:
    frame = small_trace().to_frame()
    cols = {c: frame[c].to_numpy() for c in TRACE_COLUMNS}
    meta = {"moesim_trace_version": "1", "shape": "[2, 2, 3, 4]", "steps": "[1, 11, 21]", "top_k": "2"}
    for _ in range(data.draw(st.integers(1, 3))):
        col = data.draw(st.sampled_from(TRACE_COLUMNS))
        kind = data.draw(st.sampled_from(["value", "dtype", "drop", "extra", "meta"]))
        if col not in cols:
            continue
        if kind == "value" and len(cols[col]):
            values = cols[col].astype(object)
            values[data.draw(st.integers(0, len(values) - 1))] = data.draw(HOSTILE_INTS)
            cols[col] = np.array(values.tolist(), dtype=np.int64)
        elif kind == "dtype":
            cols[col] = cols[col].astype(data.draw(st.sampled_from([np.uint64, np.int8, np.float64, np.uint16])))
        elif kind == "drop":
            cols.pop(col, None)
        elif kind == "extra":
            cols["note"] = np.zeros(len(frame), dtype=np.int64)
        else:
            key = data.draw(st.sampled_from(sorted(meta)))
            meta[key] = json.dumps(data.draw(st.lists(HOSTILE_INTS, max_size=5))) if data.draw(st.booleans()) \
                else data.draw(st.text(max_size=8))
    with tempfile.TemporaryDirectory() as tmp:
        path = parquet(Path(tmp) / "t.parquet", cols, meta)
        assert_loads_or_one_line(read_trace, path)
        path.write_bytes(mutate_bytes(path.read_bytes(), data.draw))
        assert_loads_or_one_line(read_trace, path)


@FUZZ
@given(data=st.data())
def test_fuzz_npz(data) -> None:
    counts = small_trace().counts.transpose(0, 1, 3, 2, 4).astype(np.int64)
    iterations = np.array([1, 11, 21])
    arrays = {"counts": counts, "iterations": iterations}
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(["counts", "iterations"]))
        kind = data.draw(st.sampled_from(["value", "dtype", "shape", "drop", "extra"]))
        arr = arrays.get(key)
        if kind == "value" and arr is not None and arr.size:
            flat = arr.astype(object).reshape(-1)
            flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(HOSTILE_INTS)
            arrays[key] = np.array(flat.tolist(), dtype=np.int64).reshape(arr.shape)
        elif kind == "dtype" and arr is not None:
            arrays[key] = arr.astype(data.draw(st.sampled_from([np.uint64, np.int8, np.float32, np.bool_])))
        elif kind == "shape" and arr is not None:
            arrays[key] = arr.reshape(-1)[:data.draw(st.integers(0, arr.size))]
        elif kind == "drop":
            arrays.pop(key, None)
        else:
            arrays["extra"] = np.zeros(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.npz"
        (np.savez_compressed if data.draw(st.booleans()) else np.savez)(path, **arrays)
        assert_loads_or_one_line(load_trace, path)
        path.write_bytes(mutate_bytes(path.read_bytes(), data.draw))
        assert_loads_or_one_line(load_trace, path)


LOG_ALPHABET = st.sampled_from(list("0123456789[],.:- \n\teE+") + ["NaN", "Infinity", "true", "null", "9" * 25])


@FUZZ
@given(data=st.data())
def test_fuzz_logs(data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_logs(Path(tmp) / "logs", small_trace().counts[:2], [1, 11],
                               floats=data.draw(st.booleans()))
        logs = sorted(directory.iterdir())
        for _ in range(data.draw(st.integers(1, 3))):
            log = data.draw(st.sampled_from(logs))
            kind = data.draw(st.sampled_from(["text", "rename", "delete", "bytes"]))
            if not log.exists():
                continue
            if kind == "text":
                text = log.read_bytes().decode("utf-8", errors="replace")
                start = data.draw(st.integers(0, len(text)))
                end = data.draw(st.integers(start, min(len(text), start + 12)))
                text = text[:start] + "".join(data.draw(st.lists(LOG_ALPHABET, max_size=6))) + text[end:]
                log.write_text(text, encoding="utf-8")
            elif kind == "rename":
                name = data.draw(st.sampled_from(["table_iter01_rank0.log", "table_iter5_rank7.log",
                                                  "table_iter3_rank0.log", "table_iter1_rank0x.log"]))
                log.rename(directory / name)
            elif kind == "delete":
                log.unlink()
            else:
                log.write_bytes(mutate_bytes(log.read_bytes(), data.draw))
        assert_loads_or_one_line(load_trace, directory)
