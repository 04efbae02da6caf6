"""`moesim sweep --backend ray`: the same rows as the local processes, resume across backends, Ray workers that
read no file of the driver's, Ctrl-C that stops the cluster's tasks, and one-line errors.

One local Ray with 2 CPUs serves the in-process tests (started once, shut down at the end); the Ctrl-C test's
subprocess starts its own with `--address local`, as a user would, and must leave no Ray process behind."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray  # pinned in requirements.txt: these tests run in CI, never skipped
from helpers import signal_when

from moesim.cli import main
from moesim.io.traces import load_trace
from moesim.sweep import SweepBackend, plan_sweep, prepare_sweep_dir, run_sweep
from moesim.sweep.out_dir import point_path
from moesim.sweep.rows import point_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    assert not ray.is_initialized()
    # "local": a Ray of its own, never a cluster that happens to run on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


def _points(out: Path) -> dict[str, int]:
    """point file name -> modification time (ns): a rewritten file shows."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "points").glob("*.parquet"))}


def _same_rows(a: Path, b: Path) -> None:
    assert sorted(_points(a)) == sorted(_points(b))
    for name in _points(a):
        left, right = pq.read_table(a / "points" / name), pq.read_table(b / "points" / name)
        assert left.equals(right, check_metadata=True), name  # values, column order and types


def _sweep(scenario: Path, out: Path, *flags: str) -> int:
    return main(["sweep", str(scenario), "--out", str(out), *flags])


def test_ray_rows_equal_the_local_processes_and_either_backend_resumes_the_other(local_ray, tiny_sweep, tmp_path,
                                                                                  capsys):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert _sweep(tiny_sweep, local, "--jobs", "2") == 0
    assert _sweep(tiny_sweep, on_ray, "--backend", "ray") == 0  # joins the Ray this process already has
    _same_rows(local, on_ray)
    assert (local / "sweep.csv").read_text() == (on_ray / "sweep.csv").read_text()
    capsys.readouterr()

    before = _points(on_ray)
    assert _sweep(tiny_sweep, on_ray, "--backend", "ray") == 0
    assert _sweep(tiny_sweep, on_ray, "--jobs", "2") == 0  # the local backend finds Ray's points, and vice versa
    assert capsys.readouterr().out.count("0 points simulated") == 2
    assert _points(on_ray) == before

    lost = sorted(before)[:2]
    for name in lost:
        (on_ray / "points" / name).unlink()
    assert _sweep(tiny_sweep, on_ray, "--backend", "ray", "--jobs", "1") == 0  # at most one point in flight
    assert "2 points simulated" in capsys.readouterr().out
    after = _points(on_ray)
    assert {n for n in after if after[n] != before.get(n)} == set(lost)  # only the missing ones, once each
    _same_rows(local, on_ray)


def test_ray_workers_read_no_file_of_the_driver(local_ray, tiny_sweep, tmp_path):
    # on a cluster the workers cannot see the sweep file or a trace it replays: they get the resolved points
    # (the trace's counts included) from the object store, and the driver writes the rows
    trace = tmp_path / "trace.parquet"
    shutil.copyfile(ROOT / "traces" / "tiny-moe-stdlib.parquet", trace)
    plan = plan_sweep(tiny_sweep, trace=trace)
    local = prepare_sweep_dir(tmp_path / "local", force=False)
    assert run_sweep(plan, local, 2, point_row).failures == []
    tiny_sweep.unlink()
    trace.unlink()
    on_ray = prepare_sweep_dir(tmp_path / "ray", force=False)
    outcome = run_sweep(plan, on_ray, 3, point_row, backend=SweepBackend.RAY)  # at most 3 points in flight
    assert outcome.failures == [] and outcome.simulated == 6 and len(outcome.rows) == 6
    assert {row["scenario.routing.trace_sha256"] for row in outcome.rows} == {load_trace(
        ROOT / "traces" / "tiny-moe-stdlib.parquet").counts_sha256}
    _same_rows(local, on_ray)


def test_a_failed_point_is_the_same_one_line_with_either_backend(local_ray, tiny_sweep, tmp_path, capsys):
    lines = {}
    for backend in ("processes", "ray"):
        out = prepare_sweep_dir(tmp_path / backend, force=False)
        blocked = point_path(out, plan_sweep(tiny_sweep).points[1].key)
        blocked.mkdir()  # its row cannot be written there
        assert _sweep(tiny_sweep, out, "--backend", backend, "--jobs", "2") == 1
        err = capsys.readouterr().err.replace(str(out), "DIR")
        lines[backend] = [line for line in err.splitlines() if line.startswith("moesim:")]
        assert sum(p.is_file() for p in (out / "points").iterdir()) == 5
    assert lines["ray"] == lines["processes"]
    assert lines["ray"][0].startswith("moesim: error: sweep point 2 (simulation.seed=0,routing.zipf_s=1.0,")
    assert "Is a directory" in lines["ray"][0] and len(lines["ray"]) == 2


def test_a_point_whose_worker_dies_is_one_line_and_the_others_are_kept(local_ray, tiny_sweep, tmp_path):
    def row_or_die(values: dict, summary) -> dict:  # local: Ray ships it by value
        if values["simulation.seed"] == 1 and values["routing.zipf_s"] == 1.0:
            os._exit(1)  # as if killed (out of memory): every retry dies too
        return point_row(values, summary)

    out = prepare_sweep_dir(tmp_path / "out", force=False)
    outcome = run_sweep(plan_sweep(tiny_sweep), out, None, row_or_die, backend=SweepBackend.RAY)
    assert len(outcome.failures) == 1 and outcome.rows == []
    assert outcome.failures[0].startswith("sweep point 5 (simulation.seed=1,routing.zipf_s=1.0,")
    assert "its Ray worker died" in outcome.failures[0] and "\n" not in outcome.failures[0]
    assert len(_points(out)) == 5  # the rerun simulates only the lost point


def test_a_worker_with_another_moesim_refuses_the_point():
    from moesim.sweep.ray_backend import _simulate_point

    row, error = _simulate_point([None], 0, point_row, "0.0.0-driver")
    assert row is None and "the sweep's driver moesim 0.0.0-driver" in error


@pytest.mark.parametrize("flags, message", [
    (["--address", "auto"], "--address: got 'auto'; expected only with --backend ray"),
    (["--backend", "rya"], "--backend: got 'rya'; expected one of: processes, ray"),
    (["--backend", "ray", "--address", "127.0.0.1:1"], "nothing answers there"),
    (["--backend", "ray", "--address", "head-node"], "HOST:PORT of its head node"),
])
def test_bad_backend_flags_are_one_line_before_anything_runs(tiny_sweep, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert _sweep(tiny_sweep, out, *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_dead_cluster_found_by_ray_is_one_line_not_minutes_of_retries(tiny_sweep, tmp_path, capsys, monkeypatch):
    # without --address, ray.init joins RAY_ADDRESS (or the cluster `ray start` last started here, maybe since
    # stopped); nothing answers there, and it would retry for minutes
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    out = tmp_path / "out"
    assert _sweep(tiny_sweep, out, "--backend", "ray") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--address: got no value" in err and "nothing answers there" in err, err
    assert not out.exists()


def test_ray_not_installed_says_which_extra_to_install(tiny_sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    out = tmp_path / "out"
    assert _sweep(tiny_sweep, out, "--backend", "ray") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'moesim[ray]'" in err, err
    assert not out.exists()
    assert _sweep(tiny_sweep, out, "--jobs", "1") == 0  # the local backend needs no Ray


def _descendants(pid: int) -> set[int]:
    """The processes `pid` started, and theirs (a local Ray: gcs_server, raylet, its agents and workers)."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in ps.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":  # a zombie has exited; its parent has not collected it yet
            alive.add(pid)
    return alive


def test_ctrl_c_stops_the_clusters_tasks_and_leaves_no_ray_behind(local_ray, tiny_sweep, tmp_path, capsys):
    # more steps per point, so the sweep is still running when the first point file appears
    text = tiny_sweep.read_text()
    assert "steps: 1," in text
    tiny_sweep.write_text(text.replace("steps: 1,", "steps: 4,"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "moesim.cli", "sweep", str(tiny_sweep), "--out", str(out), "--backend", "ray",
           "--address", "local", "--jobs", "1"]  # its own Ray, started and stopped by the command
    proc = subprocess.Popen(cmd, env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    points, ray_of_proc = out / "points", set()

    def interrupt() -> None:
        ray_of_proc.update(_descendants(proc.pid))
        proc.send_signal(signal.SIGINT)

    signal_when(proc, lambda: points.is_dir() and any(points.glob("*.parquet")), interrupt, deadline_s=60,
                poll_s=0.005)
    assert proc.returncode == 130, proc.stderr.read()
    assert proc.stderr.read().strip().endswith("moesim: interrupted")
    kept = len(_points(out))
    assert 1 <= kept < 6 and ray_of_proc
    deadline = time.monotonic() + 20  # the Ray it started stops with it: no daemon, no task left running
    while _running(ray_of_proc) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(ray_of_proc)

    assert _sweep(tiny_sweep, out, "--backend", "ray") == 0  # resumes, here on the tests' Ray
    assert f"{6 - kept} points simulated" in capsys.readouterr().out
    assert len(_points(out)) == 6
