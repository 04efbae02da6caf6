"""The worker side of a sweep: each worker process loads the sweep file once (so a routing trace is read and
fitted once per process, not once per point and not pickled per task), then simulates points by index and
writes each point's row (moesim.sweep.rows) atomically to its own Parquet file the moment it is finished."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from moesim.io.results import WriteError
from moesim.io.sweep_points import POINT_KEY
from moesim.metrics.errors import ResultError
from moesim.metrics.summary import summarize
from moesim.metrics.types import RunSummary
from moesim.sim.simulate import simulate
from moesim.spec.simulation import RecordDetail
from moesim.spec.errors import SpecError
from moesim.sweep.plan import SweepPoint, load_points
from moesim.sweep.rows import row_table, swept_columns, write_point

RowOf = Callable[[dict, RunSummary], dict]

# One worker process's points and row builder, set once by `init_worker` (the pool's initializer). This state
# lives only in the worker process, which serves one sweep and is then discarded.
_WORKER: dict = {}


def init_worker(scenario_path: Path, steps: int | None, seed: int | None, row_of: RowOf,
                trace: Path | None = None) -> None:
    """Load the sweep as the parent planned it: same file, same --steps/--seed/--trace (SweepPlan's fields)."""
    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers, which would
    # otherwise each print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.clear()
    try:
        keys, points = load_points(scenario_path, steps, seed, trace)
    except SpecError as err:  # reported when a point is asked for, as one line
        _WORKER["error"] = err.one_line()
        return
    # typed from all the points' values, so every point file of the sweep has the same column types
    swept = swept_columns(keys, [p.values for p in points])
    _WORKER.update(points={p.index: p for p in points}, row_of=row_of, swept=swept)


def simulate_point_row(point: SweepPoint, row_of: RowOf) -> dict:
    """The point's row: its values, its summary's metrics and its key. A sweep keeps no per-op records (it writes
    none), only the per-rank sums the summary needs (simulation.records: summary)."""
    summary = summarize(simulate(point.scenario, records=RecordDetail.SUMMARY))
    return {**row_of(point.values, summary), POINT_KEY: point.key}


def run_point(index: int, key: str, out_file: Path) -> str | None:
    """Simulate point `index` and write its row to `out_file`; None, or one line saying why it failed."""
    if "error" in _WORKER:
        return _WORKER["error"]
    point: SweepPoint | None = _WORKER["points"].get(index)
    if point is None or point.key != key:  # the file was edited after the sweep started
        return f"point {index + 1} is no longer the point the sweep planned: the scenario file changed; rerun"
    try:
        write_point(out_file, row_table(simulate_point_row(point, _WORKER["row_of"]), _WORKER["swept"]))
    except (SpecError, ResultError, WriteError) as err:
        return " ".join(str(err).split())
    return None
