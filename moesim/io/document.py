"""A YAML mapping -> the fields of a spec, driven by the spec's own declarations (moesim.spec.base.spec_field):
every key is checked (an unknown one is an error naming the closest allowed key), renamed to its field,
`{value, source}` leaves are unwrapped (each source recorded by key path) and human units scaled to SI once.
Types, bounds and cross-field rules are then pydantic's (`validate`), with errors rendered as one line."""

from __future__ import annotations

from typing import Any, get_args, get_origin
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from moesim.io.strict import finite_float
from moesim.spec.base import FieldMeta, field_meta
from moesim.spec.document import FILE_KEYS, SourceKey
from moesim.spec.errors import SpecError, show_value
from moesim.spec.render import REQUIRED, describe, is_model, join, spec_error, unknown_key, unwrap

_NO_META = FieldMeta(key="", unit="", scale=1.0, sourced=False, in_file=True, expected=None)
MISSING = object()  # a key the file does not have
Hook = Callable[["Reader", Any, str], Any]


def validate(model: type[BaseModel], data: Any, doc: Any, prefix: str = "") -> Any:
    """`model` validated from `data` (field names); errors show values from `doc` (the YAML at key path
    `prefix`)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise spec_error(err, model, doc, prefix) from None


def check_field(model: type[BaseModel], name: str, value: Any, path: str) -> Any:
    """One field of `model` validated on its own (`value` may be MISSING), before the rest of its file."""
    info, meta = model.model_fields[name], field_meta(name, model.model_fields[name])
    if value is MISSING:
        raise SpecError(path, None, REQUIRED)
    try:
        return TypeAdapter(info.annotation, config=ConfigDict(strict=True)).validate_python(value)
    except ValidationError as err:
        etype = err.errors()[0]["type"]
        raise SpecError(path, value, meta.expected or describe(info.annotation, info.metadata, meta.unit, etype)) \
            from None


def file_keys(model: type[BaseModel]) -> dict[str, str | None]:
    """Key as written -> field name, for the keys a file may give `model` (None: a key io reads itself)."""
    keys: dict[str, str | None] = {}
    for name, info in model.model_fields.items():
        meta = field_meta(name, info)
        if meta.in_file:
            keys[meta.key] = name
    extra = FILE_KEYS.get(model)
    keys.update({key: None for key in (extra.model_fields if extra is not None else ())})
    return keys


def check_keys(raw: Mapping, path: str, allowed: Any) -> None:
    for key, value in raw.items():
        if not isinstance(key, str):
            raise SpecError(join(path, show_value(key)), key, "string keys only")
        if key not in allowed:
            raise unknown_key(path, key, value, allowed)


def scaled(value: Any, scale: Any) -> Any:
    """A number (or each row of a table, column by column) times the SI scale; anything else unchanged, for
    validation to refuse as written."""
    if isinstance(scale, tuple):
        if not isinstance(value, list):
            return value
        return [[float(x) * s for x, s in zip(row, scale)]
                if isinstance(row, list) and len(row) == len(scale) and all(finite_float(x) is not None for x in row)
                else row for row in value]
    if scale == 1.0 or finite_float(value) is None:
        return value
    return float(value) * scale


class Reader:
    """Converts one file. `provenance`: key path -> source of every `{value, source}` leaf read. `hooks`: spec
    types whose YAML form io owns (an efficiency curve's constant-or-table leaf) -> converter."""

    def __init__(self, hooks: dict[type, Hook] | None = None):
        self.provenance: dict[str, str] = {}
        self.hooks = hooks or {}

    def fields(self, model: type[BaseModel], raw: Any, path: str) -> Any:
        if not isinstance(raw, Mapping):
            return raw  # validation says a mapping was expected
        keys = file_keys(model)
        check_keys(raw, path, keys)
        out = {}
        for key, value in raw.items():
            name = keys[key]
            if name is not None:
                info = model.model_fields[name]
                out[name] = self.value(info.annotation, field_meta(name, info), value, join(path, key),
                                       optional_section=not info.is_required())
        return out

    def value(self, annotation: Any, meta: FieldMeta, value: Any, path: str, optional_section: bool = False) -> Any:
        base, _, nullable = unwrap(annotation)
        if value is None and optional_section and is_model(base) and not nullable:
            return {}  # `routing: null` is `routing: {}`: every default
        if base in self.hooks:
            return self.hooks[base](self, value, path)
        if meta.sourced:
            return self._sourced(base, meta, value, path)
        if is_model(base):
            return self.fields(base, value, path)
        origin, args = get_origin(base), get_args(base)
        inner = unwrap(args[0])[0] if args else None
        if origin in (tuple, list) and isinstance(value, list) and is_model(inner):
            return [self.fields(inner, item, join(path, i)) for i, item in enumerate(value)]
        if origin is dict and isinstance(value, Mapping) and args and \
                (is_model(unwrap(args[1])[0]) or get_origin(unwrap(args[1])[0]) is dict):
            return {k: self.value(args[1], _NO_META, v, join(path, str(k))) for k, v in value.items()}
        return scaled(value, meta.scale)

    def _sourced(self, base: Any, meta: FieldMeta, value: Any, path: str) -> Any:
        if get_origin(base) is dict:  # one leaf per key (peak per dtype)
            if not isinstance(value, Mapping):
                return value
            return {k: self.leaf(get_args(base)[1], meta, v, join(path, str(k))) for k, v in value.items()}
        return self.leaf(base, meta, value, path)

    def leaf(self, base: Any, meta: FieldMeta, value: Any, path: str) -> Any:
        """`{value: X, source: "..."}` -> X in SI."""
        if not isinstance(value, Mapping):
            shown = "true or false" if unwrap(base)[0] is bool else f"<number> {meta.unit}".strip()
            raise SpecError(path, value, f'{{value: {shown}, source: "where the number comes from"}}')
        self.source(value, path, ("value",))
        if "value" not in value:
            raise SpecError(join(path, "value"), None, REQUIRED)
        return scaled(value["value"], meta.scale)

    def source(self, leaf: Mapping, path: str, keys: Any) -> None:
        """Check a leaf's keys and record its source."""
        check_keys(leaf, path, {*keys, "source"})
        self.provenance[path] = validate(SourceKey, {k: leaf[k] for k in ("source",) if k in leaf}, leaf,
                                         path).source
