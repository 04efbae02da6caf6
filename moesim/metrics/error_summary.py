"""Summary statistics of relative prediction errors (predicted / measured - 1), as docs/accuracy.md states them:
median and max of |error| (with the run at the max) and the signed mean (negative = optimistic)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from moesim.spec.errors import SpecError


@dataclass(frozen=True)
class ErrorSummary:
    runs: int
    median_abs_error: float
    max_abs_error: float
    max_abs_error_run: str
    signed_mean_error: float


def error_summary(errors: Mapping[str, float]) -> ErrorSummary:
    """errors: run id -> relative error. The first run of the largest |error| names the max."""
    if not errors:
        raise SpecError("errors", {}, "at least one run's error")
    worst = max(errors, key=lambda run: abs(errors[run]))
    return ErrorSummary(len(errors), statistics.median(abs(e) for e in errors.values()), abs(errors[worst]), worst,
                        statistics.fmean(errors.values()))
