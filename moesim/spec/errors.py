"""The one exception type for bad user input. It renders as ONE line: where, what, what is allowed."""

from __future__ import annotations

import reprlib


class _YamlRepr(reprlib.Repr):
    """reprlib's bounded repr, with the scalars YAML spells differently written as a file writes them (true, false,
    null) and integers too long to print (Python refuses beyond 4,300 digits) summarised."""

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_NoneType(self, x: None, level: int) -> str:  # reprlib dispatches on type names
        return "null"

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than Python converts to text (sys.get_int_max_str_digits)
            return f"{'-' if x < 0 else ''}an integer of about {int(x.bit_length() * 0.30103) + 1} digits"


_SHORT_REPR = _YamlRepr()  # Python 3.11's Repr takes no keyword arguments
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 6
_SHORT_REPR.maxlevel = 3


class Verbatim(str):
    """A value shown whole and unquoted, such as a YAML syntax error's problem, context and position."""


def show_value(value: object) -> str:
    """The bad value as error lines show it: a bounded repr, so a huge value never stalls the message; booleans
    and null as YAML writes them (`true`, not `True`)."""
    if isinstance(value, Verbatim):
        return str(value)
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class SpecError(ValueError):
    """Invalid input. `key` is a dotted key path, `value` the offending value, `expected` what is allowed
    (with its unit). `source` (a file path) is filled in by io/ when the input came from a file."""

    def __init__(self, key: str, value: object, expected: str, source: str | None = None):
        self.key = key
        self.value = value
        self.expected = expected
        self.source = source
        super().__init__(self.one_line())

    def with_source(self, source: str, prefix: str = "") -> SpecError:
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return SpecError(key, self.value, self.expected, self.source or source)

    def one_line(self) -> str:
        where = f"{self.source}: " if self.source else ""
        key = self.key or "<top level>"
        value = show_value(self.value)
        text = f"{where}{key}: got {value}; expected {self.expected}"
        return " ".join(text.split())  # never more than one line, whatever the value holds

    def __str__(self) -> str:
        return self.one_line()


def require(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise SpecError unless `ok`. Used by __post_init__ validators."""
    if not ok:
        raise SpecError(key, value, expected)
