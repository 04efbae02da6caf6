"""YAML text that may be hostile -> Python data. Size, nesting depth and the number of values (aliases expanded)
are bounded BEFORE the structure is built; a key given twice in one mapping is an error; every failure is one
SpecError line. libyaml (CSafeLoader) parses where it is installed, the pure-Python safe loader elsewhere.

Plain scalars are resolved by the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules: `1e-6` is a number (1.1: a
string), `010` is ten (1.1: octal 8), `1:08` is a string (1.1: sexagesimal 68), `yes`/`on`/`no`/`off` are strings
(1.1: booleans) and `2026-11-23` is a string (1.1: a date). Integers: `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`;
floats: `1.5`, `.5`, `1e-6`, `-.inf`, `.nan`; booleans: true/True/TRUE/false/False/FALSE; null: null/Null/NULL/~ or
nothing. Merge keys (`<<`) are still understood.

Why each bound: libyaml's composer recurses once per nesting level (100,000 '[' crash the interpreter), so the
depth is counted on the token stream first, which needs no recursion. Aliases share nodes, so a few lines can
stand for billions of values ("billion laughs"): the composed node graph is measured, each alias counted as the
values it stands for, before anything is constructed. Everything downstream (key checks, deep copies for sweeps)
then walks at most MAX_YAML_NODES values, MAX_YAML_DEPTH deep."""

from __future__ import annotations

import re
from typing import Any

import yaml

from moesim.spec.errors import SpecError, Verbatim, show_value

MAX_YAML_BYTES = 64 * 2**20  # 64 MiB: a scenario or profile is kilobytes; traces are not YAML
MAX_YAML_DEPTH = 64  # nesting levels (mappings and lists); the deepest shipped file has 8
MAX_YAML_NODES = 100_000  # values with every alias expanded; the largest shipped profile has about 1,300

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster; pure Python where it is missing
_OPEN = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
         yaml.FlowSequenceStartToken)
_CLOSE = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
_VALUE = (yaml.ScalarToken, yaml.AliasToken, *_OPEN)
_MERGE = "tag:yaml.org,2002:merge"


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown position"


def syntax_error(exc: yaml.YAMLError) -> SpecError:
    """Problem, context and position of a YAML error, on one line."""
    if isinstance(exc, yaml.MarkedYAMLError):
        text = f"YAML syntax error at {_line(exc.problem_mark)}: {exc.problem or type(exc).__name__}"
        if exc.context:
            text += f" ({exc.context} at {_line(exc.context_mark)})"
    elif isinstance(exc, yaml.reader.ReaderError):  # libyaml gives the character's code, PyYAML the character
        code = ord(exc.character) if isinstance(exc.character, str) and len(exc.character) == 1 else exc.character
        text = f"YAML syntax error at position {exc.position + 1}: {exc.reason}" + \
            (f" (#x{code:04x})" if isinstance(code, int) else "")
    else:
        text = f"YAML syntax error: {str(exc)}"
    return SpecError("", Verbatim(" ".join(text.split())), "valid YAML")


def _short(path: str) -> str:
    """A key path for a message about nesting: its start is enough to find it."""
    return path if len(path) <= 60 else path[:57] + "..."


def check_tokens(text: str) -> None:
    """Refuse nesting deeper than MAX_YAML_DEPTH and more than MAX_YAML_NODES written values, scanning tokens (no
    recursion, stops at the first excess). A `key:` followed by an indentless `- item` list opens no token, so
    the real depth is at most about twice this count; `_Loader` checks it exactly once the text is composed."""
    depth = values = 0
    for token in yaml.scan(text, Loader=_BASE):
        if isinstance(token, _VALUE):
            values += 1
            if values > MAX_YAML_NODES:
                raise SpecError("", f"more than {MAX_YAML_NODES} values (at {_line(token.start_mark)})",
                                f"a YAML file of at most {MAX_YAML_NODES} values")
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise SpecError("", f"nesting deeper than {MAX_YAML_DEPTH} levels at {_line(token.start_mark)}",
                                f"YAML nested at most {MAX_YAML_DEPTH} levels deep")
        elif isinstance(token, _CLOSE):
            depth -= 1


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)\Z")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)\Z")
_TAG = "tag:yaml.org,2002:"


def yaml_int(text: str) -> int:
    """An integer as the YAML 1.2 core schema reads it: decimal (leading zeros allowed: `010` is 10), `0o17`
    or `0x1F`. Raises ValueError for anything else (also usable as an argparse type, for --seed and --steps)."""
    text = text.strip() if isinstance(text, str) else text
    if not isinstance(text, str) or not _INT.match(text):
        raise ValueError(f"not an integer: {text!r}")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


yaml_int.__name__ = "integer"  # argparse's message: "invalid integer value: 'x'"


def _yaml_float(text: str) -> float:
    lower = text.lower()
    if lower.endswith(".inf"):
        return float("-inf") if lower.startswith("-") else float("inf")
    if lower == ".nan":
        return float("nan")
    return float(text)


class _Loader(_BASE):  # type: ignore[misc, valid-type]
    """The safe loader with YAML 1.2 core resolution, measuring the composed node graph before constructing
    anything from it."""

    yaml_implicit_resolvers: dict = {}  # replaced wholesale below (YAML 1.1's are inherited otherwise)

    def construct_document(self, node: yaml.Node) -> Any:
        _Measure(self).run(node)
        return super().construct_document(node)

    def _scalar(self, node: yaml.Node, pattern: re.Pattern, what: str) -> str:
        """The scalar's text when it matches `pattern` (an explicit tag such as `!!int 1:08` may not)."""
        text = self.construct_scalar(node)
        if not pattern.match(text):
            raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not {what} in YAML 1.2",
                                                    node.start_mark)
        return text

    def construct_core_int(self, node: yaml.Node) -> int:
        return yaml_int(self._scalar(node, _INT, "an integer"))

    def construct_core_float(self, node: yaml.Node) -> float:
        return _yaml_float(self._scalar(node, _FLOAT, "a number"))

    def construct_core_bool(self, node: yaml.Node) -> bool:
        return self._scalar(node, _BOOL, "a boolean").lower() == "true"


for _tag, _pattern, _first in (("bool", _BOOL, "tTfF"), ("int", _INT, "-+0123456789"),
                               ("float", _FLOAT, "-+.0123456789"), ("null", _NULL, ["~", "n", "N", ""]),
                               ("merge", re.compile(r"^<<\Z"), "<")):
    _Loader.add_implicit_resolver(_TAG + _tag, _pattern, list(_first))  # ints before floats: `10` is an int
class _Dumper(yaml.SafeDumper):
    """Writes what _Loader reads back unchanged: a string that YAML 1.2 would take for a number, a boolean or
    null (`1e-6`, `yes` is fine, `true` is not) is quoted; so is one that a YAML 1.1 reader (PyYAML's safe_load)
    would take for something else (`yes`, a date), so that every reader sees the same file."""

    yaml_implicit_resolvers: dict = {}


for _tag, _pattern, _first in (("bool", _BOOL, "tTfF"), ("int", _INT, "-+0123456789"),
                               ("float", _FLOAT, "-+.0123456789"), ("null", _NULL, ["~", "n", "N", ""])):
    _Dumper.add_implicit_resolver(_TAG + _tag, _pattern, list(_first))
for _first, _resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items():  # after 1.2's: only where 1.2 says str
    for _tag, _pattern in _resolvers:
        _Dumper.add_implicit_resolver(_tag, _pattern, [_first])


def dump_yaml(data: Any) -> str:
    """`data` as block YAML, keys in their order, read back identically by this module's loader."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


_Loader.add_constructor(_TAG + "int", _Loader.construct_core_int)
_Loader.add_constructor(_TAG + "float", _Loader.construct_core_float)
_Loader.add_constructor(_TAG + "bool", _Loader.construct_core_bool)


class _Measure:
    """Iterative depth-first walk of the node graph: values and depth with aliases expanded (each shared node
    measured once), aliases that contain themselves, and keys given twice in one mapping."""

    def __init__(self, loader: _Loader):
        self.loader = loader
        self.size: dict[int, int] = {}
        self.depth: dict[int, int] = {}
        self.open: set[int] = set()  # the nodes on the path from the root to the node being visited
        self.kids: dict[int, list[tuple[yaml.Node, str]]] = {}

    def run(self, root: yaml.Node) -> None:
        stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
        while stack:
            node, path, done = stack.pop()
            nid = id(node)
            if done:
                self._finish(node, path)
            elif nid in self.open:
                raise SpecError(path, f"an alias that contains itself at {_line(node.start_mark)}",
                                "aliases that do not contain themselves")
            elif nid not in self.size:
                self.open.add(nid)
                self.kids[nid] = self._children(node, path)
                stack.append((node, path, True))
                stack.extend((child, child_path, False) for child, child_path in self.kids[nid]
                             if id(child) not in self.size)

    def _finish(self, node: yaml.Node, path: str) -> None:
        children = [child for child, _ in self.kids.pop(id(node))]
        size = 1 + sum(self.size[id(c)] for c in children)
        depth = 1 + max((self.depth[id(c)] for c in children), default=0)
        self.open.discard(id(node))
        self.size[id(node)], self.depth[id(node)] = size, depth
        if size > MAX_YAML_NODES:
            raise SpecError(_short(path), f"more than {MAX_YAML_NODES} values once its aliases are expanded",
                            f"a YAML document of at most {MAX_YAML_NODES} values, aliases expanded")
        if depth > MAX_YAML_DEPTH:
            raise SpecError(_short(path), f"nesting deeper than {MAX_YAML_DEPTH} levels once its aliases are expanded",
                            f"YAML nested at most {MAX_YAML_DEPTH} levels deep")

    def _children(self, node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
        if isinstance(node, yaml.SequenceNode):
            return [(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            return []
        out, seen = [], {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            label = "?" if key is None else key if isinstance(key, str) else show_value(key)  # true, not True
            if key is not None and key in seen:
                where = f"{path}.{label}" if path else label
                raise SpecError(where, f"a second '{label}' at line {key_node.start_mark.line + 1}",
                                f"each key once in a mapping (the first '{label}' is at line {seen[key] + 1})")
            if key is not None:
                seen[key] = key_node.start_mark.line
            out += [(key_node, path), (value_node, f"{path}.{label}" if path else label)]
        return out

    def _key(self, key_node: yaml.Node) -> Any:
        """A scalar key as the loader will build it (1 and 0x1 are the same key); None for merge keys (`<<`) and
        keys that are lists or mappings."""
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
            return None
        key = self.loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            return None
        return key


def load_yaml(text: str) -> Any:
    """Parse one YAML document within the limits above. Raises SpecError (key "<top level>" or the path of the
    offending mapping key)."""
    try:
        check_tokens(text)
        return yaml.load(text, Loader=_Loader)
    except SpecError:
        raise
    except yaml.YAMLError as exc:
        raise syntax_error(exc) from None
    except (RecursionError, MemoryError) as exc:  # the bounds above make these unlikely; never a traceback
        raise SpecError("", type(exc).__name__, "a YAML file within moesim's limits") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise SpecError("", " ".join(str(exc).split())[:200], "a value Python can read") from None
