"""Reading a YAML file whose top level must be a mapping: refused when too large before it is read, parsed within
the limits of moesim.io.safe_yaml, every failure one SpecError naming the file."""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any

from moesim.io.safe_yaml import MAX_YAML_BYTES, load_yaml
from moesim.spec.errors import SpecError, Verbatim


def is_file(path: Path) -> bool:
    """Path.is_file() that answers False instead of raising (a name too long for the OS, a NUL byte...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def path_kind(path: Path) -> str | None:
    """What is at `path` when it is not a regular file ("a directory", "a FIFO (named pipe)"...); None when
    nothing is there (or it cannot be looked at). Never opens it: opening a FIFO would block."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def not_a_file(path: Path, what: str) -> SpecError:
    """The error for a path that is not a regular file: missing, or something else (a directory, a FIFO)."""
    kind = path_kind(path)
    if kind is None:
        return SpecError("", str(path), f"an existing {what} file", source=str(path))
    return SpecError("", Verbatim(kind), f"a regular {what} file", source=str(path))


def describe_document(data: object) -> object:
    """A parsed document that is not a mapping, as an error line shows it: an empty file says so."""
    return Verbatim("an empty file (no YAML document)") if data is None else data


def finite_float(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not a finite number (bools, NaN, inf, ints too big)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return number if math.isfinite(number) else None


def _read_text(path: Path, what: str) -> str:
    """The file's text, refused unread when it is larger than MAX_YAML_BYTES (read at most one byte more, so a
    file that grows meanwhile is refused too)."""
    source = str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:  # unreadable: permissions, a race with deletion, an I/O error
        raise SpecError("", exc.strerror or type(exc).__name__, f"a readable {what} file", source=source) from None
    if len(data) > MAX_YAML_BYTES:
        raise SpecError("", f"a file of more than {MAX_YAML_BYTES} bytes",
                        f"a {what} file of at most {MAX_YAML_BYTES} bytes ({MAX_YAML_BYTES // 2**20} MiB)",
                        source=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{type(exc).__name__} at byte {exc.start}", f"a UTF-8 YAML {what} file",
                        source=source) from None


def read_yaml_mapping(path: Path, what: str) -> dict:
    """Parse a YAML file whose top level must be a mapping. Errors name the file."""
    source = str(path)
    if not is_file(path):
        raise not_a_file(path, what)
    try:
        size_bytes = path.stat().st_size
    except OSError:
        size_bytes = 0  # _read_text reports why it cannot be read
    if size_bytes > MAX_YAML_BYTES:  # refused before reading a byte
        raise SpecError("", f"a file of {size_bytes} bytes",
                        f"a {what} file of at most {MAX_YAML_BYTES} bytes ({MAX_YAML_BYTES // 2**20} MiB)",
                        source=source)
    try:
        data = load_yaml(_read_text(path, what))
    except SpecError as err:
        raise err.with_source(source) from None
    if not isinstance(data, dict):
        raise SpecError("", describe_document(data), f"a mapping of keys at the top of the {what}", source=source)
    return data
