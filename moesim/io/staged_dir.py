"""A run's output directory, written as a whole: every file goes into a hidden staging directory beside the
target, and only a finished run is swapped in. An interrupted or failed rerun therefore leaves either the old
run or the new one, never a mix of both.

The swap is one `renameat2(RENAME_EXCHANGE)` on Linux (atomic); elsewhere it is two renames, and a run killed
between them leaves the previous run in a `.NAME.moesim-old-*` sibling, which the next run restores. Staging
directories of processes that no longer run are removed before a new run starts.

Ownership rules (nothing a user wrote is lost or overwritten without asking):
- a missing target, an empty directory, or a directory marked by an earlier run (RUN_MARKER) is replaced whole;
- a non-empty directory moesim did not create is refused, unless `force`: then the run's files are moved into
  it one by one (each atomically) and everything else in it is left alone; it is not marked, so the next run
  there has to be forced again;
- an existing file is always refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moesim.io.results import RUN_MARKER, WriteError, write_text_atomic
from moesim.spec.errors import SpecError

_STAGING = "moesim-staging"
_OLD = "moesim-old"
_MARKER_TEXT = ("This directory holds moesim output. The next moesim run into it replaces the whole directory; "
                "delete this file to protect what is here.\n")
_FOREIGN_DIR = ("an empty or new directory, or a previous moesim output directory; "
                "pass --force to write into it anyway")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


_SLUG_MAX_CHARS = 80


def safe_slug(name: str) -> str:
    """A scenario name as one safe directory name: letters, digits, '.', '_' and '-' kept, every other run of
    characters (path separators, '..', NUL, control characters, spaces) becomes one '-'; no leading dot."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    slug = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", "-", slug)).strip(".-")[:_SLUG_MAX_CHARS].strip(".-")
    return slug or "scenario"


def default_run_dir(name: str) -> Path:
    """Where a run goes without --out: runs/<safe slug of the scenario name>. Only --out picks a location."""
    return Path("runs") / safe_slug(name)


def _sibling(out_dir: Path, kind: str) -> Path:
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_of(name: str) -> int | None:
    try:
        return int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def recover_stale(out_dir: Path) -> None:
    """Remove staging directories left by dead processes; put back a previous run that a killed swap left
    aside (only when the target is missing, so a finished newer run is never replaced by an older one)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for kind in (_OLD, _STAGING):
        for path in sorted(parent.glob(f".{out_dir.name}.{kind}-*")):
            pid = _pid_of(path.name)
            if pid is None or (pid != os.getpid() and _alive(pid)):
                continue
            if kind == _OLD and not out_dir.exists():
                os.rename(path, out_dir)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _state(out_dir: Path, force: bool) -> str:
    """'new', 'replace' (moesim's own or empty) or 'merge' (a forced foreign directory); refuses the rest."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return "new"
    if not out_dir.is_dir():
        raise SpecError("--out", str(out_dir), "a directory, not an existing file")
    if (out_dir / RUN_MARKER).is_file():
        return "replace"
    try:
        with os.scandir(out_dir) as entries:
            empty = next(entries, None) is None
    except OSError as exc:
        raise SpecError("--out", str(out_dir), f"a readable directory ({exc.strerror or exc})") from None
    if empty:
        return "replace"
    if not force:
        raise SpecError("--out", str(out_dir), _FOREIGN_DIR)
    return "merge"


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Everything `staged_dir` would refuse, refused now (before a long simulation), by creating and removing
    a staging directory. Raises SpecError (bad --out) or WriteError (cannot write there)."""
    out_dir = Path(out_dir)
    state = _state(out_dir, force)
    probe = _make_staging(out_dir)
    shutil.rmtree(probe, ignore_errors=True)
    if state == "merge" and not os.access(out_dir, os.W_OK | os.X_OK):
        raise WriteError(out_dir, "Permission denied")


def _make_staging(out_dir: Path) -> Path:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        recover_stale(out_dir)
        staging = _sibling(out_dir, _STAGING)
        staging.mkdir()
    except OSError as exc:
        raise WriteError(out_dir, exc.strerror or str(exc)) from None
    return staging


@contextmanager
def staged_dir(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; when the block ends without an exception, its content becomes
    `out_dir` (see the module docstring). On any exception, the staging directory is removed and `out_dir`
    is as it was. OSErrors while writing or swapping become one WriteError."""
    out_dir = Path(out_dir)
    state = _state(out_dir, force)
    staging = _make_staging(out_dir)
    try:
        yield staging
        if state != "merge":
            write_text_atomic(staging / RUN_MARKER, _MARKER_TEXT)
        _commit(staging, out_dir, state)
    except WriteError as exc:  # a file of the run: name the run's directory, not the staging one
        raise WriteError(out_dir, exc.reason) from None
    except OSError as exc:
        raise WriteError(out_dir, exc.strerror or str(exc)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, out_dir: Path, state: str) -> None:
    if state == "new":
        os.rename(staging, out_dir)
    elif state == "merge":
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    elif _exchange(staging, out_dir):
        return  # staging now holds the previous run; the caller removes it
    else:
        old = _sibling(out_dir, _OLD)
        os.rename(out_dir, old)
        os.rename(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2). False where the call is not available."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: kernel or file system without exchange
        return False
    raise OSError(err, os.strerror(err))
