"""Paths a scenario document may name, when it comes from someone other than the machine's user (the dashboard's
uploads): a profile, a Hugging Face config.json or a trace must lie inside one of a few directories, so that the
document cannot make the server read any other file. Symbolic links and `..` are resolved before the check."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from moesim.spec.errors import SpecError

# label shown in the error (e.g. "traces/") -> directory
AllowedRoots = Mapping[str, Path]


def inside_roots(path: Path, roots: AllowedRoots) -> bool:
    """Whether `path`, with every symbolic link and `..` resolved, lies inside one of `roots` (resolved too).
    A path that cannot be resolved (a NUL byte, a loop of links) lies nowhere."""
    try:
        real = Path(os.path.realpath(path))
        return any(real.is_relative_to(os.path.realpath(root)) for root in roots.values())
    except (OSError, ValueError):
        return False


def check_allowed(key: str, ref: str, path: Path, roots: AllowedRoots | None) -> None:
    """Refuse, before the file is looked at (so that the answer says nothing about what exists elsewhere),
    a path outside `roots`; `roots` None: every path is allowed (files the user runs from the command line)."""
    if roots is not None and not inside_roots(path, roots):
        raise SpecError(key, ref, f"a path inside {', '.join(roots)} (this server reads no other files)")
