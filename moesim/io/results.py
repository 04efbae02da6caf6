"""The only code that writes result files. Every write is atomic: the bytes go to a temporary file in the
target's directory, are flushed and fsync'ed, and `os.replace` puts them in place, so a reader sees either
the old file or the whole new one, never half of it. On any failure the temporary file is removed and an
existing target is left untouched.

A run's directory as a whole is staged and swapped in by moesim.io.staged_dir."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from collections.abc import Callable

import numpy as np


if TYPE_CHECKING:  # pragma: no cover - type hints only; matplotlib and pandas stay out of import time
    import pandas as pd
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

RUN_MARKER = ".moesim-run"  # marks a directory as moesim output that a rerun may replace


# --------------------------------------------------------------------------------------------- atomic core

def _current_umask() -> int:
    """The process umask without changing it (os.umask set-and-restore would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _final_mode(target: Path) -> int:
    """Keep an existing target's permissions; a new file gets the usual 0o666 & ~umask (mkstemp's 0o600
    would otherwise leak into every result file)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable. Best effort: not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Run `write(fh)` on a temporary file next to `path`, then atomically replace `path` with it."""
    target = Path(path)
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{target.name}.", suffix=".tmp", delete=False)
    except OSError as exc:
        raise WriteError(target, exc.strerror or str(exc)) from None
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_path, _final_mode(target))
        os.replace(tmp_path, target)
    except BaseException as exc:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):  # full disk, read-only file system, a directory in the way...
            raise WriteError(target, exc.strerror or str(exc)) from None
        raise
    _fsync_dir(directory)
    return target


# ----------------------------------------------------------------------------------------- typed writers

def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Atomically write `data` to `path`. Returns the path written."""
    payload = bytes(data)
    return _write_atomic(path, lambda fh: fh.write(payload))


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write `text` (encoded as given; newlines are written as they are)."""
    return write_bytes_atomic(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays -> Python numbers and lists; everything else is a TypeError as usual."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write `obj` as strict JSON (NaN/inf are errors) with a trailing newline. numpy types are
    converted. `indent=None` writes compact JSON (no spaces after separators) for large files. The object is
    serialised before any file is opened, so a serialisation error leaves the target as it was."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False, default=_json_default,
                      separators=separators)
    return write_text_atomic(path, text + "\n")


def write_parquet_atomic(path: PathLike, df: pd.DataFrame) -> Path:
    """Atomically write `df` as Parquet (pyarrow engine, no index column)."""
    return _write_atomic(path, lambda fh: df.to_parquet(fh, engine="pyarrow", index=False))


def write_figure_atomic(path: PathLike, fig: Figure, dpi: int = 120) -> Path:
    """Render a matplotlib Figure to PNG in memory, then write the bytes atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_bytes_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------ errors

class WriteError(Exception):
    """A result could not be written (full disk, read-only or pseudo file system, permissions). The CLI shows
    it as one line and exits 1; what was there before is untouched."""

    def __init__(self, target: PathLike, reason: str):
        self.target = str(target)
        self.reason = reason
        super().__init__(f"could not write {self.target}: {reason}; nothing there was changed")

    def __str__(self) -> str:
        return self.args[0]
