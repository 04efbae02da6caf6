"""A run's output directory, written as a whole: every file goes into a hidden staging directory beside the
target, and only a finished run is swapped in. An interrupted or failed rerun therefore leaves either the old
run or the new one, never a mix of both.

The swap is one `renameat2(RENAME_EXCHANGE)` on Linux (atomic); elsewhere it is two renames, and a run killed
between them leaves the previous run in a `.NAME.moesim-old-*` sibling, which the next run restores. A staging
directory is locked (flock) by the process writing it; the ones whose process is gone (pid not running, lock
free) are removed before a new run starts.

Ownership rules (nothing a user wrote is lost or overwritten without asking):
- --out is resolved first (symlinks followed); the current directory and its parents are refused;
- a missing target, an empty directory, or a directory marked by an earlier run (RUN_MARKER, which lists the
  run's files) holding nothing but that run's files is replaced whole;
- any other non-empty directory is refused, unless `force`: then the run's files are moved into it one by one
  (each atomically) and everything else in it is left alone; it is not marked, so the next run there has to
  be forced again;
- an existing file is always refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import glob
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
_MARKER_TEXT = ("This directory holds moesim output. The next moesim run into it replaces the whole directory "
                "unless it holds files other than those listed below; delete this file to protect what is here.\n"
                "files:\n")
_FOREIGN_DIR = ("an empty or new directory, or a previous moesim output directory; "
                "pass --force to write into it anyway")
_OWN_FILES = ("a previous moesim run directory holding only that run's files; pass --force to write into it "
              "anyway (other files there are kept)")
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


def _unowned(path: Path) -> bool:
    """True when no live process owns this staging (or set-aside) directory: its pid is not running here and
    nobody holds its lock (a process in another PID namespace still holds the lock)."""
    pid = _pid_of(path.name)
    if pid is None or _alive(pid):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def recover_stale(out_dir: Path) -> None:
    """Remove staging directories left by dead processes; put back a previous run that a killed swap left
    aside (only when the target is missing, so a finished newer run is never replaced by an older one)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for kind in (_OLD, _STAGING):
        prefix = f".{out_dir.name}.{kind}-"
        for path in sorted(parent.glob(glob.escape(prefix) + "*")):
            if not path.name.startswith(prefix) or path.is_symlink() or not path.is_dir() or not _unowned(path):
                continue
            if kind == _OLD and not out_dir.exists():
                os.rename(path, out_dir)
            else:
                shutil.rmtree(path, ignore_errors=True)


def resolve_out_dir(out_dir: Path) -> Path:
    """--out as the directory it names: absolute, symlinks followed (a link to a run directory keeps pointing
    at the new run). The current directory and its parents are refused: replacing them would pull the floor
    from under the shell."""
    resolved = Path(os.path.realpath(os.path.abspath(out_dir)))
    cwd = Path(os.path.realpath(os.getcwd()))
    if resolved == resolved.parent or cwd.is_relative_to(resolved):
        raise SpecError("--out", str(out_dir), "a directory that is not the current directory or one of its "
                                               "parents (e.g. runs/NAME)")
    return resolved


def _listed_files(marker: Path) -> set[str] | None:
    """The files a previous run listed in its marker; None for a marker without a list (older moesim)."""
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    if "files:" not in lines:
        return None
    return set(lines[lines.index("files:") + 1:])


def _state(out_dir: Path, force: bool) -> str:
    """'new', 'replace' (moesim's own or empty) or 'merge' (a forced foreign directory); refuses the rest."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return "new"
    if not out_dir.is_dir():
        raise SpecError("--out", str(out_dir), "a directory, not an existing file")
    if (out_dir / RUN_MARKER).is_file():
        listed = _listed_files(out_dir / RUN_MARKER)
        try:
            present = {p.name for p in out_dir.iterdir()} - {RUN_MARKER}
        except OSError as exc:
            raise SpecError("--out", str(out_dir), f"a readable directory ({exc.strerror or exc})") from None
        if listed is None or present <= listed:
            return "replace"
        if not force:  # the user put something of theirs in our directory: never delete it unasked
            raise SpecError("--out", str(out_dir), f"{_OWN_FILES}; not from the run: "
                                                   f"{', '.join(sorted(present - listed)[:3])}")
        return "merge"
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
    out_dir = resolve_out_dir(out_dir)
    state = _state(out_dir, force)
    probe, lock_fd = _make_staging(out_dir)
    shutil.rmtree(probe, ignore_errors=True)
    os.close(lock_fd)
    if state == "merge" and not os.access(out_dir, os.W_OK | os.X_OK):
        raise WriteError(out_dir, "Permission denied")


def _make_staging(out_dir: Path) -> tuple[Path, int]:
    """A new staging directory and the fd holding its lock (closing the fd releases it)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        recover_stale(out_dir)
        staging = _sibling(out_dir, _STAGING)
        staging.mkdir()
        lock_fd = os.open(staging, os.O_RDONLY)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise WriteError(out_dir, exc.strerror or str(exc)) from None
    return staging, lock_fd


@contextmanager
def staged_dir(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; when the block ends without an exception, its content becomes
    `out_dir` (see the module docstring). On any exception, the staging directory is removed and `out_dir`
    is as it was. OSErrors while writing or swapping become one WriteError."""
    out_dir = resolve_out_dir(out_dir)
    state = _state(out_dir, force)
    staging, lock_fd = _make_staging(out_dir)
    try:
        yield staging
        if state != "merge":
            names = sorted(p.name for p in staging.iterdir())
            write_text_atomic(staging / RUN_MARKER, _MARKER_TEXT + "".join(f"{n}\n" for n in names))
        _commit(staging, out_dir, state)
    except WriteError as exc:  # a file of the run: name the run's directory, not the staging one
        raise WriteError(out_dir, exc.reason) from None
    except OSError as exc:
        raise WriteError(out_dir, exc.strerror or str(exc)) from None
    finally:
        os.close(lock_fd)
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
