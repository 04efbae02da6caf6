"""Strict reading of parsed YAML: typed getters that record which keys were asked for, then `finish()`
rejects every key nobody asked for. Every failure is a SpecError naming the key path."""

from __future__ import annotations

import difflib
import math
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from moesim.spec.errors import SpecError

E = TypeVar("E", bound=Enum)
# libyaml's safe loader is ~10x faster; the pure-Python one is the fallback where libyaml is missing
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MISSING = object()
INT_MAX = 2**63 - 1  # every count, size and seed fits in int64 (numpy's default integer)


def is_file(path: Path) -> bool:
    """Path.is_file() that answers False instead of raising (a name too long for the OS, a NUL byte...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def finite_float(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not a finite number (bools, NaN, inf, ints too big)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return number if math.isfinite(number) else None


def read_yaml_mapping(path: Path, what: str) -> dict:
    """Parse a YAML file whose top level must be a mapping. Errors name the file."""
    source = str(path)
    if not is_file(path):
        raise SpecError("", source, f"an existing {what} file", source=source)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SpecError("", f"YAML syntax error at {where}: {problem}", "valid YAML", source=source) from None
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise SpecError("", type(exc).__name__, f"a UTF-8 YAML {what} file", source=source) from None
    except OSError as exc:  # unreadable: permissions, a race with deletion, an I/O error
        raise SpecError("", exc.strerror or type(exc).__name__, f"a readable {what} file", source=source) from None
    if not isinstance(data, dict):
        raise SpecError("", type(data).__name__, f"a mapping of keys at the top of the {what}", source=source)
    return data


class Section:
    """One YAML mapping at a key path."""

    def __init__(self, data: Any, path: str = ""):
        if not isinstance(data, Mapping):
            raise SpecError(path, data, "a mapping of keys")
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise SpecError(self._join(path, str(bad[0])), bad[0], "string keys only")
        self._data = data
        self.path = path
        self._known: set[str] = set()

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def key_path(self, key: str) -> str:
        return self._join(self.path, key)

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self._data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._known.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            self._reject_misspelt_key()  # a typo'd key is the likelier cause than a forgotten one
            raise SpecError(self.key_path(key), None, "this key to be present (it is required)")
        return default

    def _reject_misspelt_key(self) -> None:
        """Raise for the first key nobody asked for that is one small edit away from one somebody did."""
        known = {k.lower(): k for k in sorted(self._known)}  # case slips too: hbm_gb for hbm_GB
        for key in self._data:
            if key not in self._known:
                close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.8)
                if close:
                    raise SpecError(self.key_path(key), self._data[key],
                                    f"no such key (did you mean '{known[close[0]]}'?)")

    def int_(self, key: str, default: Any = _MISSING, *, min_value: int | None = None,
             unit: str = "") -> int:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.key_path(key), value, _expected("an integer", min_value, unit))
        if min_value is not None and value < min_value:
            raise SpecError(self.key_path(key), value, _expected("an integer", min_value, unit))
        if abs(value) > INT_MAX:
            raise SpecError(self.key_path(key), value,
                            _expected("an integer", min_value, unit) + f" and at most 2**63 - 1 ({INT_MAX})")
        return value

    def float_(self, key: str, default: Any = _MISSING, *, min_value: float | None = None,
               max_value: float | None = None, unit: str = "") -> float:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        number = finite_float(value)
        if number is None:
            raise SpecError(self.key_path(key), value, _expected("a finite number", min_value, unit, max_value))
        if (min_value is not None and number < min_value) or (max_value is not None and number > max_value):
            raise SpecError(self.key_path(key), value, _expected("a number", min_value, unit, max_value))
        return number

    def bool_(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise SpecError(self.key_path(key), value, "true or false")
        return value

    def str_(self, key: str, default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value.strip():
            raise SpecError(self.key_path(key), value, "a non-empty string")
        return value

    def enum_(self, key: str, enum_cls: type[E], default: Any = _MISSING) -> E:
        value = self.raw(key, default)
        if isinstance(value, enum_cls):
            return value
        allowed = ", ".join(m.value for m in enum_cls)
        if not isinstance(value, str):
            raise SpecError(self.key_path(key), value, f"one of: {allowed}")
        try:
            return enum_cls(value.lower())
        except ValueError:
            raise SpecError(self.key_path(key), value, f"one of: {allowed}") from None

    def section(self, key: str, default: Any = _MISSING) -> "Section":
        value = self.raw(key, default)
        return Section({} if value is None and default is not _MISSING else value, self.key_path(key))

    def finish(self) -> None:
        unknown = [k for k in self._data if k not in self._known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(self._known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            allowed = ", ".join(sorted(self._known))
            raise SpecError(self.key_path(key), self._data[key], f"no such key{hint}; allowed: {allowed}")


def _expected(kind: str, min_value: float | None, unit: str, max_value: float | None = None) -> str:
    text = kind
    if min_value is not None and max_value is not None:
        text += f" in [{min_value}, {max_value}]"
    elif min_value is not None:
        text += f" >= {min_value}"
    return f"{text} {unit}".strip()


def build(prefix: str, factory, **kwargs):
    """Construct a spec; a SpecError from its validator gets the YAML key path of its section."""
    try:
        return factory(**kwargs)
    except SpecError as err:
        key = f"{prefix}.{err.key}" if prefix and err.key else (prefix or err.key)
        raise SpecError(key, err.value, err.expected, err.source) from None
