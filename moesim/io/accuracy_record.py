"""Reading docs/accuracy.json, the numbers behind docs/accuracy.md that `moesim accuracy` writes
(moesim.report.accuracy.accuracy_record): run id -> published and predicted step time, error, whether it fits,
the micro-batch counts simulated. Every problem is one SpecError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from moesim.io.strict import finite_float, not_a_file
from moesim.spec.errors import SpecError

ACCURACY_COLUMNS = ("run", "published_step_s", "predicted_step_s", "error", "fits", "simulated_micro_batches")
MAX_ACCURACY_BYTES = 4 * 2**20  # a record holds one short entry per validation run: 4 MiB is thousands of runs
_NUMBERS = ("published_step_s", "predicted_step_s", "error")


def read_accuracy_record(path: str | Path) -> pd.DataFrame:
    """One row per run (ACCURACY_COLUMNS), in the file's order."""
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "accuracy record (.json written by moesim accuracy)")
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_ACCURACY_BYTES + 1)  # at most one byte more than allowed, whatever the file's size
    except OSError as err:
        raise SpecError("", type(err).__name__, "a readable accuracy record", source=source) from None
    if len(raw) > MAX_ACCURACY_BYTES:
        raise SpecError("", f"more than {MAX_ACCURACY_BYTES:,} bytes",
                        f"an accuracy record of at most {MAX_ACCURACY_BYTES:,} bytes", source=source)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SpecError("", type(err).__name__, "a JSON object written by moesim accuracy", source=source) from None
    if not isinstance(doc, dict) or not doc:
        raise SpecError("", type(doc).__name__, "a non-empty JSON object: run id -> its numbers", source=source)
    return pd.DataFrame([_row(str(run), entry, source) for run, entry in doc.items()], columns=ACCURACY_COLUMNS)


def _row(run: str, entry: object, source: str) -> dict:
    if not isinstance(entry, dict):
        raise SpecError(run, type(entry).__name__, "an object with " + ", ".join(ACCURACY_COLUMNS[1:]), source=source)
    row: dict = {"run": run}
    for key in _NUMBERS:
        value = finite_float(entry.get(key))
        if value is None or (key != "error" and value <= 0):
            raise SpecError(f"{run}.{key}", entry.get(key), "a finite number" + ("" if key == "error" else " > 0")
                            + (" (seconds per step)" if key != "error" else " (predicted / published - 1)"),
                            source=source)
        row[key] = value
    fits = entry.get("fits")
    if not isinstance(fits, bool):
        raise SpecError(f"{run}.fits", fits, "true or false (peak memory within the GPU's)", source=source)
    counts = entry.get("simulated_micro_batches")
    if not isinstance(counts, list) or not counts or not all(type(c) is int and c > 0 for c in counts):
        raise SpecError(f"{run}.simulated_micro_batches", counts, "a list of micro-batch counts > 0", source=source)
    row["fits"], row["simulated_micro_batches"] = fits, tuple(counts)
    return row
