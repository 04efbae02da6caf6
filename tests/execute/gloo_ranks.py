"""Run a test worker script as `world` gloo ranks (plain subprocesses, so a hung rank can be killed) and load
what each rank saved to OUT_DIR/rank{r}.pt."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Path, world: int, args: list[str], out_dir: Path, timeout_s: float) -> list:
    """`python worker RANK WORLD PORT *args OUT_DIR` for each rank; fails the test on a timeout or a bad exit."""
    import torch

    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(world), port, *args, str(out_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout_s)  # one deadline per rank; a hung group fails the first
            logs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gloo ranks did not finish within {timeout_s} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{log}"
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]
