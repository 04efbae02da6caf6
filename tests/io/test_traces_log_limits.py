"""SmartMoE raw logs are read within bounds: a log over MAX_LOG_BYTES is refused from its size before it is read,
and the trace's size is checked from the first log's first line on, before the rest is parsed. Each refusal is one
line naming the log (or, for the trace's size, the directory), fast and with little memory."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import moesim.io.smartmoe as traces
import moesim.spec.trace as trace_spec
from moesim.io.smartmoe import MAX_LOG_BYTES, import_smartmoe_logs
from moesim.spec.errors import SpecError


def refusal(directory: Path, blame: Path, key: str | None = None, max_peak_bytes: int = 2**20) -> str:
    """The one line import_smartmoe_logs(directory) fails with; it names `blame`, takes < 1 s and allocates at most
    `max_peak_bytes` (tracemalloc: Python objects and numpy arrays)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            import_smartmoe_logs(directory)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < max_peak_bytes, peak
    line = info.value.one_line()
    assert "\n" not in line and info.value.source == str(blame) and line.startswith(f"{blame}: ")
    if key is not None:
        assert info.value.key == key, line
    return line


def test_a_60_mb_log_is_refused_before_it_is_read(tmp_path: Path) -> None:
    log = tmp_path / "table_iter1_rank0.log"
    with log.open("w", encoding="utf-8") as f:  # one valid-looking line of 20 M counts
        f.write("0: [[")
        f.write("177, " * 12_000_000)
        f.write("1]]\n")
    assert log.stat().st_size > 60 * 10**6
    line = refusal(tmp_path, log)
    assert f"{log.stat().st_size:,} bytes" in line and f"at most {MAX_LOG_BYTES:,} bytes (MAX_LOG_BYTES)" in line


def test_a_sparse_log_is_refused_without_reading(tmp_path: Path) -> None:
    log = tmp_path / "table_iter1_rank0.log"
    with log.open("wb") as f:
        f.truncate(2**40)  # 1 TiB declared, nothing on disk
    assert "1,099,511,627,776 bytes" in refusal(tmp_path, log)


def test_the_size_cap_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "table_iter1_rank0.log"
    log.write_text("0: [[1, 2]]\n1: [[3, 4]]\n", encoding="utf-8")
    size = log.stat().st_size
    monkeypatch.setattr(traces, "MAX_LOG_BYTES", size)
    assert import_smartmoe_logs(tmp_path).counts.shape == (1, 2, 1, 1, 2)
    monkeypatch.setattr(traces, "MAX_LOG_BYTES", size - 1)
    assert f"{size:,} bytes" in refusal(tmp_path, log)


def test_a_log_whose_size_is_not_reported_is_still_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that reports no size (or grows after the check) is read only up to the cap plus one byte."""
    log = tmp_path / "table_iter1_rank0.log"
    log.write_text("0: [[1, 2]]\n" * 100, encoding="utf-8")
    monkeypatch.setattr(traces, "MAX_LOG_BYTES", 500)
    monkeypatch.setattr(traces.os, "fstat", lambda fd: SimpleNamespace(st_size=0))
    assert "more than 500 bytes" in refusal(tmp_path, log)


def write_logs(directory: Path, iterations: int, ranks: int, text: str) -> list[Path]:
    logs = [directory / f"table_iter{it}_rank{r}.log" for it in range(iterations) for r in range(ranks)]
    for log in logs:
        log.write_text(text, encoding="utf-8")
    return logs


def test_the_trace_size_is_checked_from_the_first_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 iterations x 3 ranks x [2 micro-batches x 5 experts] = 120 counts per layer. The first log's first line is
    enough to refuse 119 cells: its second line (garbage) and the other logs are never parsed."""
    table = np.arange(10).reshape(2, 5).tolist()
    logs = write_logs(tmp_path, 4, 3, f"0: {table}\n1: not a table\n")
    monkeypatch.setattr(trace_spec, "MAX_TRACE_CELLS", 119)
    line = refusal(tmp_path, tmp_path, key="logs")
    assert "(4, 1, 2, 3, 5)" in line and "at most 119 counts" in line
    assert logs[0].name == "table_iter0_rank0.log"


def test_the_trace_size_is_checked_layer_by_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two layers fit, the third does not: refused before the fourth line is parsed."""
    table = [[1, 2], [3, 4]]
    write_logs(tmp_path, 2, 2, "".join(f"{layer}: {table}\n" for layer in range(3)) + "3: garbage\n")
    monkeypatch.setattr(trace_spec, "MAX_TRACE_CELLS", 2 * 2 * 2 * 2 * 2)  # 2 layers' worth
    assert "(2, 3, 2, 2, 2)" in refusal(tmp_path, tmp_path, key="logs")
    monkeypatch.setattr(trace_spec, "MAX_TRACE_CELLS", 2 * 3 * 2 * 2 * 2)
    assert "line 4" in refusal(tmp_path, tmp_path / "table_iter0_rank0.log")


def test_a_log_at_the_cap_parses_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MiB of counts (a smaller cap, same code): the parse's peak is a small multiple of the log's size."""
    cap = 2**20
    monkeypatch.setattr(traces, "MAX_LOG_BYTES", cap)
    experts = 1024
    row = ", ".join(["257"] * experts)
    rows = (cap - 100) // (len(row) + 4)
    log = tmp_path / "table_iter1_rank0.log"
    log.write_text("0: [" + ", ".join([f"[{row}]"] * rows) + "]\n", encoding="utf-8")
    assert cap - 2 * (len(row) + 4) < log.stat().st_size <= cap
    tracemalloc.start()
    try:
        trace = import_smartmoe_logs(tmp_path, top_k=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert trace.counts.shape == (1, 1, rows, 1, experts) and np.all(trace.counts == 257)
    assert peak < 30 * cap, peak


def test_logs_are_parsed_as_before(tmp_path: Path) -> None:
    """Whole floats, ints and mixed rows give the same int32 counts."""
    log = tmp_path / "table_iter3_rank0.log"
    log.write_text("0: [[177.0, 2, 0], [2147483647, 0.0, 1e3]]\r\n\n1: [[1, 2, 3], [4, 5, 6]]\n", encoding="utf-8")
    trace = import_smartmoe_logs(tmp_path)
    assert trace.path == str(tmp_path) and trace.counts.dtype == np.int32
    assert trace.counts[0, :, :, 0].tolist() == [[[177, 2, 0], [2147483647, 0, 1000]], [[1, 2, 3], [4, 5, 6]]]
    assert os.fspath(log) not in trace.source
