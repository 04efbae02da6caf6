"""A sweep killed (SIGKILL, the whole process group) after its first point file resumes on rerun: every point
exactly once, and the same rows as an uninterrupted sweep (same seed -> same numbers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
from helpers import signal_when

ROOT = Path(__file__).resolve().parents[2]


def _cmd(scenario: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "moesim.cli", "sweep", str(scenario), "--jobs", "2", "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def _rows(out: Path) -> pd.DataFrame:
    table = pd.concat([pd.read_parquet(p) for p in sorted((out / "points").glob("*.parquet"))])
    return table.sort_values("point_key").reset_index(drop=True)


def _kill_after_first_point(scenario: Path, out: Path) -> int:
    """Start the sweep in its own process group; SIGKILL the group once a point file exists. The number of
    point files at that moment."""
    proc = subprocess.Popen(_cmd(scenario, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    points = out / "points"
    signal_when(proc, lambda: points.is_dir() and any(points.glob("*.parquet")),
                lambda: os.killpg(proc.pid, signal.SIGKILL), deadline_s=60, poll_s=0.005)
    return len(list((out / "points").glob("*.parquet")))


def test_a_killed_sweep_resumes_without_losing_or_duplicating_points(tiny_sweep, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(_cmd(tiny_sweep, whole), env=_env(), check=True, capture_output=True)
    expected = _rows(whole)
    assert len(expected) == 6

    out = tmp_path / "killed"
    kept = _kill_after_first_point(tiny_sweep, out)
    assert 1 <= kept < 6, kept  # killed mid-way, with at least one point finished
    rerun = subprocess.run(_cmd(tiny_sweep, out), env=_env(), check=True, capture_output=True, text=True)
    assert f"{6 - kept} points simulated" in rerun.stdout
    rows = _rows(out)
    assert rows["point_key"].is_unique and len(rows) == 6
    pd.testing.assert_frame_equal(rows, expected)
    assert len(pd.read_csv(out / "sweep.csv")) == 6
