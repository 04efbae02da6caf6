"""Hostile YAML (DESIGN.md rule 4: bad input never produces a traceback): files too large, nesting too deep,
aliases that expand into huge or self-containing structures, keys given twice. Each is refused quickly, on one
line, before the structure is built. The cases that could crash the interpreter if the guard regressed (deep
nesting reaching libyaml's recursive composer) run in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from moesim.cli import main
from moesim.io import safe_yaml, strict
from moesim.io.safe_yaml import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml
from moesim.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]


def _validate_in_subprocess(path: Path) -> str:
    """`moesim validate path` in its own interpreter: exit 2, one line on stderr, no traceback. Returns it."""
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def _validate(path: Path, capsys) -> str:
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"moesim: error: {path}: "), err
    return err


@pytest.mark.parametrize("text", [
    pytest.param("a: " + "[" * 100_000 + "]" * 100_000 + "\n", id="100k-flow-sequences"),
    pytest.param("a: " + "{b: " * 100_000 + "1" + "}" * 100_000 + "\n", id="100k-flow-mappings"),
    pytest.param("".join(" " * i + f"k{i}:\n" for i in range(2_000)) + " " * 2_000 + "x: 1\n", id="2k-block-levels"),
    pytest.param("a:\n" + "".join(" " * (2 * i) + "- b:\n" for i in range(2_000)) + " " * 4_000 + "- 1\n",
                 id="2k-indentless-sequences"),
])
def test_deep_nesting_is_refused_before_parsing(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    err = _validate_in_subprocess(path)
    assert time.perf_counter() - t0 < 60
    assert f"nesting deeper than {MAX_YAML_DEPTH} levels" in err and f"at most {MAX_YAML_DEPTH} levels" in err


def test_nesting_within_the_limit_loads():
    depth = MAX_YAML_DEPTH - 1
    assert load_yaml("[" * depth + "]" * depth) is not None


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path, capsys, monkeypatch):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as fh:  # sparse: 65 MiB on disk in no time
        fh.truncate(MAX_YAML_BYTES + 2**20)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("the file was read"))
    t0 = time.perf_counter()
    err = _validate(path, capsys)
    assert time.perf_counter() - t0 < 5
    assert f"{MAX_YAML_BYTES} bytes (64 MiB)" in err


def test_a_file_that_grew_past_the_limit_after_its_size_was_checked_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "growing.yaml"
    path.write_text("name: x\n" * 20, encoding="utf-8")
    monkeypatch.setattr(strict, "MAX_YAML_BYTES", 100)  # the read itself stops one byte past the limit
    with pytest.raises(SpecError, match="more than 100 bytes"):
        strict._read_text(path, "scenario")


def _laughs(levels: int) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
    return text


def test_billion_laughs_is_refused_before_it_is_built(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(9), encoding="utf-8")  # 9**9 = 387 million strings from 10 lines
    t0 = time.perf_counter()
    err = _validate(path, capsys)
    assert time.perf_counter() - t0 < 5
    assert f"more than {MAX_YAML_NODES} values" in err and "aliases" in err


def test_a_few_aliases_are_fine():
    assert load_yaml(_laughs(3))["a2"][8][8][8] == "lol"
    assert load_yaml("base: &b {x: 1}\nother: {<<: *b, y: 2}\n")["other"] == {"x": 1, "y": 2}


def test_an_alias_chain_deeper_than_the_limit_is_refused(tmp_path, capsys):
    path = tmp_path / "chain.yaml"
    path.write_text("l0: &l0 [1]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, 500)),
                    encoding="utf-8")
    err = _validate(path, capsys)
    assert f"nesting deeper than {MAX_YAML_DEPTH} levels once its aliases are expanded" in err


@pytest.mark.parametrize("text", ["a: &x [*x]\n", "a: &x {b: *x}\nname: t\n",
                                  "cluster: &c {profile: dgx-h100, nodes: 1, more: *c}\n"])
def test_an_alias_that_contains_itself_is_refused(tmp_path, capsys, text):
    path = tmp_path / "recursive.yaml"
    path.write_text(text, encoding="utf-8")
    assert "an alias that contains itself" in _validate(path, capsys)


def test_too_many_written_values_are_refused_while_scanning(monkeypatch):
    monkeypatch.setattr(safe_yaml, "MAX_YAML_NODES", 100)
    with pytest.raises(SpecError, match="more than 100 values"):
        load_yaml("[" + ", ".join(["1"] * 200) + "]")


@pytest.mark.parametrize("text, key, line, first", [
    ("name: a\nname: b\n", "name", 2, 1),
    ("name: a\ncluster:\n  profile: dgx-h100\n  nodes: 1\n  nodes: 2\n", "cluster.nodes", 5, 4),
    ("routing: {zipf_s: 1, zipf_s: 2}\n", "routing.zipf_s", 1, 1),
    ("1: a\n0x1: b\n", "1", 2, 1),  # the same integer, written two ways
])
def test_a_key_given_twice_names_the_key_and_the_lines(tmp_path, capsys, text, key, line, first):
    path = tmp_path / "twice.yaml"
    path.write_text(text, encoding="utf-8")
    err = _validate(path, capsys)
    assert f": {key}: got \"a second '{key.rsplit('.', 1)[-1]}' at line {line}\"" in err
    assert f"is at line {first})" in err


def test_a_syntax_error_is_shown_whole_on_one_line(tmp_path, capsys):
    path = tmp_path / "syntax.yaml"
    path.write_text("name: x\ntraining: {global_batch_size: 32, seq_len: [4096\n", encoding="utf-8")
    err = _validate(path, capsys)
    assert "got YAML syntax error at line 3, column 1: did not find expected ',' or ']' " in err
    assert "(while parsing a flow sequence at line 2, column 44); expected valid YAML" in err


@pytest.mark.parametrize("key, hint", [("sweeep", "did you mean 'sweep'?"), ("colour", "allowed: ")])
def test_sweep_is_an_allowed_top_level_key(tmp_path, capsys, quickstart_doc, key, hint):
    quickstart_doc[key] = {"routing.zipf_s": [0.0, 1.0]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(quickstart_doc), encoding="utf-8")
    err = _validate(path, capsys)
    assert f"{key}: got " in err and hint in err and ", sweep, " in err


@pytest.mark.parametrize("seed", [str(2**63), "-1", str(10**400)])
def test_seed_on_the_command_line_has_the_yaml_range(capsys, seed):
    assert main(["run", str(ROOT / "scenarios" / "quickstart.yaml"), "--seed", seed, "--no-files"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed: got " in err and "an integer >= 0" in err


def test_seed_range_is_the_same_in_yaml(tmp_path, capsys, quickstart_doc):
    quickstart_doc["simulation"]["seed"] = 2**63
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(quickstart_doc), encoding="utf-8")
    assert "simulation.seed: got 9223372036854775808; expected an integer >= 0 and at most 2**63 - 1" in \
        _validate(path, capsys)
