"""Bounds of the trace fit: a tiny file declaring a huge trace is refused from its sizes, with one line naming the
file, before anything sized by them is allocated (in `moesim trace fit`, in `moesim validate` of a scenario with
routing.fit_from, and under an address-space limit); a MemoryError is one line; the chunked computation gives the
very same numbers as one pass."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import moesim.routing.fit as fit
from moesim.cli import main
from moesim.io.traces import TRACE_COLUMNS, load_trace, write_trace
from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace

ROOT = Path(__file__).resolve().parents[2]
HUGE_EXPERTS = 2_000_000  # one row of these asked the old fit for ~30 GiB


def declared_trace(path: Path, layers: int = 1, experts: int = HUGE_EXPERTS) -> Path:
    """A few-KB Parquet trace with ONE non-zero count whose metadata declares `layers` x `experts`."""
    cols = {c: np.zeros(1, dtype=np.int64) for c in TRACE_COLUMNS}
    cols["tokens"][0] = 5
    table = pa.table(cols).replace_schema_metadata(
        {b"shape": f"[{layers}, 1, 1, {experts}]".encode(), b"steps": b"[0]", b"top_k": b"2"})
    pq.write_table(table, path)
    assert path.stat().st_size < 4096
    return path


def small_trace(layers: int = 3, experts: int = 16, seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(experts, 0.5), size=layers)
    counts = np.stack([rng.multinomial(256, shares[layer], size=(5, 2, 3)) for layer in range(layers)], axis=1)
    return RoutingTrace(counts.astype(np.int32), np.arange(5), 2, "test")


def one_line(err: SpecError, path: Path) -> str:
    line = err.one_line()
    assert "\n" not in line and err.source == str(path) and line.startswith(f"{path}: ")
    return line


def test_many_experts_are_refused_from_the_sizes_with_little_memory(tmp_path: Path) -> None:
    path = declared_trace(tmp_path / "huge.parquet")
    trace = load_trace(path)
    assert trace.path == str(path)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError) as info:
            fit.fit_trace(trace)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak  # nothing sized by draws x experts
    line = one_line(info.value, path)
    assert info.value.key == "num_experts" and f"{HUGE_EXPERTS}" in line and "MAX_FIT_RANDOM_BYTES" in line
    assert f"at most {fit.MAX_FIT_RANDOM_BYTES // (fit.DRAWS * 152):,} experts" in line


def test_the_expert_bound_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = small_trace(layers=1, experts=16)
    monkeypatch.setattr(fit, "MAX_FIT_RANDOM_BYTES", 16 * 8 * 152)  # 16 experts x 8 draws x 152 bytes
    fit.fit_trace(trace, draws=8)
    with pytest.raises(SpecError, match="at most 14 experts to fit with 9 draws"):
        fit.fit_trace(trace, draws=9)


def test_many_layers_are_refused_from_the_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = declared_trace(tmp_path / "deep.parquet", layers=600_000, experts=4)
    with pytest.raises(SpecError) as info:
        fit.fit_trace(load_trace(path))
    line = one_line(info.value, path)
    assert info.value.key == "num_layers" and "MAX_FIT_MODEL_SHARES" in line
    assert f"at most {fit.MAX_FIT_MODEL_SHARES // (fit.DRAWS * 4):,} layers" in line
    monkeypatch.setattr(fit, "MAX_FIT_MODEL_SHARES", 3 * 16 * 8)
    fit.fit_trace(small_trace(layers=3, experts=16), draws=8)
    with pytest.raises(SpecError, match="at most 2 layers"):
        fit.fit_trace(small_trace(layers=3, experts=16), draws=9)


def test_cli_trace_fit_and_validate_answer_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = declared_trace(tmp_path / "huge.parquet")
    assert main(["trace", "fit", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: num_experts: got {HUGE_EXPERTS}" in err[0]
    scenario = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    assert "routing: {distribution: zipf, zipf_s: 0.5}" in scenario
    (tmp_path / "s.yaml").write_text(scenario.replace("routing: {distribution: zipf, zipf_s: 0.5}",
                                                      "routing: {fit_from: huge.parquet}"))
    assert main(["validate", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "MAX_FIT_RANDOM_BYTES" in err[0]


def test_refused_under_an_address_space_limit(tmp_path: Path) -> None:
    """In a process limited to 1 GiB of address space (a normal fit runs in it), the old 30 GiB request was a
    MemoryError traceback; now it is the one-line refusal, exit status 2."""
    path = declared_trace(tmp_path / "huge.parquet")
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
        from moesim.cli import main
        sys.exit(main(["trace", "fit", {str(path)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert err[0].startswith(f"moesim: error: {path}: num_experts") and "Traceback" not in done.stderr


def test_memory_error_while_fitting_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_trace(tmp_path / "t.parquet", small_trace())

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(fit, "_draws", exhausted)
    with pytest.raises(SpecError) as info:
        fit.fit_trace(load_trace(path))
    assert "MemoryError" in one_line(info.value, path)
    monkeypatch.setattr(fit, "observed_curves", exhausted)
    with pytest.raises(SpecError):
        fit.fit_trace(load_trace(path))


def test_chunking_changes_no_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 (step, micro-batch) rows and model curves 2 candidates at a time: the same report, bit for bit."""
    trace = small_trace(layers=4, experts=16)
    whole = fit.fit_trace(trace, draws=32)
    monkeypatch.setattr(fit, "_OBSERVED_CHUNK_ELEMENTS", 4 * 16)
    monkeypatch.setattr(fit, "_CHUNK_ELEMENTS", 2 * 32 * 16)
    assert len(list(fit._row_blocks(trace.counts, 0))) == 3  # 10 rows in blocks of 2 steps (4, 4, 2)
    chunked = fit.fit_trace(trace, draws=32)
    assert chunked == whole
    monkeypatch.setattr(fit, "_OBSERVED_CHUNK_ELEMENTS", 1)  # fewer than one row: a micro-batch at a time
    assert len(list(fit._row_blocks(trace.counts, 0))) == 10
    assert fit.fit_trace(trace, draws=32) == whole
