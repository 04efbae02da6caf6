"""A rerun killed at any moment (SIGINT, SIGTERM, SIGKILL) leaves the output folder holding one whole run:
the previous one or the new one, never a mix, and never a half-written file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import signal_when

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _cmd(out: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "moesim.cli", "run", str(QUICKSTART), "--out", str(out), "--steps", "2",
            "--seed", str(seed)]


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _env() -> dict[str, str]:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


def _staged_files(parent: Path, name: str) -> int:
    count = 0
    for staging in parent.glob(f".{name}.moesim-staging-*"):
        try:
            count += len(list(staging.iterdir()))
        except (FileNotFoundError, NotADirectoryError):  # swapped in (or removed) between the glob and the listing
            pass
    return count


def _kill_when(out: Path, seed: int, sig: int, min_staged_files: int) -> None:
    """Start a rerun into `out`; send `sig` once its staging directory holds `min_staged_files` files (0: as
    soon as the process is up, i.e. while it simulates)."""
    proc = subprocess.Popen(_cmd(out, seed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if min_staged_files == 0:
        time.sleep(0.5)
    signal_when(proc, lambda: _staged_files(out.parent, out.name) >= min_staged_files,
                lambda: proc.send_signal(sig))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, str]]:
    """(a scratch folder, the snapshot of a whole seed-1 run, the snapshot of a whole seed-2 run)."""
    base = tmp_path_factory.mktemp("interrupted")
    for seed in (1, 2):
        subprocess.run(_cmd(base / f"whole{seed}", seed), env=_env(), check=True, capture_output=True)
    return base, _snapshot(base / "whole1"), _snapshot(base / "whole2")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_killed_rerun_leaves_one_whole_run(runs, sig: int) -> None:
    base, old, new = runs
    assert old != new  # the two seeds give different files, so a mix would show
    out = base / f"out-{sig}"
    subprocess.run(_cmd(out, 1), env=_env(), check=True, capture_output=True)
    for min_staged in (0, 1, len(new) // 2, len(new) - 1):
        _kill_when(out, 2, sig, min_staged)
        assert _snapshot(out) in (old, new), f"a mix after {sig!r} at {min_staged} staged files"
        if _snapshot(out) == new:  # the rerun finished before the signal: start from the old run again
            subprocess.run(_cmd(out, 1), env=_env(), check=True, capture_output=True)
    # whatever a killed run left beside the folder is cleaned up by the next run
    subprocess.run(_cmd(out, 2), env=_env(), check=True, capture_output=True)
    assert _snapshot(out) == new
    assert not list(base.glob(f".{out.name}.moesim-*"))
