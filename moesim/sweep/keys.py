"""A sweep point's key: the SHA-256 of the resolved scenario's hash, the moesim version and the row layout. The
same point run by the same moesim gets the same key, so a rerun recognises the points it already has."""

from __future__ import annotations

import hashlib

from moesim import __version__
from moesim.metrics.summary import provenance
from moesim.spec.scenario import Scenario
from moesim.sweep.rows import ROW_FORMAT


def point_key(scenario: Scenario) -> str:
    """64 hex digits; seed and steps are part of the resolved scenario, so --seed/--steps change the key."""
    text = f"{provenance(scenario).scenario_sha256}\nmoesim {__version__}\nrows {ROW_FORMAT}\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
