"""A sweep's rows (moesim.sweep.rows) -> the table `moesim sweep` prints and writes as sweep.csv, and sweep.png.
The resolved parameters (`scenario.*`) stay in the Parquet rows; the table has the swept values and metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from moesim.io.results import write_figure_atomic, write_text_atomic
from moesim.io.sweep_points import SCENARIO_PREFIX, SWEPT_KEYS
from moesim.viz.sweep import sweep_figure

# printed after the swept values (sweep.csv has every metric)
PRINTED = ("step_time_s", "step_time_p95_s", "step_time_p99_s", "tokens_per_s", "mfu", "dropped_fraction",
           "dropped_first_choice_fraction", "padding_fraction", "expert_load_max_over_mean",
           "gpu_load_max_over_mean", "peak_memory_bytes_max", "fits_in_memory", "all_to_all_s", "balance_ratio",
           "placement_changes", "migration_s")
_NOT_IN_TABLE = (SWEPT_KEYS, "step_times_s")  # JSON lists: in the Parquet rows only


def sweep_table(rows: list[dict], keys: list[str]) -> pd.DataFrame:
    """The rows as a table of swept values and metrics; swept columns keep their values as written (a null
    stays None, never NaN)."""
    table = pd.DataFrame(rows)
    table = table[[c for c in table.columns if not c.startswith(SCENARIO_PREFIX) and c not in _NOT_IN_TABLE]]
    for key in keys:
        table[key] = pd.Series([row[key] for row in rows], dtype=object)
    return table


def _shown(table: pd.DataFrame, keys: list[str], null: str) -> pd.DataFrame:
    """Swept values as users read them: a null capacity factor is `dropless`; other nulls print as `null`."""
    shown = table.copy()
    for key in keys:
        word = "dropless" if key.endswith("capacity_factor") else null
        shown[key] = shown[key].map(lambda v, w=word: w if v is None else v)
    return shown


def format_sweep_table(table: pd.DataFrame, keys: list[str]) -> str:
    """The swept values, the main metrics and the all-to-all bytes per tier."""
    columns = [*keys, *(c for c in table.columns if c in PRINTED or (c.startswith("a2a_") and c.endswith("_GB")))]
    return _shown(table[columns], keys, "null").to_string(index=False, float_format=lambda x: f"{x:.4g}")


def sweep_csv(table: pd.DataFrame, keys: list[str]) -> str:
    """CSV with null for a null value (pandas reads `null` back as missing), never `NaN` or `dropless`."""
    shown = table.copy()
    for key in keys:
        shown[key] = shown[key].map(lambda v: "null" if v is None else v)
    return shown.to_csv(index=False, float_format="%.9g", na_rep="null")


def write_sweep_files(directory: Path, table: pd.DataFrame, keys: list[str], title: str) -> list[Path]:
    """sweep.csv and sweep.png (step time and drops against the first swept key, a line per value of the
    second) into an existing directory."""
    csv = write_text_atomic(directory / "sweep.csv", sweep_csv(table, keys))
    fig = sweep_figure(table, keys[0], keys[1] if len(keys) > 1 else None, title)
    return [csv, write_figure_atomic(directory / "sweep.png", fig)]
