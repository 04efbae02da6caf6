"""`moesim validate` on bad scenarios: exit status 2 and ONE line naming the file, the key path, the bad value
and what is allowed (DESIGN.md rule 4). Every case starts from scenarios/quickstart.yaml and changes one thing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from collections.abc import Callable

import pytest

from moesim.spec.errors import show_value
import yaml

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
H100 = ROOT / "hw_profiles" / "dgx-h100.yaml"

Mutation = Callable[[dict], None]


class Shown(str):
    """The value as the error line shows it, where repr() of a Python value will not do (long mappings)."""


def _parent(doc: dict, dotted: str) -> tuple[Any, str]:
    *head, last = dotted.split(".")
    node = doc
    for key in head:
        node = node[key]
    return node, last


def set_(dotted: str, value: Any) -> Mutation:
    def apply(doc: dict) -> None:
        parent, key = _parent(doc, dotted)
        parent[key] = value
    return apply


def delete(dotted: str) -> Mutation:
    def apply(doc: dict) -> None:
        parent, key = _parent(doc, dotted)
        del parent[key]
    return apply


def rename(dotted: str, new_key: str) -> Mutation:
    """Rename a key in place (order kept, as a user's typo would)."""
    def apply(doc: dict) -> None:
        parent, key = _parent(doc, dotted)
        items = list(parent.items())
        parent.clear()
        parent.update((new_key if k == key else k, v) for k, v in items)
    return apply


def custom_model(doc: dict) -> None:
    """Replace the preset by the same model spelt out field by field (no preset)."""
    doc["model"] = {"name": "custom-moe", "num_layers": 4, "hidden_size": 1024, "num_attention_heads": 8,
                    "num_kv_heads": 8, "expert_ffn_size": 2048, "num_experts": 8, "top_k": 2,
                    "vocab_size": 32000, "activation": "swiglu"}


def _case(id_: str, mutations: Mutation | list[Mutation], key: str, value: Any, *expected: str):
    mutations = mutations if isinstance(mutations, list) else [mutations]
    return pytest.param(mutations, key, value, expected, id=id_)


CASES = [
    # unknown and misspelt keys
    _case("unknown-top-level-key", set_("colour", "blue"), "colour", "blue", "no such key", "allowed: "),
    _case("unknown-nested-key", set_("training.learning_rate", 3e-4), "training.learning_rate", 3e-4,
          "no such key", "seq_len"),
    _case("typo-required-section", rename("training", "trainig"), "trainig",
          Shown("{'dtype': 'bf16', 'global_batch_size': 32, "), "did you mean 'training'"),
    _case("typo-required-nested-key", rename("training.seq_len", "seq_lenn"), "training.seq_lenn", 4096,
          "did you mean 'seq_len'"),
    _case("typo-optional-layout-key", rename("layout.tp", "tpp"), "layout.tpp", 2, "did you mean 'tp'"),
    _case("typo-optional-key-whose-default-conflicts", rename("routing.distribution", "distributon"),
          "routing.distributon", "zipf", "did you mean 'distribution'"),
    _case("typo-preset", rename("model.preset", "presett"), "model.presett", "mixtral-8x7b",
          "did you mean 'preset'"),
    _case("typo-profile", rename("cluster.profile", "profle"), "cluster.profle", "dgx-h100",
          "did you mean 'profile'"),
    # wrong types
    _case("string-for-int", set_("training.seq_len", "4096"), "training.seq_len", "4096", "an integer", "tokens"),
    _case("list-for-mapping", set_("layout", [2, 2, 4]), "layout", [2, 2, 4], "a mapping"),
    _case("scalar-for-mapping", set_("cluster", "dgx-h100"), "cluster", "dgx-h100", "a mapping"),
    _case("bool-for-int", set_("cluster.nodes", True), "cluster.nodes", True, "an integer", "nodes"),
    _case("bool-for-layout-degree", set_("layout.tp", True), "layout.tp", True, "an integer"),
    _case("float-for-int", set_("training.micro_batch_size", 1.5), "training.micro_batch_size", 1.5,
          "an integer", "sequences"),
    _case("integral-float-for-int", set_("layout.ep", 8.0), "layout.ep", 8.0, "an integer"),
    _case("null-for-int", set_("cluster.nodes", None), "cluster.nodes", None, "an integer"),
    _case("string-for-number", set_("routing.zipf_s", "half"), "routing.zipf_s", "half", "a finite number"),
    _case("nan-for-number", set_("routing.zipf_s", float("nan")), "routing.zipf_s", float("nan"), "finite"),
    _case("string-for-bool", set_("training.optimizer.distributed", "yes please"),
          "training.optimizer.distributed", "yes please", "true or false"),
    _case("int-for-string", set_("cluster.profile", 100), "cluster.profile", 100, "a non-empty string"),
    _case("int-for-enum", set_("training.dtype", 16), "training.dtype", 16, "bf16"),
    # negative and zero sizes
    _case("negative-seq-len", set_("training.seq_len", -4096), "training.seq_len", -4096, "in [1, 16777216] tokens"),
    _case("zero-global-batch", set_("training.global_batch_size", 0), "training.global_batch_size", 0,
          "in [1, 16777216] sequences"),
    _case("negative-nodes", set_("cluster.nodes", -2), "cluster.nodes", -2, "in [1, 65536] nodes"),
    _case("zero-nodes", set_("cluster.nodes", 0), "cluster.nodes", 0, "in [1, 65536] nodes"),
    _case("zero-tp", set_("layout.tp", 0), "layout.tp", 0, ">= 1"),
    _case("negative-pp", set_("layout.pp", -1), "layout.pp", -1, ">= 1"),
    _case("zero-top-k", set_("model.top_k", 0), "model.top_k", 0, "in [1, 16384]"),
    _case("negative-experts", set_("model.num_experts", -8), "model.num_experts", -8, "in [1, 16384]"),
    _case("zero-hidden-size-custom-model", [custom_model, set_("model.hidden_size", 0)], "model.hidden_size", 0,
          "in [1, 1048576]"),
    _case("zero-heads-custom-model", [custom_model, set_("model.num_attention_heads", 0)],
          "model.num_attention_heads", 0, "in [1, 65536]"),
    _case("negative-optimizer-bytes", set_("training.optimizer.state_bytes_per_param", -1),
          "training.optimizer.state_bytes_per_param", -1, "bytes per parameter"),
    _case("zero-steps", set_("simulation.steps", 0), "simulation.steps", 0, "[1, 100000]"),
    _case("negative-seed", set_("simulation.seed", -1), "simulation.seed", -1, ">= 0"),
    _case("too-many-steps", set_("simulation.steps", 10**6), "simulation.steps", 10**6, "100000"),
    _case("huge-int-for-number", set_("training.optimizer.state_bytes_per_param", 10**400),
          "training.optimizer.state_bytes_per_param", 10**400, "bytes per parameter"),
    _case("huge-int-for-size", set_("cluster.nodes", 10**400), "cluster.nodes", 10**400, "nodes"),
    # cross-field constraints
    _case("top-k-above-experts", set_("model.top_k", 9), "model.top_k", 9, "num_experts=8"),
    _case("layout-does-not-fill-cluster", set_("layout.pp", 1), "layout", "tp*cp*dp*pp = 2*1*4*1 = 8",
          "2 nodes x 8 = 16"),
    _case("cluster-bigger-than-layout", set_("cluster.nodes", 4), "layout", "tp*cp*dp*pp = 2*1*4*2 = 16",
          "4 nodes x 8 = 32"),
    _case("ep-does-not-divide-experts", set_("model.num_experts", 12), "layout.ep", 8,
          "a divisor of model.num_experts (12)"),
    _case("ep-does-not-divide-tp-dp", set_("layout.ep", 3), "layout.ep", 3, "must divide tp x cp x dp (8)"),
    _case("ep-etp-does-not-divide-tp-dp", set_("layout.etp", 2), "layout.ep", 8, "ep x etp (8 x 2)",
          "tp x cp x dp (8)"),
    _case("pp-does-not-divide-layers", set_("model.num_layers", 33), "layout.pp", 2, "model.num_layers (33)"),
    _case("tp-does-not-divide-seq-len", set_("training.seq_len", 4095), "layout.tp", 2, "training.seq_len (4095)"),
    _case("batch-not-divisible-by-dp", set_("training.global_batch_size", 30), "training.global_batch_size", 30,
          "layout.dp x training.micro_batch_size (4 x 1 = 4) sequences"),
    _case("batch-not-divisible-by-dp-times-micro", set_("training.micro_batch_size", 3),
          "training.global_batch_size", 32, "(4 x 3 = 12) sequences"),
    _case("micro-batch-above-global", set_("training.micro_batch_size", 64), "training.micro_batch_size", 64,
          "<= global_batch_size (32) sequences"),
    _case("dtype-without-peak", set_("training.dtype", "fp32"), "training.dtype", "fp32", "bf16"),
    # names from closed sets
    _case("unknown-preset", set_("model.preset", "mixtral-8x8b"), "model.preset", "mixtral-8x8b",
          "mixtral-8x7b", "deepseek-v3"),
    _case("unknown-profile-name", set_("cluster.profile", "dgx-h1000"), "cluster.profile", "dgx-h1000",
          "dgx-h100", "path to a profile YAML"),
    _case("missing-profile-path", set_("cluster.profile", "nowhere/profile.yaml"), "cluster.profile",
          "nowhere/profile.yaml", "path to a profile YAML"),
    _case("unknown-dtype", set_("training.dtype", "fp64"), "training.dtype", "fp64", "one of: fp32, bf16"),
    _case("unknown-distribution", set_("routing.distribution", "pareto"), "routing.distribution", "pareto",
          "one of: balanced, zipf"),
    _case("unknown-recompute", set_("training.recompute", "some"), "training.recompute", "some", "selective"),
    _case("unknown-activation", [custom_model, set_("model.activation", "relu")], "model.activation", "relu",
          "swiglu, gelu"),
    _case("zipf-s-with-balanced", set_("routing.distribution", "balanced"), "routing.zipf_s", 0.5,
          "only with distribution: zipf"),
    _case("zipf-s-out-of-range", set_("routing.zipf_s", 11), "routing.zipf_s", 11, "[0.0, 10.0]"),
    # sizes beyond moesim.spec.bounds: nothing derived from them may overflow
    _case("huge-hidden-size", [custom_model, set_("model.hidden_size", 2**40)], "model.hidden_size", 2**40,
          "an integer in [1, 1048576]"),
    _case("huge-num-layers", set_("model.num_layers", 10**6), "model.num_layers", 10**6, "in [1, 4096]"),
    _case("huge-vocab", set_("model.vocab_size", 2**30), "model.vocab_size", 2**30, "in [1, 16777216]"),
    _case("huge-experts", set_("model.num_experts", 2**20), "model.num_experts", 2**20, "in [1, 16384]"),
    _case("huge-seq-len", set_("training.seq_len", 2**30), "training.seq_len", 2**30, "in [1, 16777216] tokens"),
    _case("huge-optimizer-state", set_("training.optimizer.state_bytes_per_param", 1e300),
          "training.optimizer.state_bytes_per_param", 1e300, "in [0, 1024.0] bytes per parameter"),
    _case("huge-min-capacity", set_("gate", {"min_capacity": 2**40}), "gate.min_capacity", 2**40,
          "in [0, 2147483647] tokens"),
    _case("huge-slots", set_("placement", {"slots_per_gpu": 10**6}), "placement.slots_per_gpu", 10**6,
          "in [1, 16384]"),
    _case("assignments-beyond-int32", [set_("training.seq_len", 2**20), set_("training.micro_batch_size", 2048),
                                       set_("training.global_batch_size", 8192)], "training.seq_len", 2**20,
          "(2048 x 1048576 / 2 x 2 = 2147483648) at most 2147483647 assignments routed per rank and micro-batch"),
    # placement policy parameters (moesim.spec.placement_params), read like every other section
    _case("smartmoe-history-beyond-freq", set_("placement", {"policy": "smartmoe", "smartmoe": {
        "freq": 3, "history_steps": 5}}), "placement.smartmoe.history_steps", 5, "an integer in [1, freq = 3]"),
    _case("policy-param-typo", set_("placement", {"policy": "eplb", "eplb": {"period_step": 5}}),
          "placement.eplb.period_step", 5, "did you mean 'period_steps'", "history_steps"),
    _case("unchosen-policy-params-checked", set_("placement", {"policy": "static", "flexmoe": {"threshold": 0.5}}),
          "placement.flexmoe.threshold", 0.5, "a number in [1.0, 1000000.0] (max / mean rank load)"),
    _case("policy-params-not-a-mapping", set_("placement", {"eplb": 5}), "placement.eplb", 5,
          "a mapping of keys or null"),
    _case("policy-param-yes", set_("placement", {"eplb": {"hierarchical": "yes"}}), "placement.eplb.hierarchical",
          "yes", "true or false (yes is text in YAML 1.2"),
    _case("policy-param-string-for-int", set_("placement", {"fastermoe": {"max_shadows": "4"}}),
          "placement.fastermoe.max_shadows", "4", "an integer in [0, 16384] experts or null"),
    _case("static-takes-no-params", set_("placement", {"static": {"x": 1}}), "placement.static.x", 1,
          "no keys here (placement.static takes none)"),
    # missing required keys
    _case("missing-seq-len", delete("training.seq_len"), "training.seq_len", None, "required"),
    _case("missing-nodes", delete("cluster.nodes"), "cluster.nodes", None, "required"),
    _case("missing-model", delete("model"), "model", None, "required"),
    _case("missing-custom-model-field", [custom_model, delete("model.num_experts")], "model.num_experts", None,
          "required"),
]


def _write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _fails_with_one_line(path: Path, capsys) -> str:
    """Run `moesim validate path`; it must exit 2 with exactly one line on stderr. Returns that line."""
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
    line = captured.err.rstrip("\n")
    assert line.startswith("moesim: error: ") and "Traceback" not in line
    return line


@pytest.mark.parametrize("mutations, key, value, expected", CASES)
def test_invalid_scenario_is_one_line(tmp_path, capsys, quickstart_doc, mutations, key, value, expected):
    for mutate in mutations:
        mutate(quickstart_doc)
    path = _write(tmp_path / "scenario.yaml", quickstart_doc)
    line = _fails_with_one_line(path, capsys)
    if isinstance(value, Shown):  # a prefix of the value
        shown = str(value)
    else:
        shown = show_value(value) + "; expected "
    assert line.startswith(f"moesim: error: {path}: {key}: got {shown}")
    assert "; expected " in line
    for text in expected:
        assert text in line


def test_shipped_scenarios_validate(capsys):
    assert SCENARIOS, "no scenarios/*.yaml"
    assert main(["validate", *map(str, SCENARIOS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(SCENARIOS) and all(": ok (" in line for line in out)


def test_quickstart_validates(capsys):
    assert main(["validate", str(ROOT / "scenarios" / "quickstart.yaml")]) == 0
    assert "ok (quickstart: mixtral-8x7b on 16 GPUs)" in capsys.readouterr().out


def test_missing_scenario_file(tmp_path, capsys):
    path = tmp_path / "no-such-scenario.yaml"
    line = _fails_with_one_line(path, capsys)
    assert f"{path}: " in line and "an existing scenario file" in line


def test_directory_instead_of_file(tmp_path, capsys):
    line = _fails_with_one_line(tmp_path, capsys)
    assert f"{tmp_path}: <top level>: got a directory; expected a regular scenario file" in line


def test_fifo_instead_of_file_is_refused_without_opening_it(tmp_path, capsys):
    fifo = tmp_path / "scenario.yaml"
    os.mkfifo(fifo)  # opening it for reading would block: validate must not
    line = _fails_with_one_line(fifo, capsys)
    assert f"{fifo}: <top level>: got a FIFO (named pipe); expected a regular scenario file" in line


def test_profile_path_that_is_a_directory(tmp_path, capsys, quickstart_doc):
    (tmp_path / "profiles.yaml").mkdir()
    quickstart_doc["cluster"]["profile"] = "profiles.yaml"
    line = _fails_with_one_line(_write(tmp_path / "scenario.yaml", quickstart_doc), capsys)
    assert "cluster.profile: got 'profiles.yaml' (a directory); expected a profile name" in line


@pytest.mark.parametrize("mutate, shown", [
    (set_("cluster.nodes", True), "cluster.nodes: got true; "),
    (set_("layout.tp", False), "layout.tp: got false; "),
    (set_("cluster.nodes", None), "cluster.nodes: got null; "),
    (set_("training.seq_len", [True, None]), "training.seq_len: got [true, null]; "),
])
def test_values_are_shown_as_yaml_writes_them(tmp_path, capsys, quickstart_doc, mutate, shown):
    mutate(quickstart_doc)
    line = _fails_with_one_line(_write(tmp_path / "scenario.yaml", quickstart_doc), capsys)
    assert shown in line


def test_file_name_too_long(tmp_path, capsys):
    path = tmp_path / ("x" * 5000 + ".yaml")
    line = _fails_with_one_line(path, capsys)
    assert "an existing scenario file" in line


@pytest.mark.parametrize("text, expected", [
    pytest.param("a: [1, 2", "YAML syntax error at line ", id="unclosed-list"),
    pytest.param("cluster:\n  nodes: 2\n\tprofile: x\n", "YAML syntax error at line 3", id="tab-indent"),
    pytest.param("name: a\nname: b\n: :\n- x", "YAML syntax error", id="garbage"),
    pytest.param("- 1\n- 2\n", "got [1, 2]; expected a mapping of keys at the top of the scenario",
                 id="top-level-list"),
    pytest.param("just a string\n", "got 'just a string'", id="top-level-string"),
    pytest.param("", "got an empty file (no YAML document); expected a mapping of keys at the top", id="empty-file"),
    pytest.param("# only a comment\n", "got an empty file (no YAML document)", id="only-comment"),
    pytest.param("---\n...\n", "got an empty file (no YAML document)", id="empty-document"),
    pytest.param("!!python/object/apply:os.system ['true']\n", "YAML syntax error", id="python-tag"),
    pytest.param("1: x\n", "1: got 1; expected string keys only", id="int-key"),
    pytest.param("a: 1\x00\n", "YAML syntax error", id="nul-byte"),
])
def test_file_that_is_not_a_scenario_mapping(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    line = _fails_with_one_line(path, capsys)
    assert f"{path}: " in line and expected in line


def test_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    line = _fails_with_one_line(path, capsys)
    assert f"{path}: " in line and "UTF-8" in line


def _broken_profile(mutate: Mutation) -> dict:
    doc = yaml.safe_load(H100.read_text(encoding="utf-8"))
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, key, value", [
    pytest.param(set_("gpu.hbm_GB.value", -80), "gpu.hbm_GB.value", -80, id="negative-hbm"),
    pytest.param(delete("fabric.nic_Gbps.source"), "fabric.nic_Gbps.source", None, id="missing-source"),
    pytest.param(set_("node.nvlink_efficiency.value", 1.5), "node.nvlink_efficiency.value", 1.5,
                 id="efficiency-above-one"),
    pytest.param(set_("gpu.colour", "green"), "gpu.colour", "green", id="unknown-key"),
])
def test_error_in_referenced_profile_names_the_profile_file(tmp_path, capsys, quickstart_doc, mutate, key, value):
    profile = _write(tmp_path / "profiles" / "broken.yaml", _broken_profile(mutate))
    quickstart_doc["cluster"]["profile"] = "profiles/broken.yaml"  # relative to the scenario file
    scenario = _write(tmp_path / "scenario.yaml", quickstart_doc)
    line = _fails_with_one_line(scenario, capsys)
    assert f"moesim: error: {profile}: {key}: got {show_value(value)}; expected " in line
    assert f"{scenario}:" not in line


def test_referenced_profile_that_is_not_yaml(tmp_path, capsys, quickstart_doc):
    profile = tmp_path / "bad-profile.yaml"
    profile.write_text("gpu: {name: [", encoding="utf-8")
    quickstart_doc["cluster"]["profile"] = str(profile)  # an absolute path works too
    line = _fails_with_one_line(_write(tmp_path / "scenario.yaml", quickstart_doc), capsys)
    assert f"moesim: error: {profile}: <top level>: got " in line and "YAML syntax error at line " in line


def test_good_referenced_profile_validates(tmp_path, capsys, quickstart_doc):
    _write(tmp_path / "profiles" / "mine.yaml", _broken_profile(lambda doc: None))
    quickstart_doc["cluster"]["profile"] = "profiles/mine.yaml"
    assert main(["validate", str(_write(tmp_path / "scenario.yaml", quickstart_doc))]) == 0


def test_every_bad_file_of_several_is_reported(tmp_path, capsys, quickstart_doc):
    """One line per invalid file, then how many were invalid (moesim validate checks them all)."""
    good = _write(tmp_path / "good.yaml", quickstart_doc)
    bad = _write(tmp_path / "bad.yaml", {**quickstart_doc, "colour": "blue"})
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{good}: ok" in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 2 and f"{bad}: colour: got 'blue'" in lines[0] and "1 of 2 files invalid" in lines[1]


def test_bad_command_line_is_one_line(capsys):
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moesim: error: command line: got 'validate';")


def test_console_exit_status_is_2(tmp_path, quickstart_doc):
    """The real process: exit status 2, one line on stderr, no traceback."""
    quickstart_doc["layout"]["ep"] = 3
    path = _write(tmp_path / "scenario.yaml", quickstart_doc)
    proc = subprocess.run([sys.executable, "-m", "moesim.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and f"{path}: layout.ep: got 3;" in proc.stderr
