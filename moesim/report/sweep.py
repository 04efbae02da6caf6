"""A sweep's points -> one table (swept values + summary metrics) and its figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from moesim.io.results import write_figure_atomic, write_text_atomic
from moesim.metrics.types import RunSummary
from moesim.viz.sweep import sweep_figure


def sweep_row(values: dict, s: RunSummary) -> dict:
    """One table row: the swept values (as written in the sweep) and the point's summary metrics."""
    return {**values,
            "step_time_s": s.step_time_s, "step_time_p95_s": s.step_time_p95_s, "step_time_p99_s": s.step_time_p99_s,
            "tokens_per_s": s.tokens_per_s, "mfu": s.mfu, "dropped_fraction": s.dropped_fraction,
            "dropped_first_choice_fraction": s.dropped_first_choice_fraction, "padding_fraction": s.padding_fraction,
            "expert_load_max_over_mean": s.expert_load_max_over_mean,
            "gpu_load_max_over_mean": s.gpu_load_max_over_mean,
            "peak_memory_bytes_max": s.peak_memory_bytes_max, "fits_in_memory": s.fits_in_memory,
            "all_to_all_s": s.breakdown_s["all_to_all"],
            "balance_ratio": s.placement.balance_ratio_mean, "placement_changes": s.placement.changes,
            "migration_s": s.placement.migration_s,
            **{f"a2a_{tier}_GB": sent / 1e9 for tier, sent in s.network.a2a_bytes_per_step.items()}}


def sweep_table(rows: list[dict], keys: list[str]) -> pd.DataFrame:
    """The rows as a table; swept columns keep their values as written (a null stays None, never NaN)."""
    table = pd.DataFrame(rows)
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
    return _shown(table, keys, "null").to_string(index=False, float_format=lambda x: f"{x:.4g}")


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
