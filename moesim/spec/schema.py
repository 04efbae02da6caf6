"""JSON Schema (2020-12) of the YAML files as users write them -- scenarios/*.yaml and hw_profiles/*.yaml --
generated from the spec declarations: keys as written, bounds and defaults in the written units, `{value, source}`
leaves, the keys io reads itself (moesim.spec.document), presets and each placement policy's parameters."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from moesim.spec.base import INT_MAX, FieldMeta, field_meta
from moesim.spec.document import FILE_KEYS, SourceKey
from moesim.spec.hardware import ClusterProfile
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.render import is_model, unwrap
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.scenario import Scenario

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_BOUNDS = ((at.Ge, "ge", "minimum"), (at.Gt, "gt", "exclusiveMinimum"), (at.Le, "le", "maximum"),
           (at.Lt, "lt", "exclusiveMaximum"))


def scenario_json_schema() -> dict:
    """A scenario file, with each placement policy's sub-section (moesim.spec.placement_params) and the model and
    routing presets."""
    schema = {"$schema": DIALECT, "title": "moesim scenario",
              "description": "A scenario for `moesim run` / `moesim validate` (scenarios/*.yaml).",
              **_object(Scenario)}
    props = schema["properties"]
    for section, presets in (("model", MODEL_PRESETS), ("routing", ROUTING_PRESETS)):
        preset = props[section]["properties"]["preset"]
        preset["enum"] = list(presets)
        preset.pop("default", None)  # no preset: every key spelt out
    return schema


def profile_json_schema() -> dict:
    """A hardware profile (hw_profiles/*.yaml): every number `{value: X, source: "..."}` in the unit its key
    names."""
    schema = {"$schema": DIALECT, "title": "moesim hardware profile",
              "description": "A kind of machine, as data (hw_profiles/*.yaml).", **_object(ClusterProfile)}
    schema["required"].insert(0, "schema_version")  # a default in Python; a file says which format it is
    return schema


def _object(model: type[BaseModel]) -> dict:
    """A spec's section as written: its in-file fields under their YAML keys, then the keys io reads itself."""
    props, required = {}, []
    entries = [(name, info, model) for name, info in model.model_fields.items()]
    extra = FILE_KEYS.get(model)
    entries += [(name, info, extra) for name, info in (extra.model_fields.items() if extra is not None else ())]
    for name, info, owner in entries:
        meta = field_meta(name, info)
        if not meta.in_file:
            continue
        props[meta.key] = _field(info, meta)
        if info.is_required() and not (owner is Scenario and name == "name"):  # the name defaults to the file's
            required.append(meta.key)
    out: dict = {"type": "object", "properties": props, "additionalProperties": False}
    if required and "preset" in props:  # a preset (or a model's config.json) gives every required key
        givers = [key for key in ("preset", "hf_config") if key in props]
        out["anyOf"] = [*({"required": [key]} for key in givers), {"required": required}]
    elif required:
        out["required"] = required
    return out


def _field(info: Any, meta: FieldMeta) -> dict:
    schema = _type(info.annotation, info.metadata, meta.scale)
    text = info.description or ""
    if meta.sourced:
        schema = _sourced(info.annotation, schema, f"the value [{meta.unit}]" if meta.unit else "the value")
    schema["description"] = f"{text} [{meta.unit}]" if meta.unit else text
    default = info.get_default(call_default_factory=True) if not info.is_required() else PydanticUndefined
    shown = _json_default(default, meta.scale)
    if shown is not PydanticUndefined:
        schema["default"] = shown
    return schema


def _json_default(value: Any, scale: Any) -> Any:
    if value is PydanticUndefined or isinstance(value, BaseModel):
        return PydanticUndefined
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and isinstance(scale, (int, float)) and scale != 1.0:
        return value / scale
    if isinstance(value, tuple):
        return [_json_default(v, scale) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str, dict)) else PydanticUndefined


def _sourced(annotation: Any, value_schema: dict, value_text: str) -> dict:
    """`{value: X, source: "..."}`; per key for a mapping (a peak per dtype); a model's keys for a model (an
    attention table: `value` or its four keys together). `value_text`: the description of X."""
    source = _field(SourceKey.model_fields["source"], field_meta("source", SourceKey.model_fields["source"]))
    base = unwrap(annotation)[0]
    if get_origin(base) is dict:
        inner = {**value_schema["additionalProperties"], "description": value_text}
        return {**value_schema, "additionalProperties": _leaf({"value": inner}, ["value"], source)}
    if is_model(base):
        props = value_schema["properties"]
        # a file-only key (a curve's constant `value`) is one form, and so is each of the model's own keys, unless
        # the model needs them together (the attention table's four keys)
        fields = [(field_meta(n, i).key, i) for n, i in base.model_fields.items() if field_meta(n, i).in_file]
        own = [key for key, _ in fields]
        required_own = [key for key, info in fields if info.is_required()]
        together = required_own and len(required_own) == len(own)
        forms = [[key] for key in props if key not in own]
        forms += [required_own] if together else [[key] for key in own]
        # each form excludes the other forms' keys: the loader refuses a constant `value` beside a table
        return {**_leaf(props, [], source), "oneOf": [
            {"required": keys, "not": {"anyOf": [{"required": [k]} for k in props if k not in keys]}}
            for keys in forms]}
    return _leaf({"value": {**value_schema, "description": value_text}}, ["value"], source)


def _leaf(props: dict, required: list, source: dict) -> dict:
    return {"type": "object", "properties": {**props, "source": source}, "required": [*required, "source"],
            "additionalProperties": False}


def _type(annotation: Any, constraints: Any = (), scale: Any = 1.0) -> dict:
    base, inner, nullable = unwrap(annotation)
    constraints = [*constraints, *inner]
    origin, args = get_origin(base), get_args(base)
    if base is bool:
        schema: dict = {"type": "boolean"}
    elif base in (int, float):
        schema = {"type": "integer" if base is int else "number", **_bounds(constraints, scale)}
    elif base is str:
        schema = {"type": "string", **({"pattern": r"\S"} if constraints else {})}
    elif isinstance(base, type) and issubclass(base, Enum):
        schema = {"type": "string", "enum": [m.value for m in base]}
    elif origin is Literal:
        schema = {"enum": list(args)}
    elif is_model(base):
        schema = _object(base)
    elif origin in (tuple, list) or base in (tuple, list):
        schema = _array(args, scale)
    elif origin is dict or base is dict:
        schema = {"type": "object", "additionalProperties": _type(args[1], (), scale) if args else {}}
        keys = _type(args[0]) if args else {}
        if "enum" in keys:
            schema["propertyNames"] = {"enum": keys["enum"]}
    else:
        schema = {}
    schema.update(_lengths(constraints, "Properties" if schema.get("type") == "object" else "Items"))
    return _nullable(schema) if nullable else schema


def _array(args: tuple, scale: Any) -> dict:
    if not args:
        return {"type": "array"}
    if len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _type(args[0], (), scale)}
    return {"type": "array", "prefixItems": [_type(a) for a in args], "minItems": len(args), "maxItems": len(args)}


def _bounds(constraints: list, scale: Any) -> dict:
    divide = scale if isinstance(scale, (int, float)) else 1.0
    out = {}
    for c in constraints:
        for kind, attr, key in _BOUNDS:
            if isinstance(c, kind) and abs(getattr(c, attr)) not in (INT_MAX, INT_MAX + 1):  # int64's goes unsaid
                value = getattr(c, attr)
                out[key] = value / divide if divide != 1.0 else value
    return out


def _lengths(constraints: list, what: str) -> dict:
    out = {}
    for c in constraints:
        if isinstance(c, at.MinLen) and what:
            out[f"min{what}"] = c.min_length
        elif isinstance(c, at.MaxLen) and what:
            out[f"max{what}"] = c.max_length
    return out


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}
