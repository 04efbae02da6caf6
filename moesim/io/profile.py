"""Hardware profiles (hw_profiles/*.yaml) -> ClusterProfile. Every number is `{value: X, source: "..."}`; which
keys exist, their units and bounds are declared once, in moesim.spec.hardware and moesim.spec.calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Mapping

from moesim.io.document import MISSING, Reader, check_field, validate
from moesim.io.strict import read_yaml_mapping
from moesim.spec.errors import SpecError
from moesim.spec.attention_efficiency import ATTENTION_TABLE_KEYS, AttentionEfficiencyTable
from moesim.spec.hardware import ClusterProfile

PROFILE_DIR = Path(__file__).resolve().parents[2] / "hw_profiles"
SCHEMA_VERSION = ClusterProfile.model_fields["schema_version"].default


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
    reader = Reader(hooks={AttentionEfficiencyTable: _attention})
    fields = reader.fields(ClusterProfile, doc, "")
    return validate(ClusterProfile, {**fields, "provenance": reader.provenance}, doc)


def _attention(reader: Reader, leaf: Any, path: str) -> Any:
    """The attention core's efficiency: a constant `{value, source}` or a table by sequence length and head
    dimension (moesim.spec.attention_efficiency)."""
    if isinstance(leaf, Mapping):
        reader.source(leaf, path, ATTENTION_TABLE_KEYS)
    return AttentionEfficiencyTable.from_yaml(leaf, path)
