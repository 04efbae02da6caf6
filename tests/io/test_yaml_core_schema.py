"""Plain scalars are read by the YAML 1.2 core schema, not PyYAML's YAML 1.1 rules: `1e-6` is a number, `010` is
ten, `1:08:16` and `yes` are text. Each case that YAML 1.1 reads differently is checked at the loader and through
`moesim validate`; the shipped files read the same either way; the command line reads --seed and --steps as YAML
integers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from moesim.cli import _parser, main
from moesim.io import safe_yaml
from moesim.io.safe_yaml import load_yaml, yaml_int
from moesim.loader import load_scenario
from moesim.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*(ROOT / "scenarios").glob("*.yaml"), *(ROOT / "hw_profiles").glob("*.yaml")])


@pytest.mark.parametrize("text, expected", [
    # numbers YAML 1.1 reads as text or as something else
    ("1e-6", 1e-6), ("5e-1", 0.5), ("1E3", 1000.0), ("-2.5e+3", -2500.0), ("12e3", 12000.0),
    ("010000", 10000), ("007", 7), ("-010", -10), ("+12", 12), ("0o17", 15), ("0x10", 16), ("0xFf", 255),
    ("1.", 1.0), (".5", 0.5), ("-.5", -0.5), ("1.5", 1.5), ("0", 0), ("-0", 0),
    (".inf", math.inf), (".Inf", math.inf), ("+.INF", math.inf), ("-.inf", -math.inf),
    # booleans: only true and false, in three spellings
    ("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False),
    # null
    ("null", None), ("Null", None), ("NULL", None), ("~", None), ("", None),
    # text in YAML 1.2 that YAML 1.1 turned into something else
    ("1:08:16", "1:08:16"), ("190:20:30", "190:20:30"), ("yes", "yes"), ("No", "No"), ("on", "on"), ("OFF", "OFF"),
    ("y", "y"), ("n", "n"), ("1_000", "1_000"), ("0b101", "0b101"), ("2026-11-23", "2026-11-23"),
    ("0x", "0x"), ("0o8", "0o8"), ("1e", "1e"), ("tRUE", "tRUE"), ("nULL", "nULL"), ("-0x10", "-0x10"),
    ("'010'", "010"), ('"1e-6"', "1e-6"), ("'true'", "true"),
])
def test_plain_scalars_follow_the_yaml_1_2_core_schema(text: str, expected: Any):
    value = load_yaml(f"key: {text}\n")["key"]
    assert value == expected and type(value) is type(expected), (text, value)


def test_nan_is_a_float():
    for text in (".nan", ".NaN", ".NAN"):
        value = load_yaml(f"x: {text}")["x"]
        assert isinstance(value, float) and math.isnan(value)


def test_explicit_tags_use_the_same_rules():
    assert load_yaml("a: !!int '010'\nb: !!float '1e-6'\nc: !!bool 'True'\nd: !!str 010") == \
        {"a": 10, "b": 1e-6, "c": True, "d": "010"}
    for text in ("!!int '1:08'", "!!float 'x'", "!!bool 'yes'"):
        with pytest.raises(SpecError, match="is not .* in YAML 1.2"):
            load_yaml(f"a: {text}")


def test_keys_follow_the_same_rules_and_merge_keys_still_work():
    assert load_yaml("yes: 1\non: 2\n") == {"yes": 1, "on": 2}
    assert load_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")["other"] == {"x": 1, "y": 2}
    with pytest.raises(SpecError, match="a second '1'"):  # 1 and 0x1 are one key
        load_yaml("1: a\n0x1: b\n")
    with pytest.raises(SpecError, match="true: got \"a second 'true'"):  # shown as written, not True
        load_yaml("true: a\nTrue: b\n")


def test_the_loader_keeps_libyaml_where_it_is_installed():
    if hasattr(yaml, "CSafeLoader"):
        assert issubclass(safe_yaml._Loader, yaml.CSafeLoader)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_files_read_the_same_as_with_yaml_1_1(path: Path):
    """No shipped scenario or profile depends on a rule that changed: same data, so the same specs."""
    text = path.read_text(encoding="utf-8")
    assert load_yaml(text) == yaml.safe_load(text)  # PyYAML: YAML 1.1


def _quickstart_with(tmp_path: Path, replace: dict[str, str]) -> Path:
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "scenario.yaml"
    path.write_text(text + "gate: {capacity_factor: 1e-6}\n", encoding="utf-8")
    return path


def test_scenario_numbers_as_yaml_1_2_reads_them(tmp_path):
    path = _quickstart_with(tmp_path, {"zipf_s: 0.5": "zipf_s: 5e-1", "seq_len: 4096 ": "seq_len: 010000",
                                       "seed: 0": "seed: 0x10"})
    scenario = load_scenario(path)
    assert scenario.gate.capacity_factor == 1e-6
    assert scenario.routing.zipf_s == 0.5
    assert scenario.training.seq_len == 10000  # not 4096 (YAML 1.1 octal)
    assert scenario.simulation.seed == 16


@pytest.mark.parametrize("old, new, expected", [
    ("seq_len: 4096 ", "seq_len: 1:08:16", "training.seq_len: got '1:08:16'; expected an integer in [1, 16777216] "
                                           "tokens (1:08:16 is text in YAML 1.2"),
    ("seq_len: 4096 ", "seq_len: 4_096", "(4_096 is text in YAML 1.2: write the number without '_' or ':')"),
    ("distributed: true", "distributed: yes", "training.optimizer.distributed: got 'yes'; expected true or false "
                                              "(yes is text in YAML 1.2: write true or false)"),
    ("distributed: true", "distributed: on", "got 'on'; expected true or false"),
])
def test_yaml_1_1_spellings_are_refused_with_a_hint(tmp_path, capsys, old, new, expected):
    path = _quickstart_with(tmp_path, {old: new})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("text, value", [("10", 10), ("010", 10), ("0x10", 16), ("0o10", 8), (" 7 ", 7),
                                         ("-1", -1)])
def test_yaml_int(text, value):
    assert yaml_int(text) == value


@pytest.mark.parametrize("text", ["1e3", "1.0", "0b1", "1_000", "", "ten", "-0x10", "1:08"])
def test_yaml_int_refuses(text):
    with pytest.raises(ValueError):
        yaml_int(text)


def test_command_line_seed_and_steps_read_like_yaml(capsys):
    args = _parser().parse_args(["run", "x.yaml", "--seed", "0x10", "--steps", "010"])
    assert (args.seed, args.steps) == (16, 10)
    assert main(["run", "x.yaml", "--seed", "1e3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid integer value: '1e3'" in err
