"""Scenario sweeps: a scenario YAML may carry `sweep: {section.key: [values...], ...}`; every point of the
cartesian product is the base document with those keys replaced, parsed by the same strict loader.
`sweep: {zip: {a.b: [...], c.d: [...]}}` pairs lists of equal length element by element (the i-th point takes
the i-th value of each); a zipped group is one axis of the cartesian product with the other keys."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

from moesim.io.document import validate
from moesim.io.scenario import parse_scenario
from moesim.io.strict import read_yaml_mapping
from moesim.spec.document import ScenarioFileKeys
from moesim.spec.errors import SpecError
from moesim.spec.scenario import Scenario

MAX_POINTS = 1000
ZIP_KEY = "zip"


def load_scenarios(path: str | Path, trace: Path | None = None, parse: Callable[..., Scenario] = parse_scenario
                   ) -> tuple[list[str], list[tuple[dict, Scenario]]]:
    """(swept key paths, [(values by key path, scenario)]); a file without `sweep` gives one point.
    `trace` (from the command line) replaces the routing with the replay of that trace and drops swept
    routing keys; the file's `routing.trace_layers` is kept. `parse(doc, default_name=, base_dir=, cache=)` reads
    one point (moesim.loader passes one that can also fit traces and check placement parameters); the points
    share one cache, so a trace is read once per sweep."""
    path = Path(path)
    data = read_yaml_mapping(path, "scenario")
    sweep = data.pop("sweep", None)
    if trace is not None:
        old = data.get("routing") if isinstance(data.get("routing"), dict) else {}
        data["routing"] = {"trace": str(Path(trace).resolve()),
                           **({"trace_layers": old["trace_layers"]} if "trace_layers" in old else {})}
        if isinstance(sweep, dict):
            sweep = _without_routing(sweep)
    try:
        keys, grid = _grid(sweep)
        points, cache = [], {}
        for combo in grid:
            values = dict(zip(keys, combo))
            doc = _copy(data) if values else data
            for key, value in values.items():
                _set(doc, key, value)
            label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())
            if label and isinstance(data.get("name", path.stem), str):  # a bad name is left for the loader to report
                doc["name"] = f"{data.get('name', path.stem)}[{label}]"
            try:
                points.append((values, parse(doc, default_name=path.stem, base_dir=path.parent, cache=cache)))
            except SpecError as err:
                where = f" (sweep point {label})" if label else ""
                raise SpecError(err.key, err.value, f"{err.expected}{where}", err.source) from None
    except SpecError as err:
        raise SpecError(err.key, err.value, err.expected, err.source or str(path)) from None
    return keys, points


def _without_routing(sweep: dict) -> dict | None:
    """The sweep without routing keys (a replayed trace replaces the routing), zipped ones included."""
    kept = {k: v for k, v in sweep.items() if not str(k).startswith("routing.")}
    if isinstance(kept.get(ZIP_KEY), dict):
        kept[ZIP_KEY] = {k: v for k, v in kept[ZIP_KEY].items() if not str(k).startswith("routing.")}
        if not kept[ZIP_KEY]:
            del kept[ZIP_KEY]
    return kept or None


def _copy(data: dict) -> dict:
    try:
        return copy.deepcopy(data)
    except RecursionError:  # YAML anchors can nest deeper than Python's stack
        raise SpecError("", "a document nested too deeply to copy", "a scenario without recursive anchors") from None


def _grid(sweep) -> tuple[list[str], list[tuple]]:
    if sweep is None:
        return [], [()]
    validate(ScenarioFileKeys, {"sweep": sweep}, {"sweep": sweep})
    if not sweep:
        raise SpecError("sweep", sweep, "a mapping of dotted key paths to lists of values")
    axes: list[tuple[list[str], list[tuple]]] = []  # (keys, rows of values): zipped keys share one axis
    for key, values in sweep.items():
        if key == ZIP_KEY:
            axes.append(_zipped(values))
            continue
        _check_list(key, values, f"sweep.{key}")
        axes.append(([key], [(v,) for v in values]))
    keys = [key for axis_keys, _ in axes for key in axis_keys]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise SpecError(f"sweep.{ZIP_KEY}.{twice[0]}", twice[0], "each key path swept once (zipped or not)")
    total = 1
    for _, rows in axes:
        total *= len(rows)
    if total > MAX_POINTS:
        raise SpecError("sweep", f"{total} points", f"at most {MAX_POINTS} points")
    combos = itertools.product(*(rows for _, rows in axes))
    return keys, [tuple(itertools.chain.from_iterable(parts)) for parts in combos]


def _check_list(key, values, where: str) -> None:
    if not isinstance(key, str) or "." not in key or key.split(".")[0] == "sweep":
        raise SpecError(where.rsplit(".", 1)[0] if isinstance(key, str) else "sweep", key,
                        f"dotted key paths such as routing.zipf_s (or `{ZIP_KEY}:` for zipped lists)")
    if not isinstance(values, list) or not values:
        raise SpecError(where, values, "a non-empty list of values")


def _zipped(group) -> tuple[list[str], list[tuple]]:
    """`zip: {a.b: [...], c.d: [...]}` -> (keys, one row per index); all lists of one length."""
    if not isinstance(group, dict) or not group:
        raise SpecError(f"sweep.{ZIP_KEY}", group, "a mapping of dotted key paths to lists of equal length")
    keys = list(group)
    for key in keys:
        _check_list(key, group[key], f"sweep.{ZIP_KEY}.{key}")
    first = keys[0]
    for key in keys[1:]:
        if len(group[key]) != len(group[first]):
            raise SpecError(f"sweep.{ZIP_KEY}.{key}", f"{len(group[key])} values",
                            f"as many values as sweep.{ZIP_KEY}.{first} ({len(group[first])}): zipped lists "
                            f"pair up element by element")
    return keys, list(zip(*(group[key] for key in keys)))


def _set(doc: dict, dotted: str, value) -> None:
    node = doc
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"sweep.{dotted}", ".".join(parts[:i + 1]), "a path through mappings of the scenario")
        node = child
    node[parts[-1]] = value
