"""Runs a planned sweep's remaining points in a pool of worker processes (or as Ray tasks, moesim.sweep.ray_backend)
and gathers every point's row from the output directory, the points of earlier, interrupted runs included."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moesim.metrics.errors import ResultError
from moesim.spec.errors import SpecError
from moesim.sweep.out_dir import point_path
from moesim.sweep.plan import SweepPlan, SweepPoint
from moesim.sweep.worker import RowOf, init_worker, run_point


class SweepBackend(Enum):
    """Where the points run: PROCESSES, a pool on this machine (workers read the sweep file); RAY, tasks on a Ray
    cluster (workers get the resolved points from the object store; the driver writes the rows)."""
    PROCESSES = "processes"
    RAY = "ray"


def check_backend(name: str, address: str | None) -> SweepBackend:
    """`--backend NAME [--address ADDR]` as a SweepBackend, checked before anything runs: a one-line SpecError
    for an unknown name, an address for a backend that takes none, Ray asked for and not installed, or an
    address where nothing answers."""
    try:
        backend = SweepBackend(name)
    except ValueError:
        raise SpecError("--backend", name, f"one of: {', '.join(b.value for b in SweepBackend)}") from None
    if address is not None and backend is not SweepBackend.RAY:
        raise SpecError("--address", address, "only with --backend ray (the address of a Ray cluster)")
    if backend is SweepBackend.RAY:
        from moesim.sweep.ray_backend import check_ray  # noqa: PLC0415 - imports ray, an optional extra

        check_ray(address)
    return backend


@dataclass(frozen=True)
class SweepOutcome:
    rows: list[dict]        # one per point in grid order; empty when any point failed
    simulated: int          # points simulated by this run
    skipped: int            # points found in the output directory
    failures: list[str]     # one line per failed point


def default_jobs() -> int:
    return os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext:
    # never "fork": the parent may hold threads and open files; forkserver imports moesim once and forks
    # workers from that clean process, spawn is the portable fallback
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["moesim.sweep.worker"])
        return ctx
    return multiprocessing.get_context("spawn")


def run_sweep(plan: SweepPlan, out_dir: Path, jobs: int | None, row_of: RowOf,
              progress: Callable[[int, int], None] | None = None,
              backend: SweepBackend = SweepBackend.PROCESSES, address: str | None = None) -> SweepOutcome:
    """Simulate the points without a file in `out_dir/points/` with `jobs` processes; `progress(done, total)`
    after each (total: the points this run simulates). A worker that dies (killed, out of memory) is a
    ResultError; the points finished before it stay on disk for the rerun. With SweepBackend.RAY the points
    run on the Ray cluster at `address` (see moesim.sweep.ray_backend), at most `jobs` at a time (None: as many
    as the cluster has CPUs); a rerun with either backend skips the points either wrote."""
    todo = plan.todo(out_dir)
    failures: list[str] = []
    if todo and backend is SweepBackend.RAY:
        from moesim.sweep.ray_backend import simulate_on_ray  # noqa: PLC0415 - imports ray, an optional extra

        failed = simulate_on_ray(plan, todo, out_dir, row_of, progress, address, jobs)
        failures = [_failure(point, error) for point, error in failed]
    elif todo:
        jobs = jobs if jobs is not None else default_jobs()
        failures = _simulate(plan, todo, out_dir, max(1, min(jobs, len(todo))), row_of, progress)
    rows = [] if failures else [_read_row(point_path(out_dir, p.key)) for p in plan.points]
    return SweepOutcome(rows, len(todo), len(plan.points) - len(todo), failures)


def _simulate(plan: SweepPlan, todo: list, out_dir: Path, jobs: int, row_of: RowOf,
              progress: Callable[[int, int], None] | None) -> list[str]:
    failures = []
    pool = ProcessPoolExecutor(jobs, mp_context=_context(), initializer=init_worker,
                               initargs=(plan.scenario_path, plan.steps, plan.seed, row_of, plan.trace))
    try:
        pending = {pool.submit(run_point, p.index, p.key, point_path(out_dir, p.key)): p for p in todo}
        done = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                point = pending.pop(future)
                error = future.result()
                if error is not None:
                    failures.append(_failure(point, error))
                done += 1
                if progress is not None:
                    progress(done, len(todo))
    except BrokenProcessPool:
        raise ResultError(f"a sweep worker process died (killed, or out of memory); the finished points are "
                          f"kept in {out_dir}/points and a rerun resumes from them") from None
    except BaseException:  # Ctrl-C or SIGTERM: stop at once; finished points are already on disk
        _stop(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _stop(pool: ProcessPoolExecutor) -> None:
    # the executor offers no way to stop running tasks: terminate its processes (a point cut short leaves at
    # most a hidden temporary file, never a point file)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _failure(point: SweepPoint, error: str) -> str:
    """The one line a failed point gets, with either backend."""
    label = ",".join(f"{k}={v}" for k, v in point.values.items())
    return f"sweep point {point.index + 1} ({label}): {error}"


def _read_row(path: Path) -> dict:
    """A point file's one row, as Python values (a null swept value stays None)."""
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise ResultError(f"sweep point file {path} cannot be read ({exc}); delete it and rerun") from None
    if len(rows) != 1:
        raise ResultError(f"sweep point file {path} holds {len(rows)} rows, not 1; delete it and rerun")
    return rows[0]
