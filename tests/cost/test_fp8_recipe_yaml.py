"""training.fp8_recipe and training.fp8_dispatch in scenario files: read, written back and read again unchanged;
refused in one line where they do not apply; set in the fp8 validation scenarios as their sources say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.io.safe_yaml import dump_yaml
from moesim.loader import load_scenario
from moesim.spec.dtype import Fp8Recipe
from moesim.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "validation" / "dgxc-grok1-proxy2l-h100x8-fp8" / "scenario.yaml"


def _write(tmp_path: Path, **training) -> Path:
    doc = yaml.safe_load(BASE.read_text())
    doc["training"] = {**{k: v for k, v in doc["training"].items() if not k.startswith("fp8_")}, **training}
    path = tmp_path / "scenario.yaml"
    path.write_text(dump_yaml(doc))
    return path


@pytest.mark.parametrize("recipe", [r.value for r in Fp8Recipe])
def test_round_trip(tmp_path, recipe):
    dispatch = recipe == "blockwise"
    sc = load_scenario(_write(tmp_path, dtype="fp8", fp8_recipe=recipe.upper(), fp8_dispatch=dispatch))
    assert sc.training.fp8_recipe is Fp8Recipe(recipe) and sc.training.fp8_dispatch is dispatch
    dumped = sc.training.model_dump(mode="json")
    assert dumped["fp8_recipe"] == recipe and dumped["fp8_dispatch"] is dispatch
    again = load_scenario(_write(tmp_path, **dumped))
    assert again.training == sc.training


def test_default_is_delayed_without_dispatch(tmp_path):
    sc = load_scenario(_write(tmp_path, dtype="fp8"))
    assert sc.training.fp8_recipe is Fp8Recipe.DELAYED and sc.training.fp8_dispatch is False


@pytest.mark.parametrize("training, key, shown, expected", [
    (dict(dtype="bf16", fp8_recipe="tensorwise"), "training.fp8_recipe", "'tensorwise'", "only with dtype: fp8"),
    (dict(dtype="fp8", fp8_recipe="custom"), "training.fp8_recipe", "'custom'",
     "one of: delayed, tensorwise, blockwise, mxfp8"),
    (dict(dtype="fp8", fp8_dispatch=True), "training.fp8_dispatch", "true", "fp8_recipe: blockwise"),
    (dict(dtype="bf16", fp8_dispatch=True), "training.fp8_dispatch", "true", "only with dtype: fp8"),
    (dict(dtype="fp8", fp8_dispatch="yes"), "training.fp8_dispatch", "'yes'", "true or false"),
])
def test_refused_in_one_line_naming_file_and_key(tmp_path, training, key, shown, expected):
    path = _write(tmp_path, **training)
    with pytest.raises(SpecError) as info:
        load_scenario(path)
    line = str(info.value)
    assert "\n" not in line and info.value.key == key
    assert line.startswith(f"{path}: {key}: got {shown}; expected "), line
    assert expected in line, line


@pytest.mark.parametrize("name, recipe, dispatch", [
    ("deepseek-v3-report-h800x2048-fp8", Fp8Recipe.BLOCKWISE, True),  # 1x128 / 128x128, FP8 dispatch (3.3)
    ("mbridge-2509-deepseek-v3-h100x1024-fp8cs", Fp8Recipe.TENSORWISE, False),  # FP8-CS
    ("mbridge-2511-qwen3-235b-a22b-h100x256-fp8cs", Fp8Recipe.TENSORWISE, False),
    ("mbridge-2511-qwen3-30b-a3b-h100x16-fp8cs", Fp8Recipe.TENSORWISE, False),
    ("mbridge-2602-qwen3-235b-a22b-h100x256-fp8cs", Fp8Recipe.TENSORWISE, False),
    ("dgxc-grok1-h100x512-fp8", Fp8Recipe.DELAYED, False),  # TE delayed scaling
    ("dgxc-grok1-proxy2l-h100x8-fp8", Fp8Recipe.DELAYED, False),
])
def test_validation_scenarios_use_their_published_recipe(name, recipe, dispatch):
    training = load_scenario(ROOT / "validation" / name / "scenario.yaml").training
    assert (training.fp8_recipe, training.fp8_dispatch) == (recipe, dispatch)
