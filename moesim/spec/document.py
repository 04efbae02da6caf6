"""Keys of the YAML files that are not spec fields: references io resolves (a profile, a trace), directives it
expands (a fit, a sweep, a curve's constant form), each placement policy's sub-section and a number's source.
Declared here once, like spec fields: io validates them with these models and the JSON Schema lists them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, create_model, field_validator

from moesim.spec.base import LISTS_AS_TUPLES, NonEmptyStr, SpecModel, spec_field
from moesim.spec.errors import require
from moesim.spec.attention_efficiency import AttentionEfficiencyTable, AttentionTableFileKeys
from moesim.spec.hardware import ClusterSpec
from moesim.spec.model import MoeModelSpec
from moesim.spec.placement import PlacementSpec
from moesim.spec.placement_params import POLICY_PARAMS
from moesim.spec.routing import RoutingDistribution, RoutingSpec
from moesim.spec.scenario import Scenario

FIT_FAMILIES = (RoutingDistribution.ZIPF, RoutingDistribution.DIRICHLET, RoutingDistribution.LOGNORMAL)


class ScenarioFileKeys(SpecModel):
    sweep: dict[str, list | dict[str, list]] | None = spec_field(
        None, help="dotted key path -> list of values; every point of their cartesian product is simulated. "
                   "`zip: {key.path: [...], ...}` pairs lists of equal length element by element, as one axis",
        expected="a mapping of dotted key paths to lists of values (and `zip:` to such a mapping)")


class ClusterFileKeys(SpecModel):
    profile: NonEmptyStr = spec_field(help="a profile name in hw_profiles/, or a path to a profile YAML (.yaml) "
                                           "relative to the scenario file")


class ModelFileKeys(SpecModel):
    hf_config: NonEmptyStr | None = spec_field(None, help="build the model from this Hugging Face config.json "
                                                          "(relative to the scenario file; DeepSeek-V2/V3, GPT-OSS, "
                                                          "Mixtral, OLMoE, Qwen2/3-MoE); the other keys override "
                                                          "its values")


class RoutingFileKeys(SpecModel):
    trace: NonEmptyStr | None = spec_field(None, help="replay this trace: .parquet, SmartMoE .npz or a directory "
                                                      "of SmartMoE logs, relative to the scenario file")
    trace_layers: Annotated[tuple[Annotated[int, Field(ge=0)], ...], LISTS_AS_TUPLES] | None = spec_field(
        None, help="with trace: replay only these trace layers, in this order", min_length=1,
        expected="a non-empty list of distinct trace layer indices")
    fit_from: NonEmptyStr | None = spec_field(None, help="fit a family per layer to this trace (as for trace) "
                                                         "and simulate the fit")
    fit_family: RoutingDistribution | None = spec_field(None, help="with fit_from: this family for every layer "
                                                                   "(zipf, dirichlet, lognormal; default: each "
                                                                   "layer's best fit)")

    @field_validator("fit_family")
    @classmethod
    def _fittable(cls, family: RoutingDistribution | None) -> RoutingDistribution | None:
        require(family is None or family in FIT_FAMILIES, "", getattr(family, "value", family),
                "zipf, dirichlet or lognormal")
        return family


class SourceKey(SpecModel):
    source: NonEmptyStr = spec_field(help="where the number comes from: a datasheet, a paper, or a calibration "
                                          "run (date, device, driver and library versions)")


PlacementFileKeys = create_model(
    "PlacementFileKeys", __base__=SpecModel,
    **{kind.value: (params_cls | None, spec_field(None, help=f"parameters of the {kind.value} policy "
                                                              f"({params_cls.__name__}); checked whenever "
                                                              f"given, used when it is the policy"))
       for kind, params_cls in POLICY_PARAMS.items()})

# spec model -> the keys its section of a file has beyond the spec's own fields
FILE_KEYS: dict[type, type[SpecModel]] = {Scenario: ScenarioFileKeys, ClusterSpec: ClusterFileKeys,
                                          MoeModelSpec: ModelFileKeys, RoutingSpec: RoutingFileKeys,
                                          PlacementSpec: PlacementFileKeys,
                                          AttentionEfficiencyTable: AttentionTableFileKeys}
