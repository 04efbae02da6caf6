"""A sweep point's row: the swept values as written in the sweep file, the summary metrics (units in the names),
and every resolved parameter of the point's scenario (`scenario.<dotted path>`, from the provenance: presets
expanded, profile inlined, SI units, a replayed trace as the SHA-256 of its counts).

Every point is its own Parquet file, so column types come from declarations, never from one point's values: a
resolved parameter takes the Arrow type of its spec field (a null capacity factor is still a float64 column),
and a swept column the type that fits all of the sweep's values. Lists, mappings and nested optional sections
(efficiency tables, per-layer skews, placement parameters, a profile's calibration) are canonical JSON text.
"""

from __future__ import annotations

import io
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from moesim.io.results import write_bytes_atomic
from moesim.io.sweep_points import SCENARIO_PREFIX, SWEPT_KEYS
from moesim.metrics.types import RunSummary
from moesim.spec.base import SpecModel, field_meta
from moesim.spec.scenario import Scenario

# Part of every point key (moesim.sweep.keys): a change of the columns below makes a rerun simulate the points
# again instead of mixing two row layouts in one directory.
ROW_FORMAT = 2

# spec fields converted from a YAML unit to SI whose names do not already end in their SI unit
_SI_UNIT_OF = {"GFLOP": "flop", "TFLOP/s": "flop_per_s", "GB": "bytes", "GiB": "bytes", "GB/s": "bytes_per_s",
               "Gb/s": "bytes_per_s", "us": "s", "ms": "s"}
_SI_SUFFIXES = ("_s", "_bytes", "_flop", "_per_s", "_fraction")
# provenance replaces a replayed trace by the SHA-256 of its counts
_RENAMED = {("routing", "trace"): ("routing", "trace_sha256")}


class Column(NamedTuple):
    name: str                   # column name: SCENARIO_PREFIX + dotted path, unit appended where needed
    path: tuple[str, ...]       # where the value is in the resolved scenario
    type: pa.DataType
    as_json: bool               # a list, mapping or optional section, stored as canonical JSON text


def scenario_columns() -> list[Column]:
    """One column per leaf field of Scenario, in declaration order."""
    return list(_walk(Scenario, ()))


def _walk(model: type[SpecModel], path: tuple[str, ...]):
    for name, info in model.model_fields.items():
        here = (*path, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, SpecModel):
            yield from _walk(annotation, here)
        elif here in _RENAMED:
            yield Column(SCENARIO_PREFIX + ".".join(_RENAMED[here]), _RENAMED[here], pa.string(), False)
        else:
            kind = scalar_type(annotation)
            yield Column(SCENARIO_PREFIX + ".".join((*path, _with_unit(name, info))), here,
                         kind if kind is not None else pa.string(), kind is None)


def _with_unit(name: str, info) -> str:
    meta = field_meta(name, info)
    if meta.scale == 1.0 or name.endswith(_SI_SUFFIXES):
        return name
    unit = _SI_UNIT_OF.get(meta.unit.split(" ")[0] if meta.unit else "")
    return f"{name}_{unit}" if unit else name


def scalar_type(annotation: Any) -> pa.DataType | None:
    """The Arrow type of a scalar field (optional or not); None for anything else."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return scalar_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return scalar_type(options[0]) if len(options) == 1 else None
    if origin is Literal:
        kinds = {type(a) for a in typing.get_args(annotation)}
        return scalar_type(kinds.pop()) if len(kinds) == 1 else None
    if not isinstance(annotation, type):
        return None
    for kind, arrow in ((bool, pa.bool_()), (Enum, pa.string()), (int, pa.int64()), (float, pa.float64()),
                        (str, pa.string())):  # bool before int: bool is an int in Python
        if issubclass(annotation, kind):
            return arrow
    return None


def canonical_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _at(resolved: dict, path: tuple[str, ...]) -> Any:
    node: Any = resolved
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def scenario_values(resolved: dict) -> dict[str, Any]:
    """The resolved scenario (provenance.scenario) as {column name: value}."""
    row = {}
    for col in scenario_columns():
        value = _at(resolved, col.path)
        if col.as_json:
            value = canonical_json(value)
        elif value is not None and col.type == pa.float64():
            value = float(value)
        row[col.name] = value
    return row


def metric_values(s: RunSummary) -> dict[str, Any]:
    """The summary's numbers, one column each; nested records flattened with their units last."""
    row = {"gpus": int(s.gpus), "measured_steps": int(s.measured_steps)}
    for name in ("step_time_s", "step_time_p95_s", "step_time_p99_s", "step_time_mean_s", "tokens_per_s", "mfu",
                 "mfu_nominal", "peak_memory_bytes_max", "hbm_bytes", "expert_load_max_over_mean",
                 "gpu_load_max_over_mean", "dropped_fraction", "dropped_first_choice_fraction", "padding_fraction",
                 "unrouted_token_fraction", "all_to_all_bytes_per_step"):
        row[name] = float(getattr(s, name))
    row["fits_in_memory"] = bool(s.fits_in_memory)
    row.update({f"{bucket}_s": float(v) for bucket, v in s.breakdown_s.items()})  # seconds per step
    row.update({f"peak_memory_{kind}": float(v) for kind, v in s.peak_memory_breakdown_bytes.items()})
    row.update({f"a2a_{tier}_GB": float(sent) / 1e9 for tier, sent in s.network.a2a_bytes_per_step.items()})
    for tier, busy in s.network.a2a_link_utilisation.items():
        row[f"a2a_{tier}_link_busy_mean_fraction"] = float(busy.mean)
        row[f"a2a_{tier}_link_busy_max_fraction"] = float(busy.max)
    p = s.placement
    row.update(balance_ratio=float(p.balance_ratio_mean), balance_ratio_p95=float(p.balance_ratio_p95),
               placement_changes=int(p.changes), moved_slots=int(p.moved_slots),
               migration_bytes=float(p.migration_bytes), migration_s=float(p.migration_s))
    row["step_times_s"] = canonical_json([float(t) for t in s.step_times_s])
    return row


def point_row(values: dict, summary: RunSummary) -> dict:
    """A point's row (moesim.sweep.worker's `row_of`): swept values as written, metrics, provenance, and the
    resolved scenario."""
    prov = summary.provenance
    row = {**values, **metric_values(summary), "moesim_version": prov.moesim_version,
           "scenario_sha256": prov.scenario_sha256, SWEPT_KEYS: canonical_json(list(values))}
    resolved = scenario_values(prov.scenario)
    clash = sorted(set(row) & set(resolved))
    assert not clash, clash  # swept keys are dotted paths of the file, never `scenario.`: the loader refuses those
    return {**row, **resolved}


def swept_columns(keys: list[str], values: list[dict]) -> list[Column]:
    """A column per swept key, typed to hold all the sweep's values (as written): bool, int64, float64 (ints
    and floats mixed) or string; anything else (lists, mappings, mixed kinds) as JSON text."""
    out = []
    for key in keys:
        kinds = {type(v[key]) for v in values if v[key] is not None}
        simple = {frozenset(): pa.null(), frozenset({bool}): pa.bool_(), frozenset({int}): pa.int64(),
                  frozenset({float}): pa.float64(), frozenset({int, float}): pa.float64(),
                  frozenset({str}): pa.string()}.get(frozenset(kinds))
        out.append(Column(key, (key,), simple if simple is not None else pa.string(), simple is None))
    return out


def row_table(row: dict, swept: list[Column]) -> pa.Table:
    """One row as an Arrow table: the swept and resolved columns with their declared types (the metrics'
    Python types are fixed by metric_values, so Arrow infers the same type for every point)."""
    as_written = {col.name for col in swept if col.as_json}  # resolved values are converted by scenario_values
    declared = {col.name: col.type for col in (*swept, *scenario_columns())}
    arrays = {}
    for name, value in row.items():
        kind = declared.get(name)
        if name in as_written:
            value = canonical_json(value)
        elif kind == pa.float64() and value is not None:
            value = float(value)
        arrays[name] = pa.array([value], type=kind)
    return pa.table(arrays)


def write_point(path: Path, table: pa.Table) -> Path:
    """The point's file, written atomically (a reader sees no file or the whole row)."""
    buffer = io.BytesIO()
    # no column statistics or Arrow schema copy (one row needs neither; the Parquet types read back the same):
    # 26 KB instead of 62 KB per point
    pq.write_table(table, buffer, write_statistics=False, store_schema=False)
    return write_bytes_atomic(path, buffer.getvalue())
