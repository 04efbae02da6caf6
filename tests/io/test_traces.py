"""Routing trace files: moesim Parquet, the SmartMoE counts.npz and the SmartMoE artifact's raw logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moesim.io.smartmoe import import_smartmoe_logs, load_smartmoe_npz
from moesim.io.traces import (TRACE_COLUMNS, load_trace, read_trace,
                              write_trace)
from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace

SHARED_NPZ = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces" / "smartmoe-ae" / "counts.npz"


def small_trace(top_k: int | None = 2) -> RoutingTrace:
    """counts [3 steps, 2 layers, 2 micro-batches, 3 ranks, 4 experts] with zeros, incl. a last all-zero expert."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 50, size=(3, 2, 2, 3, 4))
    counts[counts < 10] = 0
    counts[..., -1] = 0
    return RoutingTrace(counts, np.array([1, 11, 21]), top_k, "unit test")


def assert_same(a: RoutingTrace, b: RoutingTrace) -> None:
    assert a.counts.shape == b.counts.shape
    assert np.array_equal(a.counts, b.counts)
    assert np.array_equal(a.steps, b.steps)
    assert a.top_k == b.top_k


def expect_error(path: Path, load, key: str | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(path)
    assert str(path) in info.value.one_line()
    assert "\n" not in info.value.one_line()
    if key is not None:
        assert info.value.key == key
    return info.value


# ---------------------------------------------------------------- moesim Parquet


@pytest.mark.parametrize("top_k", [2, None])
def test_parquet_round_trip_keeps_counts_steps_top_k_and_shape(tmp_path: Path, top_k: int | None) -> None:
    trace = small_trace(top_k)
    path = write_trace(tmp_path / "t.parquet", trace)
    back = read_trace(path)
    assert_same(back, trace)
    assert back.source == "unit test"
    assert back.counts.shape[-1] == 4  # the all-zero last expert survives through the metadata
    meta = pq.read_schema(path).metadata
    assert meta[b"moesim_trace_version"] == b"1"
    assert (b"top_k" in meta) == (top_k is not None)


def test_parquet_stores_long_form_non_zero_rows_only(tmp_path: Path) -> None:
    trace = small_trace()
    frame = pd.read_parquet(write_trace(tmp_path / "t.parquet", trace))
    assert tuple(frame.columns) == TRACE_COLUMNS
    assert len(frame) == np.count_nonzero(trace.counts)
    assert (frame["tokens"] > 0).all()
    assert set(frame["step"]) == {1, 11, 21}  # step labels, not positions


def test_all_zero_trace_round_trips(tmp_path: Path) -> None:
    trace = RoutingTrace(np.zeros((2, 1, 1, 2, 4), dtype=np.int64), np.array([5, 7]), 1, "zeros")
    assert_same(read_trace(write_trace(tmp_path / "z.parquet", trace)), trace)


def test_parquet_written_by_plain_pandas_is_densified(tmp_path: Path) -> None:
    frame = pd.DataFrame({"step": [100, 100, 300, 300], "layer": [0, 1, 1, 1], "micro_batch": [0, 0, 1, 1],
                          "src_rank": [0, 2, 1, 1], "expert": [3, 0, 2, 2], "tokens": [5, 6, 7, 1]},
                         index=[7, 8, 9, 10])  # duplicate keys add up; pandas' own index column is not data
    path = tmp_path / "plain.parquet"
    frame.to_parquet(path)
    assert "__index_level_0__" in pq.read_schema(path).names
    trace = read_trace(path)
    assert trace.counts.shape == (2, 2, 2, 3, 4)
    assert list(trace.steps) == [100, 300] and trace.top_k is None
    assert trace.counts.sum() == 19
    assert trace.counts[0, 0, 0, 0, 3] == 5 and trace.counts[0, 1, 0, 2, 0] == 6 and trace.counts[1, 1, 1, 1, 2] == 8


def test_narrow_integer_columns_are_accepted(tmp_path: Path) -> None:
    frame = pd.DataFrame({c: np.array([0, 1], dtype=np.uint16) for c in TRACE_COLUMNS})
    frame.to_parquet(tmp_path / "u16.parquet", index=False)
    assert read_trace(tmp_path / "u16.parquet").counts[1, 1, 1, 1, 1] == 1


def _plain(tmp_path: Path, **columns) -> Path:
    data = {c: [0, 1] for c in TRACE_COLUMNS}
    data.update(columns)
    path = tmp_path / "bad.parquet"
    pd.DataFrame({k: v for k, v in data.items() if v is not None}).to_parquet(path, index=False)
    return path


def test_missing_column_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    expect_error(_plain(tmp_path, expert=None), read_trace, key="expert")


def test_extra_column_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    assert "extra column" in expect_error(_plain(tmp_path, note=["x", "y"]), read_trace, key="note").one_line()


def test_negative_values_are_a_spec_error(tmp_path: Path) -> None:
    expect_error(_plain(tmp_path, tokens=[3, -1]), read_trace, key="tokens")


@pytest.mark.parametrize("values", [[1.0, 2.5], ["a", "b"], pd.array([1, None], dtype="Int64")])
def test_non_integer_or_missing_values_are_a_spec_error(tmp_path: Path, values) -> None:
    expect_error(_plain(tmp_path, tokens=values), read_trace, key="tokens")


def test_unreadable_files_are_spec_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet\n", encoding="utf-8")
    expect_error(text, read_trace)
    expect_error(tmp_path / "absent.parquet", read_trace)


def test_index_beyond_the_recorded_shape_is_a_spec_error(tmp_path: Path) -> None:
    table = pq.read_table(write_trace(tmp_path / "t.parquet", small_trace()))
    experts = table.column("expert").to_numpy().copy()
    experts[0] = 9
    table = table.set_column(table.column_names.index("expert"), "expert", pa.array(experts))
    pq.write_table(table, tmp_path / "t.parquet")
    expect_error(tmp_path / "t.parquet", read_trace, key="expert")


@pytest.mark.parametrize("meta", [{b"steps": b"not json"}, {b"steps": b"[21, 1]"}, {b"shape": b"[1, 2]"},
                                  {b"top_k": b"two"}, {b"top_k": b"9"}])
def test_bad_metadata_is_a_spec_error(tmp_path: Path, meta: dict) -> None:
    table = pq.read_table(write_trace(tmp_path / "t.parquet", small_trace()))
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), tmp_path / "t.parquet")
    expect_error(tmp_path / "t.parquet", read_trace)


def test_step_missing_from_the_metadata_is_a_spec_error(tmp_path: Path) -> None:
    table = pq.read_table(write_trace(tmp_path / "t.parquet", small_trace()))
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"steps": b"[1, 11]"}),
                   tmp_path / "t.parquet")
    expect_error(tmp_path / "t.parquet", read_trace, key="step")


# ---------------------------------------------------------------- SmartMoE raw logs


def write_logs(directory: Path, counts: np.ndarray, iterations: list[int], floats: bool = False) -> Path:
    """counts [iterations, layers, micro_batches, ranks, experts] as table_iter{N}_rank{r}.log files."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, it in enumerate(iterations):
        for rank in range(counts.shape[3]):
            lines = []
            for layer in range(counts.shape[1]):
                table = counts[i, layer, :, rank].tolist()
                body = str([[float(v) for v in row] for row in table]) if floats else str(table)
                lines.append(f"{layer}:{body}" if floats else f"{layer}: {body}")
            (directory / f"table_iter{it}_rank{rank}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize("floats", [False, True])  # the artifact's own logs write counts as 177.0
def test_raw_logs_round_trip(tmp_path: Path, floats: bool) -> None:
    counts = np.arange(3 * 2 * 2 * 3 * 4).reshape(3, 2, 2, 3, 4)
    directory = write_logs(tmp_path / "logs", counts, [1, 11, 21], floats)
    trace = import_smartmoe_logs(directory)
    assert np.array_equal(trace.counts, counts)
    assert list(trace.steps) == [1, 11, 21] and trace.top_k == 2
    assert import_smartmoe_logs(directory, top_k=None).top_k is None


def test_raw_logs_sort_iterations_numerically(tmp_path: Path) -> None:
    counts = np.arange(3 * 1 * 1 * 1 * 2).reshape(3, 1, 1, 1, 2)
    trace = import_smartmoe_logs(write_logs(tmp_path / "logs", counts, [2, 10, 101]))
    assert list(trace.steps) == [2, 10, 101] and np.array_equal(trace.counts, counts)


def test_the_example_line_parses(tmp_path: Path) -> None:
    (tmp_path / "table_iter1_rank0.log").write_text("0: [[1, 2, 3, 4], [5, 6, 7, 8]]\n", encoding="utf-8")
    trace = import_smartmoe_logs(tmp_path)
    assert trace.counts.shape == (1, 1, 2, 1, 4)
    assert trace.counts[0, 0, 1, 0].tolist() == [5, 6, 7, 8]


def test_missing_rank_file_is_a_spec_error(tmp_path: Path) -> None:
    directory = write_logs(tmp_path / "logs", np.ones((2, 1, 1, 3, 2), dtype=int), [1, 11])
    (directory / "table_iter11_rank1.log").unlink()
    assert "table_iter11_rank1.log" in expect_error(directory, import_smartmoe_logs, key="rank").one_line()
    (directory / "table_iter1_rank1.log").unlink()  # rank 1 gone everywhere, rank 2 still there
    expect_error(directory, import_smartmoe_logs, key="rank")


@pytest.mark.parametrize("line", ["0 [[1, 2]]", "0: [[1, 2], [3, 4]", "zero: [[1, 2]]", "0: [[1, 2], [3]]",
                                  "0: [[1.5, 2]]", "0: [[-1, 2]]", "0: [[1, \"a\"]]"])
def test_malformed_line_is_a_spec_error_naming_the_file(tmp_path: Path, line: str) -> None:
    log = tmp_path / "table_iter1_rank0.log"
    log.write_text(line + "\n", encoding="utf-8")
    assert str(log) in expect_error(tmp_path, import_smartmoe_logs).one_line()


@pytest.mark.parametrize("text", ["0: [[1, 2]]\n2: [[1, 2]]\n", "0: [[1, 2]]\n1: [[1, 2, 3]]\n", "0: [1, 2]\n",
                                  "0: [[1, 2]]\n0: [[1, 2]]\n", "\n"])
def test_inconsistent_layers_are_spec_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "table_iter1_rank0.log").write_text(text, encoding="utf-8")
    expect_error(tmp_path, import_smartmoe_logs)


def test_logs_of_different_shapes_are_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "table_iter1_rank0.log").write_text("0: [[1, 2]]\n", encoding="utf-8")
    (tmp_path / "table_iter1_rank1.log").write_text("0: [[1, 2, 3]]\n", encoding="utf-8")
    expect_error(tmp_path, import_smartmoe_logs)


def test_directory_without_logs_and_undecodable_log_are_spec_errors(tmp_path: Path) -> None:
    expect_error(tmp_path, import_smartmoe_logs)
    (tmp_path / "table_iter1_rank0.log").write_bytes(b"\xff\xfe0: [[1]]\n")
    expect_error(tmp_path, import_smartmoe_logs)


# ---------------------------------------------------------------- SmartMoE npz and dispatch


def write_npz(path: Path, counts_rank_major: np.ndarray, iterations) -> Path:
    np.savez(path, counts=counts_rank_major, iterations=np.asarray(iterations))
    return path


def test_npz_is_transposed_to_micro_batch_before_rank(tmp_path: Path) -> None:
    raw = np.arange(2 * 3 * 4 * 2 * 5, dtype=np.uint16).reshape(2, 3, 4, 2, 5)  # [snap, layer, rank, mb, expert]
    trace = load_smartmoe_npz(write_npz(tmp_path / "c.npz", raw, [1, 11]))
    assert trace.counts.shape == (2, 3, 2, 4, 5)
    assert np.array_equal(trace.counts, raw.transpose(0, 1, 3, 2, 4))
    assert trace.top_k == 2 and list(trace.steps) == [1, 11]


@pytest.mark.parametrize("counts,iterations", [(np.zeros((2, 1, 1, 1, 2), dtype=int), [1, 2, 3]),
                                               (-np.ones((1, 1, 1, 1, 2), dtype=int), [1]),
                                               (np.full((1, 1, 1, 1, 2), 1.5), [1]),
                                               (np.zeros((1, 2, 2), dtype=int), [1])])
def test_bad_npz_contents_are_spec_errors(tmp_path: Path, counts: np.ndarray, iterations: list) -> None:
    expect_error(write_npz(tmp_path / "c.npz", counts, iterations), load_smartmoe_npz)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04broken zip", b"plain text"])
def test_unreadable_npz_is_a_spec_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "c.npz").write_bytes(content)
    expect_error(tmp_path / "c.npz", load_smartmoe_npz)


def test_npz_without_the_arrays_is_a_spec_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", other=np.zeros(3))
    expect_error(tmp_path / "c.npz", load_smartmoe_npz)
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    expect_error(tmp_path / "a.npz", load_smartmoe_npz)


def test_load_trace_dispatches_by_kind(tmp_path: Path) -> None:
    trace = small_trace()
    assert_same(load_trace(write_trace(tmp_path / "t.parquet", trace)), trace)
    raw = trace.counts.transpose(0, 1, 3, 2, 4)
    assert_same(load_trace(str(write_npz(tmp_path / "t.npz", raw, trace.steps))), trace)
    assert_same(load_trace(write_logs(tmp_path / "logs", trace.counts, list(trace.steps))), trace)
    expect_error(tmp_path / "absent.parquet", load_trace)


# ---------------------------------------------------------------- the shared SmartMoE trace (GPL-3.0, read only)


@pytest.fixture(scope="module")
def shared_trace() -> RoutingTrace:
    if not SHARED_NPZ.is_file():
        pytest.skip(f"shared SmartMoE trace not present at {SHARED_NPZ}")
    return load_trace(SHARED_NPZ)


def test_shared_smartmoe_trace_shape_and_labels(shared_trace: RoutingTrace) -> None:
    assert shared_trace.counts.shape == (501, 24, 4, 16, 32)  # [step, layer, micro_batch, src_rank, expert]
    assert shared_trace.steps[0] == 1 and np.all(np.diff(shared_trace.steps) == 10)
    assert shared_trace.top_k == 2
    assert "SmartMoE" in shared_trace.source


def test_shared_smartmoe_trace_rows_sum_to_tokens_times_top_k(shared_trace: RoutingTrace) -> None:
    assert np.all(shared_trace.counts.sum(axis=-1, dtype=np.int64) == 2048 * 2)


def test_shared_smartmoe_trace_reaches_the_top_k_cap(shared_trace: RoutingTrace) -> None:
    last = shared_trace.counts[-1].astype(np.int64)  # after warm-up
    assert last.max() <= 2048  # a token picks an expert at most once
    ratio = last.max(axis=-1) / last.mean(axis=-1)
    assert ratio.max() == pytest.approx(32 / 2)
