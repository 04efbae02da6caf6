"""Placement policy parameters are spec models like every other section (moesim.spec.placement_params): frozen,
strict, each field declared once with its default, bounds, unit and help; a scenario's `placement.<policy>:`
sub-sections are read by the same machinery as the other sections."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from moesim.loader import load_scenario
from moesim.placement.context import placement_context
from moesim.placement.registry import POLICIES, make_policy
from moesim.spec.base import SpecModel
from moesim.spec.errors import SpecError
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.placement_params import (POLICY_PARAMS, EplbParams, FasterMoeParams, FlexMoeParams, SmartMoeParams,
                                          TaMoeParams)

DEFAULTS = {  # as the dataclasses these replace had them
    PlacementPolicyKind.STATIC: {},
    PlacementPolicyKind.FASTERMOE: {"shadowing": True, "topology_gate": False, "outgoing_fraction": 0.14,
                                    "max_shadows": None},
    PlacementPolicyKind.SMARTMOE: {"freq": 10, "history_steps": 2},
    PlacementPolicyKind.FLEXMOE: {"threshold": 1.2, "horizon_steps": 50, "history_steps": 10,
                                  "max_moves_per_step": 64},
    PlacementPolicyKind.TA_MOE: {"strength": 0.5},
    PlacementPolicyKind.EPLB: {"redundant_experts": 0, "period_steps": 100, "history_steps": 100, "num_groups": 1,
                               "hierarchical": True},
}


@pytest.mark.parametrize("kind", list(PlacementPolicyKind), ids=lambda k: k.value)
def test_every_policy_has_a_frozen_spec_model_with_the_same_defaults(kind):
    params_cls = POLICY_PARAMS[kind]
    assert issubclass(params_cls, SpecModel) and POLICIES[kind][0] is params_cls
    params = params_cls()
    assert params.model_dump() == DEFAULTS[kind]
    for name, info in params_cls.model_fields.items():
        assert info.description, f"{params_cls.__name__}.{name} has no help text"
    if DEFAULTS[kind]:
        name = next(iter(DEFAULTS[kind]))
        with pytest.raises(ValidationError):  # frozen
            setattr(params, name, DEFAULTS[kind][name])


@pytest.mark.parametrize("build, key, expected", [
    (lambda: SmartMoeParams(freq=10, history_steps=11), "history_steps", "an integer in [1, freq = 10] (steps)"),
    (lambda: SmartMoeParams(freq=0), "freq", "an integer >= 1 steps"),
    (lambda: FlexMoeParams(threshold=0.9), "threshold", "a number in [1.0, 1000000.0]"),
    (lambda: FlexMoeParams(horizon_steps=True), "horizon_steps", "an integer >= 1 steps"),
    (lambda: FasterMoeParams(outgoing_fraction=1.5), "outgoing_fraction", "a number in [0.0, 1.0]"),
    (lambda: FasterMoeParams(max_shadows=-1), "max_shadows", "an integer in [0, 16384] experts or null"),
    (lambda: FasterMoeParams(shadowing=1), "shadowing", "true or false"),
    (lambda: TaMoeParams(strength=2), "strength", "a number in [0.0, 1.0]"),
    (lambda: EplbParams(num_groups=0), "num_groups", "an integer >= 1 expert groups"),
    (lambda: EplbParams(redundant_experts=2.0), "redundant_experts", "an integer >= 0"),
    (lambda: EplbParams(colour="red"), "colour", "no such key"),
])
def test_bad_parameters_name_the_field(build, key, expected):
    with pytest.raises(SpecError) as info:
        build()
    assert info.value.key == key and expected in info.value.one_line(), info.value.one_line()


ROOT = Path(__file__).resolve().parents[2]


def _scenario(tmp_path: Path, placement: dict) -> Path:
    doc = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text(encoding="utf-8"))
    doc["placement"] = placement
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_the_chosen_policys_sub_section_becomes_its_params(tmp_path):
    sc = load_scenario(_scenario(tmp_path, {"policy": "eplb", "slots_per_gpu": 2,
                                            "eplb": {"redundant_experts": 8, "period_steps": 0x10},
                                            "smartmoe": {"freq": 3, "history_steps": 3}}))
    assert sc.placement.params == EplbParams(redundant_experts=8, period_steps=16)
    assert make_policy(sc.placement, placement_context(sc, 0)).params is sc.placement.params


@pytest.mark.parametrize("section", [None, {}])
def test_an_absent_or_empty_sub_section_means_the_defaults(tmp_path, section):
    placement = {"policy": "smartmoe", **({} if section is None else {"smartmoe": section})}
    assert load_scenario(_scenario(tmp_path, placement)).placement.params == SmartMoeParams()


def test_make_policy_refuses_another_policys_params():
    sc_ctx = None  # never reached: the type check comes first
    with pytest.raises(SpecError, match="a EplbParams"):
        make_policy("eplb", sc_ctx, SmartMoeParams())
