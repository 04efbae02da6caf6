"""Fuzzing the input path (DESIGN.md rule 4: bad input never produces a traceback).

Hypothesis mutates scenario documents (and, through `cluster.profile: profile.yaml`, a hardware profile) with
1-3 random edits -- delete a key, insert a key, replace a value, misspell a key, nudge a number, change a type --
or writes random bytes / truncated YAML instead. `moesim validate` must return 0 or 2, never raise; on 2 it prints
exactly one line. A second, smaller test runs the simulator on the small mutants that validate.
Both are derandomized so that CI is reproducible.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.cli import main
from moesim.loader import load_scenario

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text(encoding="utf-8"))
H100 = yaml.safe_load((ROOT / "hw_profiles" / "dgx-h100.yaml").read_text(encoding="utf-8"))

# 1 DGX H100 node, a 2-layer custom model (no preset), 4 experts: simulates in a few milliseconds.
TINY = {
    "name": "tiny",
    "cluster": {"profile": "dgx-h100", "nodes": 1},
    "model": {"name": "tiny-moe", "num_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
              "num_kv_heads": 2, "expert_ffn_size": 512, "num_experts": 4, "top_k": 2, "vocab_size": 1024,
              "activation": "swiglu", "source": "test"},
    "training": {"global_batch_size": 8, "seq_len": 128, "micro_batch_size": 1, "dtype": "bf16",
                 "optimizer": {"name": "adam", "state_bytes_per_param": 12, "distributed": False},
                 "recompute": "none"},
    "layout": {"tp": 2, "pp": 1, "dp": 4, "ep": 4, "etp": 1},
    "routing": {"distribution": "zipf", "zipf_s": 1.0, "seed": 3},
    "network": {"model": "flow", "solver": "bound", "cross_rail": "pxn", "all_to_all": "hierarchical",
                "all_reduce": "ring"},
    "placement": {"policy": "eplb", "slots_per_gpu": 2, "migration": "overlapped",
                  "eplb": {"redundant_experts": 4, "period_steps": 1, "history_steps": 2},
                  "smartmoe": {"freq": 2}, "fastermoe": {"max_shadows": None}},
    "simulation": {"steps": 1, "warmup_steps": 0, "seed": 0},
}
# The same, reading its hardware profile from profile.yaml next to it (the profile gets mutated too).
TINY_OWN_PROFILE = copy.deepcopy(TINY)
TINY_OWN_PROFILE["cluster"]["profile"] = "profile.yaml"

# On the calibrated CPU profile (its `calibration` section gets mutated too): 2 hosts of 4 ranks, fp32.
CPU_PROFILE = yaml.safe_load((ROOT / "hw_profiles" / "cpu-gloo-2c.yaml").read_text(encoding="utf-8"))
TINY_CPU = copy.deepcopy(TINY_OWN_PROFILE)
TINY_CPU["cluster"]["nodes"] = 2
TINY_CPU["training"]["dtype"] = "fp32"

BASES = [(QUICKSTART, None), (TINY, None), (TINY_OWN_PROFILE, H100), (TINY_CPU, CPU_PROFILE)]

WORDS = sorted({
    # keys of every section, so inserts and replacements hit real names, and every enum value
    "name", "cluster", "model", "training", "layout", "routing", "simulation", "profile", "nodes", "preset",
    "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "dense_ffn_size",
    "expert_ffn_size", "num_experts", "top_k", "num_shared_experts", "vocab_size", "first_k_dense", "moe_every",
    "activation", "source", "global_batch_size", "seq_len", "micro_batch_size", "dtype", "grad_dtype",
    "optimizer", "state_bytes_per_param", "distributed", "recompute", "tp", "pp", "dp", "ep", "etp",
    "distribution", "zipf_s", "seed", "steps", "warmup_steps", "schema_version", "status", "gpu", "node",
    "fabric", "compute", "value", "seq_lens", "head_dims", "gemm_tiles", "sm_count", "peak_dense_TFLOPs", "hbm_GB",
    "expert_tile_rows", "cp",
    "fp32", "bf16", "fp16", "fp8", "fp64", "adam", "sgd", "none", "selective", "full", "balanced", "zipf",
    "pareto", "swiglu", "gelu", "relu", "mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "olmoe-1b-7b",
    "dgx-h100", "dgx-a100", "hgx-h200", "dgx-h1000",
    "network", "solver", "cross_rail", "all_to_all", "all_reduce", "flow", "alpha_beta", "bound", "maxmin",
    "pxn", "spine", "direct", "hierarchical", "ring", "nvls_tree", "placement", "policy", "slots_per_gpu",
    "migration", "blocking", "overlapped", "static", "fastermoe", "smartmoe", "flexmoe", "ta_moe", "eplb",
    "redundant_experts", "period_steps", "history_steps", "freq", "strength", "max_shadows", "calibration",
    "collectives", "intra_node", "inter_node", "expert_kernels", "table", "table_rows", "alpha_us", "t0_us",
})
PATHS = ["profile.yaml", "missing.yaml", "a/b/c.yaml", "/", ".", "..", "x" * 300 + ".yaml", "../profile.yaml",
         str(ROOT / "hw_profiles" / "dgx-a100.yaml"), str(ROOT / "scenarios" / "quickstart.yaml"), "\x00.yaml"]
NUMBERS = [0, 1, -1, 2, 3, 7, 8, 16, 2**31, 2**63 - 1, 2**63, 2**64 + 1, 10**30, 10**400, -10**400,
           0.0, -0.0, 0.5, 1.0, 1.5, 8.0, 1e-300, 1e300, math.nan, math.inf, -math.inf]

# The values most likely to break a reader, for the targeted edit and the exhaustive sweep below.
HOSTILE = [0, -1, 2**63, 10**400, -10**400, 1.5, math.nan, math.inf, 1e300, "", "x" * 300 + ".yaml", "\x00",
           True, None, [], {}, [1, 2], {"value": 1}]
DELETE = object()
SWEEP = [0, -1, 2**63, 10**400, 1.5, math.nan, "", "x" * 300 + ".yaml", True, None, [], DELETE]

_scalars = st.one_of(
    st.integers(min_value=-3, max_value=70),  # near-valid sizes reach the cross-field checks
    st.integers(),
    st.sampled_from(NUMBERS),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(WORDS + PATHS + ["", " ", "yes", "null", "~", "1e3", "0x10"]),
    st.booleans(),
    st.none(),
)
_keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=10), st.integers(-2, 2), st.booleans(), st.none())
VALUES = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(_keys, inner, max_size=4)), max_leaves=8)
# For the run test: values that keep a scenario small when they are accepted.
SMALL_VALUES = st.one_of(st.integers(min_value=-2, max_value=16), st.sampled_from([0.0, 0.5, 1.0, 2.0, 10.0, 11.0]),
                         st.sampled_from(WORDS), st.booleans(), st.none(), st.lists(st.integers(0, 4), max_size=2))

# Known-good alternatives for fields of TINY / its profile: they keep a mutant valid and small, so that the run
# test simulates many different scenarios rather than stopping at validation.
VARIATIONS = [
    ("scenario", ("layout",), [{"tp": 1, "pp": 1, "dp": 8, "ep": 4}, {"tp": 2, "pp": 2, "dp": 2, "ep": 4},
                               {"tp": 4, "pp": 1, "dp": 2, "ep": 4, "etp": 2}, {"tp": 1, "pp": 2, "dp": 4, "ep": 2,
                                                                               "etp": 2},
                               {"tp": 1, "dp": 8, "ep": 1, "etp": 8}, {"tp": 2, "pp": 2, "dp": 2, "ep": 2}]),
    ("scenario", ("routing",), [{"distribution": "balanced"}, {"distribution": "zipf", "zipf_s": 0},
                                {"distribution": "zipf", "zipf_s": 3.0}, {"distribution": "ZIPF", "zipf_s": 10},
                                {}, None]),
    ("scenario", ("training", "recompute"), ["none", "selective", "full"]),
    ("scenario", ("training", "dtype"), ["fp16", "fp8", "bf16"]),
    ("scenario", ("training", "grad_dtype"), ["bf16", "fp32"]),
    ("scenario", ("training", "micro_batch_size"), [1, 2]),
    ("scenario", ("training", "global_batch_size"), [8, 16, 32]),
    ("scenario", ("training", "seq_len"), [8, 64, 256]),
    ("scenario", ("training", "optimizer"), [{"distributed": True}, {"state_bytes_per_param": 0}, None]),
    ("scenario", ("model", "top_k"), [1, 3, 4]),
    ("scenario", ("model", "num_experts"), [4, 8, 16]),
    ("scenario", ("model", "num_layers"), [1, 3, 4]),
    ("scenario", ("model", "num_shared_experts"), [1, 2]),
    ("scenario", ("model", "first_k_dense"), [0, 1]),
    ("scenario", ("model", "dense_ffn_size"), [512, 0]),
    ("scenario", ("model", "moe_every"), [1, 2]),
    ("scenario", ("model", "activation"), ["gelu", "SwiGLU"]),
    ("scenario", ("model", "num_kv_heads"), [1, 4]),
    ("scenario", ("model", "head_dim"), [1, 64]),
    ("scenario", ("simulation", "warmup_steps"), [0, 1, 2]),
    ("scenario", ("simulation", "seed"), [1, 2**63 - 1]),
    ("scenario", ("routing", "seed"), [0, 7]),
    ("profile", ("node", "gpus_per_node", "value"), [2, 4, 16]),
    ("profile", ("fabric", "nics_per_node", "value"), [1, 4]),
    ("profile", ("fabric", "rail_optimized", "value"), [False]),
    ("profile", ("fabric", "oversubscription", "value"), [1, 4.0]),
    ("profile", ("compute", "expert_tile_rows", "value"), [1, 64]),
    ("profile", ("compute", "gemm_efficiency"), [{"value": 1.0, "source": "t"}, {"value": 0.001, "source": "t"}]),
    ("profile", ("compute", "attention_efficiency"), [
        {"value": 1.0, "source": "t"},
        {"seq_lens": [1, 2**24], "head_dims": [1, 2**16], "forward_causal": [[0.001, 1], [1, 0.001]],
         "backward_causal": [[1, 1], [0.001, 0.001]], "source": "t"}]),
    ("profile", ("node", "nvlink_latency_us", "value"), [0, 1000]),
]


def _vary(draw, scenario: dict, profile: dict | None) -> None:
    target, path, choices = draw(st.sampled_from(VARIATIONS))
    doc = profile if target == "profile" else scenario
    if doc is None:
        return
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    value = draw(st.sampled_from(choices))
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


SNIPPETS = [
    "", "\n", "---\n...\n", "a: [1, 2", "- 1\n- 2\n", "just text", "{", "a: b: c", "a:\n\t- 1", "? [1, 2]\n: x",
    "a: &x [*x]", "a: &x {b: *x}\nname: t", "cluster: &c {profile: dgx-h100, nodes: 1, more: *c}",
    "a: *undefined", "!!python/object/apply:os.system ['true']", "a: !!binary AAAA", "a: !!set {x, y}",
    "name: 2024-01-01", "a: " + "[" * 3000 + "]" * 3000, "a: 1\x00", "\ufeffname: bom", "%YAML 9.9\n---\na: 1",
    "name: x\nname: y\n", "a: " + "9" * 5000,
    # limits of the reader (moesim.io.safe_yaml): nesting, aliases expanding into huge structures, keys twice
    "a: " + "{b: " * 100 + "1" + "}" * 100, "".join(" " * i + f"k{i}:\n" for i in range(100)),
    "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 7)),
    "l0: &l0 [1]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, 100)),
    "cluster: {profile: dgx-h100, nodes: 1, nodes: 2}", "1: a\n0x1: b\n", "sweeep: {routing.zipf_s: [1]}",
    # YAML 1.2 core resolution: what YAML 1.1 read differently, explicit tags it refuses, huge hex and octal
    "a: yes\nb: 1:08:16\nc: 010\nd: 1e-6\ne: .inf\nf: 0o17\ng: 1_000\nh: 2026-11-23", "true: 1\nTrue: 2\n",
    "a: !!int '1:08'", "a: !!float x", "a: !!bool yes", "name: " + "0x" + "f" * 20_000, "name: 0o" + "7" * 20_000,
    "cluster: {profile: dgx-h100, nodes: 0x" + "f" * 5000 + "}", "yes: 1\n'yes': 2\n", "~: 1\nnull: 2\n",
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a document (dict keys and list indices), containers included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, prefix + (key,))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _paths(child, prefix + (index,))
    return out


def _get(holder: dict, path: tuple) -> Any:
    node = holder
    for key in path:
        node = node[key]
    return node


def _typo(draw, key: str) -> str:
    """One-character edit: substitute, insert, delete, swap neighbours or flip case."""
    if not key:
        return draw(st.characters(min_codepoint=97, max_codepoint=122))
    i = draw(st.integers(0, len(key) - 1))
    letter = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_0123456789"))
    edit = draw(st.sampled_from(["sub", "ins", "del", "swap", "case"]))
    if edit == "sub":
        return key[:i] + letter + key[i + 1:]
    if edit == "ins":
        return key[:i] + letter + key[i:]
    if edit == "del" and len(key) > 1:
        return key[:i] + key[i + 1:]
    if edit == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    return key[:i] + key[i].swapcase() + key[i + 1:]


def _mutate(draw, doc: Any, values) -> Any:
    """Apply one random edit to `doc`; returns the (possibly replaced) document."""
    holder = {"root": doc}
    paths = _paths(doc, ("root",))
    op = draw(st.sampled_from(["delete", "insert", "replace", "typo", "nudge", "retype", "hostile", "hostile"]))
    inner = [p for p in paths if len(p) > 1]
    if op == "delete" and inner:
        path = draw(st.sampled_from(inner))
        del _get(holder, path[:-1])[path[-1]]
    elif op == "insert":
        containers = [p for p in paths if isinstance(_get(holder, p), (dict, list))]
        if containers:
            target = _get(holder, draw(st.sampled_from(containers)))
            if isinstance(target, dict):
                target[draw(_keys)] = draw(values)
            else:
                target.insert(draw(st.integers(0, len(target))), draw(values))
    elif op == "typo":
        named = [p for p in inner if isinstance(p[-1], str)]
        if named:
            path = draw(st.sampled_from(named))
            parent = _get(holder, path[:-1])
            new_key = _typo(draw, path[-1])
            items = [(new_key if k == path[-1] else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
    elif op == "nudge":  # a nearby number: divisibility and cross-field checks
        numbers = [p for p in inner if type(_get(holder, p)) in (int, float)]
        if numbers:
            path = draw(st.sampled_from(numbers))
            old = _get(holder, path)
            new = draw(st.sampled_from([old - 1, old + 1, old * 2, old // 2 if isinstance(old, int) else old / 2,
                                        -old, 0, old * 3]))
            _get(holder, path[:-1])[path[-1]] = new
    elif op == "hostile" and inner:  # a leaf (or section) gets one of the values most likely to break a reader
        path = draw(st.sampled_from(inner))
        _get(holder, path[:-1])[path[-1]] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
    elif op == "retype" and inner:  # the same value, the wrong type
        path = draw(st.sampled_from(inner))
        old = _get(holder, path)
        _get(holder, path[:-1])[path[-1]] = draw(st.sampled_from([str(old), [old], {"value": old}, None]))
    else:  # replace, and the fallback for an edit that had nothing to act on
        path = draw(st.sampled_from(paths))
        if len(path) == 1:
            holder["root"] = draw(values)
        else:
            _get(holder, path[:-1])[path[-1]] = draw(values)
    return holder["root"]


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: a third of the time otherwise


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)


H100_BYTES = _dump(H100).encode()


@st.composite
def mutated_files(draw, bases=BASES, values=VALUES, min_edits: int = 1, max_edits: int = 3, raw: bool = True,
                  variations: int = 0) -> tuple[bytes, bytes]:
    """(scenario file bytes, profile.yaml bytes): min_edits..max_edits random edits, after up to `variations`
    known-good changes."""
    profile_bytes = H100_BYTES
    mode = draw(st.sampled_from(["edit"] * 8 + ["bytes", "truncated", "snippet", "text"])) if raw else "edit"
    if mode == "bytes":
        return draw(st.binary(max_size=300)), profile_bytes
    if mode == "snippet":
        return draw(st.sampled_from(SNIPPETS)).encode(), profile_bytes
    if mode == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass"), profile_bytes
    scenario, profile = copy.deepcopy(draw(st.sampled_from(bases)))
    if mode == "truncated":
        text = _dump(scenario)
        return text[:draw(st.integers(0, len(text)))].encode(), profile_bytes
    for _ in range(draw(st.integers(0, variations))):
        _vary(draw, scenario, profile)
    for _ in range(draw(st.integers(min_edits, max_edits))):
        if profile is not None and draw(st.integers(0, 3)) == 0:
            profile = _mutate(draw, profile, values)
        else:
            scenario = _mutate(draw, scenario, values)
    return _dump(scenario).encode(), (_dump(profile).encode() if profile is not None else profile_bytes)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))  # an exception escaping here is a traceback for the user: the test fails
    return rc, out.getvalue(), err.getvalue()


def _write(directory: Path, files: tuple[bytes, bytes]) -> Path:
    scenario, profile = files
    (directory / "profile.yaml").write_bytes(profile)  # always rewritten: every example is self-contained
    path = directory / "scenario.yaml"
    path.write_bytes(scenario)
    return path


def _check_one_line(rc: int, out: str, err: str, command: str) -> str | None:
    """Exit 0 or 2; on 2 exactly one `moesim: error:` line. Returns the error line (None on success)."""
    assert rc in (0, 2), (rc, out, err)
    if rc == 0:
        assert err == "", err
        assert command != "validate" or "ok" in out
        return None
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("moesim: error: ") and len(err.strip()) > len("moesim: error:"), err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.large_base_example])


def test_validate_never_raises_on_1000_mutated_files(fuzz_dir):
    outcomes: Counter = Counter()
    keys: set[str] = set()

    @settings(max_examples=1000, **_SETTINGS)
    @given(files=mutated_files())
    def check(files):
        path = _write(fuzz_dir, files)
        rc, out, err = _cli("validate", str(path))
        line = _check_one_line(rc, out, err, "validate")
        outcomes[rc] += 1
        if line is not None:
            # "<file>: <key path>: got ..." -- remember the key path to check that edits reach deep
            where = line[len("moesim: error: "):].split("; expected")[0].rsplit(": got ", 1)[0]
            keys.add(where.split(": ")[-1])

    check()
    assert sum(outcomes.values()) >= 1000, outcomes
    assert outcomes[0] >= 40 and outcomes[2] >= 500, outcomes  # both valid (about 5 %) and invalid files
    assert len(keys) >= 40, sorted(keys)  # errors came from many different key paths, not one early check


@pytest.mark.parametrize("snippet", SNIPPETS, ids=range(len(SNIPPETS)))
def test_every_snippet_is_refused_or_accepted_on_one_line(fuzz_dir, snippet):
    """Each hostile snippet for sure, not only when the random search draws it."""
    rc, out, err = _cli("validate", str(_write(fuzz_dir, (snippet.encode(), H100_BYTES))))
    _check_one_line(rc, out, err, "validate")


def _sweep_paths(doc: Any) -> list[tuple]:
    """Every path but the root; of the profile's many `source` strings, only the first (they are read alike)."""
    paths = [p for p in _paths(doc) if p]
    sources = [p for p in paths if p[-1] == "source"]
    return [p for p in paths if p[-1] != "source" or p == sources[0]]


@pytest.mark.parametrize("base, profile", [(QUICKSTART, None), (TINY, None), (TINY_OWN_PROFILE, H100)],
                         ids=["quickstart", "tiny", "tiny-own-profile"])
def test_every_key_with_every_hostile_value(fuzz_dir, base, profile):
    """Exhaustive where the random search is thin: every key of the document (or of its profile) set to each of
    the SWEEP values, one at a time, or deleted. A given (key, value) pair is rare among random mutants; before
    the fixes, this sweep hit an OverflowError, a ZeroDivisionError, an OSError and a hang within seconds."""
    target = profile if profile is not None else base
    for path in _sweep_paths(target):
        for value in SWEEP:
            doc = copy.deepcopy(target)
            parent = _get(doc, path[:-1])
            if value is DELETE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(value)
            files = (_dump(base).encode(), _dump(doc).encode()) if profile is not None else \
                (_dump(doc).encode(), H100_BYTES)
            rc, out, err = _cli("validate", str(_write(fuzz_dir, files)))
            _check_one_line(rc, out, err, "validate")


def _small(path: Path) -> bool:
    sc = load_scenario(path)
    return (sc.layout.world_size <= 16 and sc.model.num_layers <= 4 and sc.model.num_experts <= 64
            and sc.model.hidden_size <= 4096 and sc.model.vocab_size <= 1 << 16
            and sc.training.seq_len * sc.training.global_batch_size <= 1 << 16
            and sc.num_micro_batches <= 32 and sc.simulation.warmup_steps <= 2)


def test_run_never_raises_on_small_valid_mutants(fuzz_dir):
    ran: Counter = Counter()

    @settings(max_examples=100, **_SETTINGS)
    @given(files=mutated_files(bases=[(TINY, None), (TINY_OWN_PROFILE, H100)], values=SMALL_VALUES,
                               min_edits=0, max_edits=1, raw=False, variations=4))
    def check(files):
        path = _write(fuzz_dir, files)
        rc, out, err = _cli("validate", str(path))
        _check_one_line(rc, out, err, "validate")
        if rc != 0 or not _small(path):
            return
        rc, out, err = _cli("run", str(path), "--no-files", "--steps", "1")
        _check_one_line(rc, out, err, "run")
        ran[rc] += 1

    check()
    assert sum(ran.values()) >= 40, ran  # the test is not vacuous: most examples simulate
