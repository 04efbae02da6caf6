"""pydantic's ValidationError -> SpecError, the one-line message: the YAML key path of the first error, the value
as the user wrote it, and what is allowed, built from the field's declaration (type, bounds, unit)."""

from __future__ import annotations

import difflib
import functools
import operator
import re
import types
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from collections.abc import Iterable

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from moesim.spec.base import INT_MAX, FieldMeta, field_meta
from moesim.spec.errors import SpecError

REQUIRED = "this key to be present (it is required)"
NO_DOC = object()  # no YAML document to show values from: show what pydantic was given
_FLOAT_TYPE_ERRORS = ("float_type", "float_parsing", "finite_number")


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def dotted(parts: Iterable[str | int], prefix: str = "") -> str:
    path = prefix
    for part in parts:
        path = join(path, part)
    return path


def unknown_key(path: str, key: str, value: Any, allowed: Iterable[str]) -> SpecError:
    """`key` is not allowed here; name the closest allowed key (case slips too: hbm_gb for hbm_GB)."""
    allowed = sorted(set(allowed))
    lower = {k.lower(): k for k in allowed}
    close = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=0.6)
    hint = f" (did you mean '{lower[close[0]]}'?)" if close else ""
    if not allowed:
        return SpecError(join(path, key), value, f"no keys here ({path or 'this mapping'} takes none)")
    return SpecError(join(path, key), value, f"no such key{hint}; allowed: {', '.join(allowed)}")


def unwrap(annotation: Any) -> tuple[Any, list, bool]:
    """(bare type, constraints from Annotated, nullable) of an annotation such as Annotated[int, Field(ge=1)] | None."""
    constraints: list = []
    nullable = False
    while True:
        if get_origin(annotation) is Annotated:
            base, *extra = get_args(annotation)
            for item in extra:
                constraints.extend(item.metadata if isinstance(item, FieldInfo) else [item])
            annotation = base
        elif get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            nullable = True
            annotation = rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)
        else:
            return annotation, constraints, nullable


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def is_rows(annotation: Any) -> bool:
    """A table: a tuple of fixed-size tuples (its errors name the table and show the offending row)."""
    base, _, _ = unwrap(annotation)
    args = get_args(base)
    return get_origin(base) is tuple and len(args) == 2 and args[1] is Ellipsis and \
        get_origin(unwrap(args[0])[0]) is tuple


@dataclass
class _Where:
    """Where a pydantic loc lands in the YAML document."""

    parts: list = field(default_factory=list)  # YAML path: keys as written, list indices
    annotation: Any = None  # the type found there
    constraints: list = field(default_factory=list)
    meta: FieldMeta | None = None  # of the innermost field on the way
    at_field: bool = False  # the loc ends at that field (not inside one of its elements)
    owner: Any = None  # the model whose field (or unknown key) the loc names last
    row: int | None = None  # a table's offending row
    key_type: Any = None  # set when the fault is a mapping key itself ('[key]')


def _walk(model: type, loc: tuple) -> _Where:
    w = _Where(annotation=model, owner=model)
    for i, part in enumerate(loc):
        if part == "[key]":
            return w
        base = unwrap(w.annotation)[0]
        if is_model(base):
            w.owner = base
        if is_model(base) and isinstance(part, str) and part in base.model_fields:
            info = base.model_fields[part]
            w.meta, w.at_field, w.key_type = field_meta(part, info), True, None
            w.parts.append(w.meta.key)
            w.annotation, w.constraints = info.annotation, list(info.metadata)
            if is_rows(info.annotation) and i + 1 < len(loc):
                w.row = loc[i + 1] if isinstance(loc[i + 1], int) else None
                return w
            continue
        w.parts.append(part)
        w.at_field = False
        origin, args = get_origin(base), get_args(base)
        if origin is dict:
            w.key_type, w.annotation = args[0], args[1]
        elif origin in (tuple, list) and args:
            homogeneous = origin is list or (len(args) == 2 and args[1] is Ellipsis)
            w.annotation = args[0] if homogeneous else (args[part] if isinstance(part, int) and part < len(args)
                                                        else Any)
            w.key_type = None
        else:
            w.annotation, w.key_type = Any, None
        _, w.constraints, _ = unwrap(w.annotation)
    w.key_type = None
    return w


def _lookup(doc: Any, parts: list) -> tuple[bool, Any]:
    node = doc
    for part in parts:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def _bounds(constraints: list, scale: Any, etype: str) -> tuple[str, str]:
    """(the range in words, a note said only to a value beyond int64)."""
    lo = hi = None
    lo_open = hi_open = False
    for c in constraints:  # the tightest of each side (a field's own bound and its type's int64 range)
        if isinstance(c, (at.Ge, at.Gt)):
            bound, is_open = (c.ge, False) if isinstance(c, at.Ge) else (c.gt, True)
            if lo is None or bound > lo or (bound == lo and is_open):
                lo, lo_open = bound, is_open
        elif isinstance(c, (at.Le, at.Lt)):
            bound, is_open = (c.le, False) if isinstance(c, at.Le) else (c.lt, True)
            if hi is None or bound < hi or (bound == hi and is_open):
                hi, hi_open = bound, is_open
    note = ""
    if (hi == INT_MAX and not hi_open) or (hi == INT_MAX + 1 and hi_open):  # every integer has it (int64; Count
        # says `< 2**63`): said only to the value that broke it
        hi, note = None, (f" and at most 2**63 - 1 ({INT_MAX})" if etype in ("less_than_equal", "less_than")
                          else "")
    if lo == -INT_MAX:
        lo, note = None, (f" in [-{INT_MAX}, {INT_MAX}]" if etype in ("less_than_equal", "greater_than_equal")
                          else note)
    show = (lambda b: f"{b / scale:g}") if isinstance(scale, (int, float)) and scale != 1.0 else repr
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}", note
    if lo is not None:
        return f" {'>' if lo_open else '>='} {show(lo)}", note
    if hi is not None:
        return f" {'<' if hi_open else '<='} {show(hi)}", note
    return "", note


def describe(annotation: Any, constraints: Any = (), unit: str = "", etype: str = "", scale: Any = 1.0) -> str:
    """What a value of this type must be, in words: 'an integer >= 1 tokens', 'one of: fp32, bf16'."""
    base, inner, nullable = unwrap(annotation)
    constraints = [*constraints, *inner]
    origin = get_origin(base)
    bounds, note = _bounds(constraints, scale, etype) if base in (int, float) else ("", "")
    if base is bool:
        text = "true or false"
    elif base is int:
        text = "an integer" + bounds
    elif base is float:
        text = ("a finite number" if etype in _FLOAT_TYPE_ERRORS else "a number") + bounds
    elif base is str:
        text = "a non-empty string" if constraints else "a string"
    elif isinstance(base, type) and issubclass(base, Enum):
        text = "one of: " + ", ".join(str(m.value) for m in base)
    elif origin is Literal:
        values = [str(v) for v in get_args(base)]
        text = values[0] if len(values) == 1 else "one of: " + ", ".join(values)
    elif is_model(base) or dict in (base, origin):
        text = "a mapping of keys"
    elif base in (tuple, list) or origin in (tuple, list):
        text = "a list"
    else:
        text = "a valid value"
    text = f"{text} {unit}" if unit and base is not bool else text
    return f"{text}{note} or null" if nullable else f"{text}{note}"


def _allowed_keys(annotation: Any) -> list[str]:
    base, _, _ = unwrap(annotation)
    if isinstance(base, type) and issubclass(base, Enum):
        return [str(m.value) for m in base]
    return [str(v) for v in get_args(base)] if get_origin(base) is Literal else []


def spec_error(err: ValidationError, model: type, doc: Any = NO_DOC, prefix: str = "") -> SpecError:
    """The first error of `err` (raised validating `model`) as a SpecError. `doc`: the YAML mapping that was read,
    to show values as written (2, not 2.0; GB, not bytes); `prefix`: the key path of `doc` in its file."""
    e = err.errors(include_url=False)[0]
    loc, etype = tuple(e["loc"]), e["type"]
    w = _walk(model, loc)
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError) and cause.key:  # a cross-field check names the key it blames
        return SpecError(dotted([*w.parts, *cause.key.split(".")], prefix), cause.value, cause.expected)
    path = list(w.parts)
    if w.meta is not None and w.meta.sourced and w.key_type is None and etype != "extra_forbidden" and \
            not is_model(unwrap(w.annotation)[0]) and get_origin(unwrap(w.annotation)[0]) is not dict:
        path.append("value")  # {value: ..., source: ...}: the number is at fault
    found, value = _lookup(doc, path + ([w.row] if w.row is not None else [])) if doc is not NO_DOC else (False, None)
    if not found:
        value = None if etype == "missing" else (cause.value if isinstance(cause, SpecError) else e.get("input"))
    if etype == "extra_forbidden":
        owner = unwrap(w.owner)[0]
        allowed = [field_meta(n, f).key for n, f in owner.model_fields.items()] if is_model(owner) else []
        key = path.pop()
        return unknown_key(dotted(path, prefix), str(key), value, allowed)
    if w.key_type is not None:  # '[key]': the mapping key itself is not allowed
        allowed = _allowed_keys(w.key_type)
        if not allowed:
            return SpecError(dotted(path, prefix), path[-1], "string keys only" if unwrap(w.key_type)[0] is str
                             else f"keys that are {describe(w.key_type)}")
        key = path.pop()
        return unknown_key(dotted(path, prefix), str(key), value, allowed)
    return SpecError(dotted(path, prefix), value, _expected(etype, w, cause) + _yaml11_hint(w.annotation, value))


_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}
_YAML11_NUMBER = re.compile(r"[-+]?[0-9][0-9_]*(?:[:.][0-9_]+)*(?:[eE][-+]?[0-9]+)?")


def _yaml11_hint(annotation: Any, value: Any) -> str:
    """Text that YAML 1.1 (and so many other tools) would have read as a boolean or a number, but the YAML 1.2
    core schema moesim reads with does not: say so, next to what to write instead."""
    base = unwrap(annotation)[0]
    if not isinstance(value, str):
        return ""
    if base is bool and value.lower() in _YAML11_BOOLS:
        return f" ({value} is text in YAML 1.2: write true or false)"
    if base in (int, float) and ("_" in value or ":" in value) and _YAML11_NUMBER.fullmatch(value):
        return f" ({value} is text in YAML 1.2: write the number without '_' or ':')"
    return ""


def _expected(etype: str, w: _Where, cause: Any) -> str:
    if etype == "missing":
        return REQUIRED
    if w.meta is not None and w.meta.expected and (w.at_field or w.row is not None or is_rows(w.annotation)):
        return w.meta.expected
    if isinstance(cause, SpecError):
        return cause.expected
    unit = w.meta.unit if w.meta is not None else ""
    scale = w.meta.scale if w.meta is not None else 1.0
    return describe(w.annotation, w.constraints, unit, etype, scale)
