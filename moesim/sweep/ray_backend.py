"""Runs a sweep's points as Ray tasks, on a local Ray or an existing cluster (`moesim sweep --backend ray`).

On a cluster the workers run on other machines and see none of the driver's files, so nothing here hands them
a path: the driver puts the resolved points (frozen scenarios, profiles inlined, routing traces as arrays) in the
object store once, each task simulates one point and returns its row, and the driver writes that row atomically
to DIR/points/<key>.parquet as each task finishes. So a driver killed mid-sweep loses no finished point and
duplicates none, exactly as with the local processes.

Ray is an optional extra (`pip install 'moesim[ray]'`): this module imports it only inside its functions."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from moesim import __version__
from moesim.io.results import WriteError
from moesim.metrics.errors import ResultError
from moesim.spec.errors import SpecError, Verbatim
from moesim.sweep.out_dir import point_path
from moesim.sweep.plan import SweepPlan, SweepPoint
from moesim.sweep.rows import Column, row_table, swept_columns, write_point
from moesim.sweep.worker import RowOf, simulate_point_row

_NOT_INSTALLED = ("Ray installed: pip install 'moesim[ray]' (or pip install -r requirements.txt, which pins it); "
                  "or leave out --backend ray to run the points in local processes")
_ADDRESS = ("the address of a running Ray cluster: HOST:PORT of its head node (`ray start --head` prints it), "
            "auto (the cluster this machine belongs to) or local (start a Ray on this machine)")
_CONNECT_TIMEOUT_S = 5.0

# A Ray worker process's copy of the sweep's points, keyed by the object's id: fetched and unpickled once per
# process, not once per point (a routing trace may be large), as the local backend loads its file once per
# worker. Ray discards its workers when the driver's job ends, so this never outlives the sweep.
_POINTS_CACHE: dict[str, tuple[SweepPoint, ...]] = {}


def check_ray(address: str | None) -> None:
    """Before anything runs: a one-line SpecError when Ray is not installed, or when there is no cluster where
    `address` (resolved as ray.init resolves it) says."""
    _import_ray()
    _check_address(address)


def _import_ray():
    try:
        import ray  # noqa: PLC0415 - an optional extra: `moesim` works without it
    except ImportError:
        raise SpecError("--backend", "ray", _NOT_INSTALLED) from None
    return ray


def simulate_on_ray(plan: SweepPlan, todo: list[SweepPoint], out_dir: Path, row_of: RowOf,
                    progress: Callable[[int, int], None] | None, address: str | None,
                    max_in_flight: int | None) -> list[tuple[SweepPoint, str]]:
    """Simulate `todo` (points of `plan`) as Ray tasks and write each row to `out_dir/points/` as it arrives;
    returns each failed point with one line saying why. `address`: as ray.init takes it (None: RAY_ADDRESS, else
    a cluster started on this machine, else a new local Ray). A Ray this process is already connected to (a
    Python caller's ray.init) is used as it is. `max_in_flight`: at most this many points submitted at once
    (None: all of them; Ray runs one per free CPU)."""
    ray = _import_ray()
    owned = not ray.is_initialized()
    if owned:
        _connect(ray, address)
    try:
        return _run(ray, plan, todo, out_dir, row_of, progress, max_in_flight)
    finally:
        # A Ray we started stops; a cluster we joined is left, which ends this job: on Ctrl-C or SIGTERM the
        # points still running stop on every node (the finished ones are on disk). Not ray.cancel: in Ray 2.60
        # a cancel that races a task's completion aborts this process (RAY_CHECK "Tried to complete task that
        # was not pending", cf. ray-project/ray#54846), in about 1 of 10 Ctrl-Cs here. A caller's own Ray
        # (not owned) runs such points to the end; their rows are not written.
        if owned:
            ray.shutdown()


def _connect(ray, address: str | None) -> None:
    _check_address(address)  # again: run_sweep may be called without check_backend
    # ray.init replaces the SIGTERM handler with sys.exit(15); keep the CLI's, which unwinds like Ctrl-C
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        # Ray's INFO lines and the workers' output would interleave with the progress bar; Ray keeps them in
        # its session logs (/tmp/ray/session_latest/logs)
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except ConnectionError as exc:  # `auto` (or RAY_ADDRESS) and no cluster running
        raise SpecError("--address", _given(address), f"{_ADDRESS}; Ray says: {_first_line(exc)}") from None
    except Exception as exc:  # Ray could not start or join (a full /tmp, version mismatch): not bad input
        raise ResultError(f"Ray could not start or connect ({type(exc).__name__}: {_first_line(exc)})") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


def _check_address(address: str | None) -> None:
    # ray.init retries an address where nothing answers for minutes, logging as it goes: check the address it
    # will use first (given, or found: RAY_ADDRESS, or a `ray start` cluster on this machine that may have died)
    target = _bootstrap_address(address)
    if target is not None:
        _check_reachable(address, target)


def _bootstrap_address(address: str | None) -> str | None:
    """HOST:PORT of the cluster ray.init(address) will join, resolved as Ray resolves it; None when it will
    start a local Ray."""
    try:  # Ray's own resolution, so that this check and ray.init never disagree
        from ray._private.services import canonicalize_bootstrap_address  # noqa: PLC0415
    except ImportError:  # a Ray without it: check an address given as HOST:PORT only
        return None if address in (None, "auto", "local") else address
    try:
        return canonicalize_bootstrap_address(address)
    except ConnectionError as exc:  # `auto` and no cluster on this machine
        raise SpecError("--address", _given(address), f"{_ADDRESS}; Ray says: {_first_line(exc)}") from None
    except ValueError:
        raise SpecError("--address", _given(address), _ADDRESS) from None


def _check_reachable(address: str | None, target: str) -> None:
    """A one-line SpecError unless something accepts a TCP connection at `target` (HOST:PORT, or ray://...),
    which is `address` as given (None: found by Ray)."""
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("--address", _given(address), _ADDRESS)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        found = "" if address == target else f"; Ray found {target} there (a cluster since stopped?)"
        raise SpecError("--address", _given(address),
                        f"{_ADDRESS}; nothing answers there ({exc.strerror or exc}){found}") from None


def _run(ray, plan: SweepPlan, todo: list[SweepPoint], out_dir: Path, row_of: RowOf,
         progress: Callable[[int, int], None] | None, max_in_flight: int | None) -> list[tuple[SweepPoint, str]]:
    # one object for all points: a trace shared by every point is stored, and sent to each machine, once
    shared = [ray.put(tuple(todo))]  # in a list, so that tasks receive the reference, not the unpickled points
    task = ray.remote(num_cpus=1)(_simulate_point)
    # typed from all the sweep's values, as the local workers do, so every point file has the same column types
    swept = swept_columns(plan.keys, [p.values for p in plan.points])
    queue: Iterator[int] = iter(range(len(todo)))
    pending: dict = {}

    def submit() -> None:
        position = next(queue, None)
        if position is not None:
            pending[task.remote(shared, position, row_of, __version__)] = todo[position]

    failures: list[tuple[SweepPoint, str]] = []
    for _ in range(len(todo) if max_in_flight is None else max(1, max_in_flight)):
        submit()
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        point = pending.pop(ready[0])
        error = _store(ray, ready[0], point, out_dir, swept)
        if error is not None:
            failures.append((point, error))
        submit()
        done += 1
        if progress is not None:
            progress(done, len(todo))
    return failures


def _store(ray, ref, point: SweepPoint, out_dir: Path, swept: list[Column]) -> str | None:
    """Write a finished task's row to its point file; None, or one line saying why the point failed."""
    try:
        row, error = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # an unexpected exception in moesim: raise it, as the local
        raise exc.as_instanceof_cause() from None  # backend's future.result() does
    except ray.exceptions.RayError as exc:  # its worker or node died (killed, out of memory), retries spent
        return f"its Ray worker died ({type(exc).__name__}: {_first_line(exc)}); rerun to retry it"
    if error is not None:
        return error
    try:
        write_point(point_path(out_dir, point.key), row_table(row, swept))
    except WriteError as err:
        return " ".join(str(err).split())
    return None


def _simulate_point(shared: list, position: int, row_of: RowOf, version: str) -> tuple[dict | None, str | None]:
    """The Ray task: (the point's row, None) or (None, one line saying why it failed). Reads and writes no file."""
    if version != __version__:  # the point's key names the driver's version: its row must come from that version
        return None, (f"the Ray worker runs moesim {__version__}, the sweep's driver moesim {version}; install "
                      f"the same moesim on every node")
    try:
        point = _points(shared[0])[position]
    except Exception as exc:  # unpickled by this worker's moesim: one built from other code may fail anyhow
        return None, (f"the Ray worker cannot read the sweep's points ({type(exc).__name__}: {_first_line(exc)}); "
                      f"install the same moesim on every node")
    try:
        return simulate_point_row(point, row_of), None
    except (SpecError, ResultError, WriteError) as err:  # the messages moesim.sweep.worker.run_point gives
        return None, " ".join(str(err).split())


def _points(ref) -> tuple[SweepPoint, ...]:
    import ray  # noqa: PLC0415 - runs in a Ray worker, where ray is installed

    key = ref.hex()
    if key not in _POINTS_CACHE:
        _POINTS_CACHE.clear()  # one sweep per worker process at a time; drop an earlier sweep's points
        _POINTS_CACHE[key] = ray.get(ref)
    return _POINTS_CACHE[key]


def _given(address: str | None) -> str:
    return address if address is not None else Verbatim("no value (Ray's default: RAY_ADDRESS, else the cluster "
                                                         "`ray start` started on this machine, else a new local Ray)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
