"""The published JSON Schema (moesim.spec.schema, `moesim schema`) describes the files as users write them:
every shipped scenario and profile validates against it, and it refuses what the loader refuses for the same
reason (an unknown key, a string for an integer, a bare number where a sourced leaf belongs)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest
import yaml

from moesim.cli import main
from moesim.spec.schema import profile_json_schema, scenario_json_schema

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
PROFILES = sorted((ROOT / "hw_profiles").glob("*.yaml"))


def _is_type(value: Any, kind: str) -> bool:
    return {"object": isinstance(value, dict), "array": isinstance(value, list), "string": isinstance(value, str),
            "boolean": isinstance(value, bool), "null": value is None,
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]


def errors(schema: dict, value: Any, path: str = "$") -> Iterator[str]:
    """A small JSON Schema validator: the keywords moesim.spec.schema emits (jsonschema is not a dependency)."""
    if "type" in schema and not _is_type(value, schema["type"]):
        yield f"{path}: {value!r} is not of type {schema['type']}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} not in {schema['enum']}"
    for key, ok in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                    ("exclusiveMinimum", lambda v, b: v > b), ("exclusiveMaximum", lambda v, b: v < b)):
        if key in schema and _is_type(value, "number") and not ok(value, schema[key]):
            yield f"{path}: {value!r} breaks {key} {schema[key]}"
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        yield f"{path}: {value!r} does not match {schema['pattern']}"
    for key, branch_ok in (("anyOf", lambda n: n >= 1), ("oneOf", lambda n: n == 1)):
        if key in schema and not branch_ok(sum(not any(errors(s, value, path)) for s in schema[key])):
            yield f"{path}: {value!r} fails {key}"
    if isinstance(value, dict):
        yield from _object_errors(schema, value, path)
    if isinstance(value, list):
        yield from _array_errors(schema, value, path)


def _object_errors(schema: dict, value: dict, path: str) -> Iterator[str]:
    for key in schema.get("required", []):
        if key not in value:
            yield f"{path}: missing {key}"
    if len(value) < schema.get("minProperties", 0):
        yield f"{path}: fewer than {schema['minProperties']} properties"
    props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
    for key, child in value.items():
        if "propertyNames" in schema:
            yield from errors(schema["propertyNames"], key, f"{path}.{key}")
        if key in props:
            yield from errors(props[key], child, f"{path}.{key}")
        elif extra is False:
            yield f"{path}: unknown key {key}"
        elif isinstance(extra, dict):
            yield from errors(extra, child, f"{path}.{key}")


def _array_errors(schema: dict, value: list, path: str) -> Iterator[str]:
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
        yield f"{path}: {len(value)} items"
    for i, item in enumerate(value):
        prefix = schema.get("prefixItems", [])
        item_schema = prefix[i] if i < len(prefix) else schema.get("items", {})
        yield from errors(item_schema, item, f"{path}[{i}]")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenario_matches_the_schema(path: Path):
    assert list(errors(scenario_json_schema(), _load(path))) == []


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile_matches_the_schema(path: Path):
    assert list(errors(profile_json_schema(), _load(path))) == []


def _key_paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(node, dict):
        for key, child in node.items():
            yield path + (key,)
            yield from _key_paths(child, path + (key,))


def _described(schema: dict, path: tuple) -> bool:
    """Whether the schema names every key of `path` (through properties, anyOf branches and mappings)."""
    if not path:
        return True
    for branch in [schema, *schema.get("anyOf", [])]:
        if path[0] in branch.get("properties", {}) and _described(branch["properties"][path[0]], path[1:]):
            return True
        extra = branch.get("additionalProperties")
        if isinstance(extra, dict) and _described(extra, path[1:]):
            return True
    return False


@pytest.mark.parametrize("path", [*SCENARIOS, *PROFILES], ids=lambda p: p.stem)
def test_every_key_of_a_shipped_file_is_in_the_schema(path: Path):
    schema = scenario_json_schema() if path.parent.name == "scenarios" else profile_json_schema()
    doc = _load(path)
    if path.parent.name == "hw_profiles" and "calibration" in doc:
        doc["calibration"].pop("provenance")  # free-form by design: whatever calibrate recorded
    missing = [p for p in _key_paths(doc) if not _described(schema, p)]
    assert missing == []


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda d: d.__setitem__("colour", "blue"), id="unknown-top-level-key"),
    pytest.param(lambda d: d["layout"].__setitem__("tpp", 2), id="unknown-layout-key"),
    pytest.param(lambda d: d["training"].__setitem__("seq_len", "4096"), id="string-for-int"),
    pytest.param(lambda d: d["training"].__setitem__("seq_len", 0), id="zero-seq-len"),
    pytest.param(lambda d: d["model"].__setitem__("preset", "mixtral-8x8b"), id="unknown-preset"),
    pytest.param(lambda d: d["training"].__setitem__("dtype", "fp64"), id="unknown-dtype"),
    pytest.param(lambda d: d["cluster"].pop("profile"), id="missing-profile"),
    pytest.param(lambda d: d.__setitem__("placement", {"smartmoe": {"frq": 3}}), id="unknown-policy-param"),
])
def test_the_schema_refuses_what_the_loader_refuses(quickstart_doc, mutate):
    mutate(quickstart_doc)
    assert list(errors(scenario_json_schema(), quickstart_doc))


def test_the_profile_schema_wants_sourced_numbers_in_written_units():
    doc = _load(ROOT / "hw_profiles" / "dgx-h100.yaml")
    bare = copy.deepcopy(doc)
    bare["gpu"]["hbm_GB"] = 80
    assert list(errors(profile_json_schema(), bare))
    hbm = profile_json_schema()["properties"]["gpu"]["properties"]["hbm_GB"]
    assert hbm["properties"]["value"]["minimum"] == 0.001 and "[GB]" in hbm["description"]  # 1 MB
    assert hbm["properties"]["value"]["maximum"] == 1e6  # 1 PB
    latency = profile_json_schema()["properties"]["node"]["properties"]["nvlink_peer_overhead_us"]
    assert latency["default"] == 0.0 and "[us]" in latency["description"]


def test_the_scenario_schema_lists_sweep_presets_and_policies():
    props = scenario_json_schema()["properties"]
    assert "sweep" in props and "mixtral-8x7b" in props["model"]["properties"]["preset"]["enum"]
    smartmoe = props["placement"]["properties"]["smartmoe"]["anyOf"][0]
    assert smartmoe["properties"]["freq"]["type"] == "integer" and smartmoe["additionalProperties"] is False


@pytest.mark.parametrize("kind", ["scenario", "profile"])
def test_schema_command_prints_and_writes_json(tmp_path, capsys, kind):
    assert main(["schema", kind]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"].startswith("https://json-schema.org/")
    out = tmp_path / f"{kind}.schema.json"
    assert main(["schema", kind, "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == printed
    assert main(["schema", kind, "--out", str(out)]) == 2  # never overwritten silently
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert main(["schema", kind, "--out", str(out), "--force"]) == 0


def test_every_placement_property_is_described_with_bounds_and_units():
    """The policies' sub-sections come from their spec models: every property has help text, a type, and (for
    numbers) its bounds; units are in the description."""
    placement = scenario_json_schema()["properties"]["placement"]["properties"]
    policies = ["static", "fastermoe", "smartmoe", "flexmoe", "ta_moe", "eplb"]
    assert set(policies) <= set(placement)
    described = 0
    for kind in policies:
        section = placement[kind]
        assert section["description"].startswith(f"parameters of the {kind} policy")
        body = section["anyOf"][0]
        assert body["type"] == "object" and body["additionalProperties"] is False
        for name, prop in body["properties"].items():
            assert prop.get("description"), f"placement.{kind}.{name}"
            assert "default" in prop, f"placement.{kind}.{name}"
            described += 1
    assert described == 16
    smartmoe = placement["smartmoe"]["anyOf"][0]["properties"]
    assert smartmoe["freq"]["minimum"] == 1 and "[steps]" in smartmoe["freq"]["description"]
    flexmoe = placement["flexmoe"]["anyOf"][0]["properties"]
    assert (flexmoe["threshold"]["minimum"], flexmoe["threshold"]["maximum"]) == (1.0, 1e6)


def test_every_property_of_both_schemas_has_a_description():
    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            for key, prop in node.get("properties", {}).items():
                if not prop.get("description"):
                    yield f"{path}.{key}"
                yield from walk(prop, f"{path}.{key}")
            for key in ("anyOf", "oneOf"):
                for branch in node.get(key, []):
                    yield from walk(branch, path)
            if isinstance(node.get("additionalProperties"), dict):
                yield from walk(node["additionalProperties"], f"{path}.*")
            if isinstance(node.get("items"), dict):
                yield from walk(node["items"], f"{path}[]")
    assert list(walk(scenario_json_schema(), "$")) == []
    assert list(walk(profile_json_schema(), "$")) == []


def test_profile_schema_bounds_are_in_written_units():
    props = profile_json_schema()["properties"]
    peak = props["gpu"]["properties"]["peak_dense_TFLOPs"]["additionalProperties"]["properties"]["value"]
    assert (peak["minimum"], peak["maximum"]) == (0.001, 1e9)  # 1 GFLOP/s .. 1 ZFLOP/s
    nic = props["fabric"]["properties"]["nic_Gbps"]["properties"]["value"]
    assert (nic["minimum"], nic["maximum"]) == (0.008, 8e6)  # 1 MB/s .. 1 PB/s
    latency = props["node"]["properties"]["nvlink_latency_us"]["properties"]["value"]
    assert (latency["minimum"], latency["maximum"]) == (0.0, 1e6)  # at most 1 s
