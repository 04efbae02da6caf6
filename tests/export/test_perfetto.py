"""Chrome/Perfetto trace export."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from moesim.export.perfetto import chrome_trace, write_chrome_trace
from moesim.sim.records import OpKind, Phase, RecordLog
from moesim.spec.errors import SpecError


def _records(n_ranks: int = 4, n_steps: int = 2) -> pd.DataFrame:
    """Per step and rank: attention [0, 1 ms), dispatch [1, 1.5 ms) with bytes, expert [1.5, 3 ms) with rows,
    a zero-length combine and a zero-length attention at 3 ms. Step s lasts (3 + s) ms: the last rank idles."""
    log = RecordLog()
    for step in range(n_steps):
        for rank in range(n_ranks):
            log.add(step, rank, 0, 1, Phase.FORWARD, OpKind.ATTENTION, 0.0, 1e-3)
            log.add(step, rank, 0, 1, Phase.FORWARD, OpKind.DISPATCH, 1e-3, 1.5e-3, nbytes=4096.0)
            log.add(step, rank, 0, 1, Phase.FORWARD, OpKind.EXPERT, 1.5e-3, 3e-3, rows=128)
            log.add(step, rank, 0, 1, Phase.FORWARD, OpKind.COMBINE, 3e-3, 3e-3)
            log.add(step, rank, 0, 1, Phase.FORWARD, OpKind.ATTENTION, 3e-3, 3e-3)
            if rank == n_ranks - 1:
                log.add(step, rank, -1, -1, Phase.STEP, OpKind.IDLE, 3e-3, (3 + step) * 1e-3)
    return log.to_frame()


def _complete(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def _meta(trace: dict, name: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == name]


def test_event_count_units_and_mapping() -> None:
    trace = chrome_trace(_records(n_steps=1), ranks_per_node=2)
    assert trace["displayTimeUnit"] == "ms" and "metadata" not in trace
    events = _complete(trace)
    # 4 ops per rank kept (zero-length attention dropped, zero-length combine kept); step 0 has no idle time
    assert len(events) == 4 * 4
    first = events[0]
    assert first == {"name": "attention", "cat": "fwd", "ph": "X", "ts": 0.0, "dur": pytest.approx(1000.0),
                     "pid": 0, "tid": 0, "args": {"micro_batch": 0, "layer": 1}}
    dispatch = next(e for e in events if e["name"] == "dispatch" and e["tid"] == 3)
    assert dispatch["pid"] == 1 and dispatch["ts"] == pytest.approx(1000.0) and dispatch["dur"] == pytest.approx(500.0)
    assert dispatch["args"]["bytes"] == 4096.0 and "rows" not in dispatch["args"]
    expert = next(e for e in events if e["name"] == "expert")
    assert expert["args"]["rows"] == 128 and "bytes" not in expert["args"]
    combine = [e for e in events if e["name"] == "combine"]
    assert len(combine) == 4 and all(e["dur"] == 0.0 for e in combine)
    assert all(isinstance(e["ts"], float) and isinstance(e["dur"], float) for e in events)
    assert [(e["tid"], e["ts"]) for e in events] == sorted((e["tid"], e["ts"]) for e in events)


def test_metadata_names_nodes_and_ranks_in_order() -> None:
    trace = chrome_trace(_records(n_steps=1), ranks_per_node=2)
    assert {e["pid"]: e["args"]["name"] for e in _meta(trace, "process_name")} == {0: "node 0", 1: "node 1"}
    threads = _meta(trace, "thread_name")
    assert [(e["pid"], e["tid"], e["args"]["name"]) for e in threads] == [
        (0, 0, "rank 0"), (0, 1, "rank 1"), (1, 2, "rank 2"), (1, 3, "rank 3")]
    assert [(e["tid"], e["args"]["sort_index"]) for e in _meta(trace, "thread_sort_index")] == [
        (0, 0), (1, 1), (2, 2), (3, 3)]


def test_steps_are_laid_end_to_end() -> None:
    events = _complete(chrome_trace(_records(n_steps=3), ranks_per_node=8))
    starts = sorted({e["ts"] for e in events if e["name"] == "attention" and e["tid"] == 0})
    # step 0 lasts 3 ms, step 1 lasts 4 ms: steps start at 0, 3000 and 7000 us
    assert starts == pytest.approx([0.0, 3000.0, 7000.0])
    idle = [e for e in events if e["name"] == "idle"]
    assert [(e["ts"], e["dur"]) for e in idle] == [pytest.approx((6000.0, 1000.0)), pytest.approx((10000.0, 2000.0))]


def test_step_filter_offsets_only_kept_steps() -> None:
    events = _complete(chrome_trace(_records(n_steps=3), ranks_per_node=8, steps=[2]))
    assert min(e["ts"] for e in events) == 0.0  # step 2 starts at 0 when it is the only step kept
    assert {e["name"] for e in events} == {"attention", "dispatch", "expert", "combine", "idle"}
    assert len(events) == 4 * 4 + 1


def test_rank_thinning_keeps_first_and_last_and_notes_it() -> None:
    trace = chrome_trace(_records(n_ranks=100, n_steps=1), ranks_per_node=8, max_ranks=10)
    ranks = sorted({e["tid"] for e in _complete(trace)})
    assert len(ranks) == 10 and ranks[0] == 0 and ranks[-1] == 99
    assert [e["tid"] for e in _meta(trace, "thread_name")] == ranks
    assert trace["metadata"] == {"moesim_note": "showing 10 of 100 ranks"}
    assert all(e["pid"] == e["tid"] // 8 for e in _complete(trace))


def test_all_ranks_when_max_ranks_is_none() -> None:
    trace = chrome_trace(_records(n_ranks=100, n_steps=1), ranks_per_node=8, max_ranks=None)
    assert len({e["tid"] for e in _complete(trace)}) == 100 and "metadata" not in trace


def test_round_trips_through_json_file(tmp_path: Path) -> None:
    trace = chrome_trace(_records(), ranks_per_node=2)
    path = tmp_path / "trace.json"
    write_chrome_trace(path, trace)
    text = path.read_text()
    assert json.loads(text) == trace
    assert ", " not in text and "\n" not in text[:-1]  # compact, one line
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]


def test_wait_s_column_becomes_wait_us_arg() -> None:
    df = _records(n_steps=1)
    df["wait_s"] = 0.0
    df.loc[(df["op"] == "dispatch") & (df["rank"] == 1), "wait_s"] = 2e-4
    events = _complete(chrome_trace(df, ranks_per_node=8))
    waits = [(e["tid"], e["args"]["wait_us"]) for e in events if "wait_us" in e["args"]]
    assert waits == [(1, pytest.approx(200.0))]


def test_enum_valued_columns_are_named_by_value() -> None:
    df = _records(n_steps=1)
    df["op"] = [OpKind(v) for v in df["op"].astype(str)]
    df["phase"] = [Phase(v) for v in df["phase"].astype(str)]
    events = _complete(chrome_trace(df, ranks_per_node=8))
    assert events[0]["name"] == "attention" and events[0]["cat"] == "fwd"


def test_empty_records_give_an_empty_trace() -> None:
    trace = chrome_trace(_records().iloc[:0], ranks_per_node=8)
    assert trace["traceEvents"] == []


@pytest.mark.parametrize("kwargs", [{"ranks_per_node": 0}, {"ranks_per_node": 8, "max_ranks": 1}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(SpecError):
        chrome_trace(_records(), **kwargs)
