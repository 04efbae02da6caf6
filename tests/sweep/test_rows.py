"""A sweep point's row holds every resolved parameter of its scenario (units in the names, one type per column
whatever the point's values), the summary metrics and the swept values as written; a replayed trace is its
SHA-256, and --trace reaches the worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moesim.cli import main
from moesim.io.traces import load_trace
from moesim.metrics.summary import provenance
from moesim.spec.base import SpecModel, field_meta
from moesim.spec.scenario import Scenario
from moesim.sweep import plan_sweep
from moesim.sweep.rows import scenario_columns, swept_columns

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "traces" / "tiny-moe-stdlib.parquet"
SI_SUFFIXES = ("_s", "_bytes", "_bytes_per_s", "_flop", "_flop_per_s")


def _tables(out: Path) -> list[pa.Table]:
    return [pq.read_table(p) for p in sorted((out / "points").glob("*.parquet"))]


def _leaves(node, path=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


@pytest.mark.parametrize("trace", [None, TRACE])
def test_every_leaf_of_the_resolved_scenario_has_a_column(trace):
    # placement parameters (eplb, the last point) and a replayed trace: optional sections are covered too
    plan = plan_sweep(ROOT / "scenarios" / "placement-compare.yaml", trace=trace)
    resolved = provenance(plan.points[-1].scenario).scenario
    assert resolved["placement"]["params"] and ("trace_sha256" in resolved["routing"]) == (trace is not None)
    paths = {col.path: col for col in scenario_columns()}
    for leaf in _leaves(resolved):
        covered = [leaf[:i] for i in range(1, len(leaf) + 1) if leaf[:i] in paths]
        assert covered, leaf
        assert covered[-1] == leaf or paths[covered[-1]].as_json, leaf  # a leaf inside a JSON column
    names = [col.name for col in scenario_columns()]
    assert len(names) == len(set(names)) and all(n.startswith("scenario.") for n in names)


def _scaled_fields(model: type[SpecModel], path=()):
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, SpecModel):
            yield from _scaled_fields(info.annotation, (*path, name))
        elif field_meta(name, info).scale != 1.0:
            yield (*path, name)


def test_quantities_converted_to_si_carry_their_unit_in_the_column_name():
    by_path = {col.path: col.name for col in scenario_columns()}
    scaled = list(_scaled_fields(Scenario))
    assert ("cluster", "profile", "gpu", "hbm_bytes") in scaled  # the walk sees the profile's fields
    for path in scaled:
        assert by_path[path].endswith(SI_SUFFIXES), by_path[path]
    assert by_path[("cluster", "profile", "gpu", "hbm_bandwidth_bytes_per_s")].endswith("_bytes_per_s")


def test_point_rows_hold_swept_values_metrics_and_resolved_parameters_with_one_type_per_column(tiny_sweep, tmp_path):
    out = tmp_path / "out"
    assert main(["sweep", str(tiny_sweep), "--jobs", "2", "--out", str(out)]) == 0
    tables = _tables(out)
    assert len(tables) == 6
    schemas = {t.schema for t in tables}
    assert len(schemas) == 1, "every point file has the same columns and types"
    schema = schemas.pop()
    # the dropless point is null in a float column, never a column of nulls
    assert schema.field("gate.capacity_factor").type == pa.float64()
    assert schema.field("scenario.gate.capacity_factor").type == pa.float64()
    assert schema.field("scenario.routing.trace_sha256").type == pa.string()
    assert schema.field("simulation.seed").type == pa.int64()
    for name in ("step_time_s", "step_time_p95_s", "tokens_per_s", "peak_memory_bytes_max", "all_to_all_s",
                 "a2a_nvlink_GB", "migration_s", "scenario.cluster.profile.gpu.hbm_bytes",
                 "scenario.cluster.profile.node.nvlink_latency_s",
                 "scenario.cluster.profile.fabric.nic_bandwidth_bytes_per_s", "scenario.model.num_experts",
                 "scenario.training.seq_len", "scenario.placement.policy", "moesim_version", "point_key"):
        assert name in schema.names, name
    rows = [t.to_pylist()[0] for t in tables]
    for row in rows:
        assert json.loads(row["swept_keys"]) == ["simulation.seed", "routing.zipf_s", "gate.capacity_factor"]
        assert row["scenario.routing.zipf_s"] == row["routing.zipf_s"]  # the swept value reached the point
        assert row["scenario.gate.capacity_factor"] == row["gate.capacity_factor"]
        assert row["scenario.simulation.seed"] == row["simulation.seed"]
        assert row["scenario.cluster.profile.gpu.hbm_bytes"] == 80e9  # SI, not the file's GB
        assert row["scenario.routing.trace_sha256"] is None
    assert {row["gate.capacity_factor"] for row in rows} == {1.0, 1.25, None}


def test_swept_columns_fit_every_value_of_the_sweep():
    values = [{"a.int": 1, "a.mixed": 1, "a.null": None, "a.text": "x", "a.list": [1, 2], "a.kinds": 1},
              {"a.int": 2, "a.mixed": 2.5, "a.null": None, "a.text": None, "a.list": [3], "a.kinds": "auto"}]
    cols = {c.name: c for c in swept_columns(list(values[0]), values)}
    assert cols["a.int"].type == pa.int64() and cols["a.mixed"].type == pa.float64()
    assert cols["a.null"].type == pa.null() and cols["a.text"].type == pa.string()
    assert cols["a.list"].as_json and cols["a.kinds"].as_json


@pytest.mark.skipif(not TRACE.is_file(), reason="the committed trace is missing")
def test_a_trace_from_the_command_line_reaches_the_workers_and_is_its_sha256(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_sweep), "--trace", str(TRACE), "--jobs", "2", "--out", str(out)]) == 0
    assert "points failed" not in capsys.readouterr().err
    rows = [t.to_pylist()[0] for t in _tables(out)]
    assert len(rows) == 6  # zipf_s is dropped from the zipped group; seed x capacity factor stays
    sha = load_trace(TRACE).counts_sha256
    assert {row["scenario.routing.trace_sha256"] for row in rows} == {sha}
    assert all("routing.zipf_s" not in row for row in rows)
    assert {json.dumps(json.loads(r["swept_keys"])) for r in rows} == {'["simulation.seed", "gate.capacity_factor"]'}
