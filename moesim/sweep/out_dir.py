"""A sweep's output directory. Unlike a run directory (moesim.io.staged_dir, swapped in whole) it is written
in place, point by point, because a rerun must keep the points an interrupted sweep finished. A marker file
says the directory is a sweep's, so a rerun resumes there without --force while a foreign non-empty
directory is refused."""

from __future__ import annotations

import os
from pathlib import Path

from moesim.io.results import WriteError, write_text_atomic
from moesim.io.staged_dir import resolve_out_dir
from moesim.io.sweep_points import POINTS_DIR, SWEEP_MARKER
from moesim.spec.errors import SpecError

_MARKER_TEXT = ("This directory holds a moesim sweep: points/ has one Parquet file per finished point, named by "
                "the point's key. Rerunning the sweep into it skips those points; moesim never deletes them.\n")
_FOREIGN_DIR = ("an empty or new directory, or a previous `moesim sweep` directory; pass --force to write "
                "into it anyway (nothing there is deleted)")


def prepare_sweep_dir(out_dir: Path, force: bool) -> Path:
    """The resolved directory, created and marked, with its points/ directory. Refuses a file, the current
    directory or a parent of it (resolve_out_dir), and a foreign non-empty directory unless `force`."""
    out_dir = resolve_out_dir(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError("--out", str(out_dir), "a directory, not an existing file")
    if out_dir.is_dir() and not (out_dir / SWEEP_MARKER).is_file() and not force and _non_empty(out_dir):
        raise SpecError("--out", str(out_dir), _FOREIGN_DIR)
    try:
        (out_dir / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(out_dir, exc.strerror or str(exc)) from None
    if not (out_dir / SWEEP_MARKER).is_file():
        write_text_atomic(out_dir / SWEEP_MARKER, _MARKER_TEXT)
    return out_dir


def point_path(out_dir: Path, key: str) -> Path:
    return out_dir / POINTS_DIR / f"{key}.parquet"


def _non_empty(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError as exc:
        raise SpecError("--out", str(directory), f"a readable directory ({exc.strerror or exc})") from None
