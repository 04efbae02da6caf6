"""Hardware profiles (hw_profiles/*.yaml) -> ClusterProfile. Every number is `{value: X, source: "..."}`; which
keys exist, their units and bounds are declared once, in moesim.spec.hardware and moesim.spec.calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Mapping

from moesim.io.document import MISSING, Reader, check_field, file_keys, validate
from moesim.io.strict import read_yaml_mapping
from moesim.spec.document import CurveFileKeys
from moesim.spec.errors import SpecError
from moesim.spec.hardware import ClusterProfile, EfficiencyCurve
from moesim.spec.render import REQUIRED, join

PROFILE_DIR = Path(__file__).resolve().parents[2] / "hw_profiles"
SCHEMA_VERSION = ClusterProfile.model_fields["schema_version"].default
_CURVE_LEAF = ('{value: <fraction of peak>, source: "where the number comes from"} '
               'or {table_GFLOP: [[GFLOP, efficiency], ...], source: ...}')


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile(ref: str, relative_to: Path | None = None) -> Path:
    """A profile reference is a path (ends in .yaml/.yml, relative to the scenario file) or a name in
    hw_profiles/."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
        return path if path.is_absolute() or relative_to is None else relative_to / path
    return PROFILE_DIR / f"{ref}.yaml"


def load_profile(path: Path) -> ClusterProfile:
    data = read_yaml_mapping(path, "hardware profile")
    try:
        return parse_profile(data)
    except SpecError as err:
        raise err.with_source(str(path)) from None


def parse_profile(doc: Mapping) -> ClusterProfile:
    # the version first: a newer format's other keys would only mislead
    check_field(ClusterProfile, "schema_version", doc.get("schema_version", MISSING), "schema_version")
    reader = Reader(hooks={EfficiencyCurve: _curve})
    fields = reader.fields(ClusterProfile, doc, "")
    return validate(ClusterProfile, {**fields, "provenance": reader.provenance}, doc)


def _curve(reader: Reader, leaf: Any, path: str) -> Any:
    """An efficiency curve's leaf: a constant `{value, source}` or a table `{table_GFLOP, source}`."""
    if not isinstance(leaf, Mapping):
        raise SpecError(path, leaf, _CURVE_LEAF)
    reader.source(leaf, path, file_keys(EfficiencyCurve))
    if ("value" in leaf) == ("table_GFLOP" in leaf):
        both = "value" in leaf
        raise SpecError(join(path, "table_GFLOP"), leaf.get("table_GFLOP"),
                        "either value or table_GFLOP, not both" if both else REQUIRED)
    if "value" in leaf:
        constant = validate(CurveFileKeys, {"value": leaf["value"]}, leaf, path).value
        return {"points": ((1.0, constant),)}
    return reader.fields(EfficiencyCurve, {"table_GFLOP": leaf["table_GFLOP"]}, path)
