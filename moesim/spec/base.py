"""What every spec is built from: a frozen pydantic model that refuses unknown fields and coerces nothing, closed
sets read case-insensitively, and `spec_field`, the ONE declaration of a field: type (the annotation), default,
bounds, help text, unit, and how the YAML files write it (key, scale to SI, `{value, source}` leaves)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, core_schema

INT_MAX = 2**63 - 1  # every count, size and seed fits in int64 (numpy's default integer)


class SpecEnum(Enum):
    """A closed set. YAML gives its value as a string, in any case (`ZIPF` is `zipf`)."""

    @classmethod
    def from_yaml(cls, value: Any) -> Any:
        """The member whose value is `value` (any case); anything else unchanged, for the validator to refuse."""
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        return value

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # strict models accept only members; this maps the YAML string to one first
        return core_schema.no_info_before_validator_function(cls.from_yaml, handler(source))


def _lists_as_tuples(value: Any) -> Any:
    """YAML has lists; specs hold tuples (frozen). Nested lists become nested tuples."""
    if isinstance(value, list):
        return tuple(_lists_as_tuples(v) for v in value)
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # true == 1 in Python; not in a file
        raise ValueError("a bool")
    return value


LISTS_AS_TUPLES = BeforeValidator(_lists_as_tuples)
NOT_BOOL = BeforeValidator(_not_bool)
NonEmptyStr = Annotated[str, StringConstraints(pattern=r"\S")]  # blank is as good as missing
# `lt`, not `le`: pydantic keeps only the last `le` of a field, so a field's own `le=` (spec_field) would be
# replaced by this one; `lt` is a separate constraint and both hold
Count = Annotated[int, Field(lt=INT_MAX + 1)]


class FieldMeta(NamedTuple):
    """How a field appears in the YAML files (json_schema_extra of the field, `x-` keys)."""

    key: str  # the key as written
    unit: str  # the unit of the value as written, for messages and the schema
    scale: float | tuple[float, ...]  # SI per written unit (per column for tables)
    sourced: bool  # written as {value: ..., source: "..."}
    in_file: bool  # False: derived by io (a loaded profile, a trace), never written
    expected: str | None  # what error lines say is allowed, where the type and bounds do not say it well


def spec_field(default: Any = PydanticUndefined, *, help: str, unit: str = "", yaml: str | None = None,
               scale: float | tuple[float, ...] = 1.0, sourced: bool = False, in_file: bool = True,
               expected: str | None = None, **constraints: Any) -> Any:
    """A pydantic Field carrying the YAML facts as `x-` keys of its JSON schema."""
    extra = {"x-unit": unit or None, "x-yaml": yaml, "x-scale": None if scale == 1.0 else scale,
             "x-sourced": sourced or None, "x-file": None if in_file else False, "x-expected": expected}
    extra = {k: v for k, v in extra.items() if v is not None}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


def field_meta(name: str, info: FieldInfo) -> FieldMeta:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return FieldMeta(key=extra.get("x-yaml") or name, unit=extra.get("x-unit", ""), scale=extra.get("x-scale", 1.0),
                     sourced=bool(extra.get("x-sourced")), in_file=extra.get("x-file", True) is not False,
                     expected=extra.get("x-expected"))


class SpecModel(BaseModel):
    """Frozen; unknown fields refused; strict types (an int field refuses "2", 2.5 and true; a float field takes
    ints); NaN and infinities refused. Bad values raise SpecError (one line), never pydantic's ValidationError."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    def __init__(self, /, *args: Any, **kwargs: Any) -> None:
        if args:  # positional arguments in declaration order, as the dataclasses these replace took them
            names = list(type(self).model_fields)
            if len(args) > len(names) or set(names[:len(args)]) & set(kwargs):
                raise TypeError(f"{type(self).__name__}: bad positional arguments")
            kwargs = {**dict(zip(names, args)), **kwargs}
        try:
            super().__init__(**kwargs)
        except ValidationError as err:
            from moesim.spec.render import spec_error  # noqa: PLC0415 - render imports this module

            raise spec_error(err, type(self)) from None

    # pydantic calls a model's own __init__ when validating it inside another model, which would turn the errors
    # of nested fields into one error at the top; this __init__ only adds positional arguments and SpecError
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> Any:
        """A copy with `changes`, validated again (cross-field checks included)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})
