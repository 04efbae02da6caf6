"""The planner's search space and ranking (a scenario's `plan:` section): each key lists the values to try; the
scenario's own value is used for everything the plan does not vary. Defaults cover what Megatron-LM users vary."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from moesim.spec.base import LISTS_AS_TUPLES, Count, SpecEnum, SpecModel, spec_field
from moesim.spec.comm import TokenDispatcher
from moesim.spec.errors import require
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.training import Recompute

_Sizes = Annotated[tuple[Annotated[int, Field(ge=1, le=2**20)], ...], LISTS_AS_TUPLES]
SCENARIO_ROUTING = "scenario"  # in plan.routing: the scenario's own routing section


MAX_ZIPF_S = 10.0


def zipf_level(name: str) -> float | None:
    """The exponent of a 'zipf:S' routing condition, or None when `name` is not one."""
    head, _, value = name.partition(":")
    if head != "zipf" or not value:
        return None
    try:
        s = float(value)
    except ValueError:
        return None
    return s if 0.0 <= s <= MAX_ZIPF_S else None


class RankBy(SpecEnum):
    MEAN = "mean"  # mean step time over the routing conditions
    P95 = "p95"  # the largest p95 step time over the conditions
    WORST = "worst"  # the slowest condition's mean


class PlanSpec(SpecModel):
    tp: _Sizes = spec_field((1, 2, 4, 8), help="tensor parallel sizes to try (within a node)")
    cp: _Sizes = spec_field((1,), help="context parallel sizes to try")
    pp: _Sizes = spec_field((1, 2, 4, 8), help="pipeline parallel sizes to try")
    vpp: _Sizes = spec_field((1,), help="virtual pipeline stages per rank to try (1 = plain 1F1B)")
    ep: _Sizes = spec_field((1, 2, 4, 8, 16, 32, 64), help="expert parallel sizes to try")
    etp: _Sizes = spec_field((1,), help="expert tensor parallel sizes to try")
    micro_batch_size: _Sizes = spec_field((1, 2), help="micro-batch sizes to try (sequences)")
    recompute: Annotated[tuple[Recompute, ...], LISTS_AS_TUPLES] = spec_field(
        (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL), help="activation recompute options to try")
    distributed_optimizer: Annotated[tuple[bool, ...], LISTS_AS_TUPLES] = spec_field(
        (True,), help="distributed optimizer (ZeRO-1) options to try")
    dispatcher: Annotated[tuple[TokenDispatcher, ...], LISTS_AS_TUPLES] = spec_field(
        (TokenDispatcher.ALLTOALL,), help="token dispatchers to try (Megatron --moe-token-dispatcher-type)")
    moe_a2a_overlap: Annotated[tuple[bool, ...], LISTS_AS_TUPLES] = spec_field(
        (False, True), help="expert all-to-all overlap options to try (refused with ep 1)")
    uneven_stages: Annotated[tuple[bool, ...], LISTS_AS_TUPLES] = spec_field(
        (False, True), help="split the layers unevenly when pp does not divide them: the middle stages get "
        "ceil(layers / pp) each, the first and last stages the rest (Megatron --decoder-first/last-pipeline-num-"
        "layers); false needs pp to divide the layers")
    capacity_factor: Annotated[tuple[float | None, ...], LISTS_AS_TUPLES] | None = spec_field(
        None, help="capacity factors to try on the short list (null in the list: dropless); under balanced routing "
        "they change nothing, so the screen does not vary them. Default: the scenario's own")
    placement: Annotated[tuple[PlacementPolicyKind, ...], LISTS_AS_TUPLES] | None = spec_field(
        None, help="expert placement policies to try on the short list. Default: the scenario's own (with its "
        "parameters)")
    redundant_experts: Annotated[tuple[Annotated[int, Field(ge=0, le=2**14)], ...], LISTS_AS_TUPLES] = spec_field(
        (0,), help="with placement eplb: redundant expert slots per EP group to try (DeepSeek EPLB's "
        "num_redundant_experts; rounded up to whole slots per GPU)")
    routing: Annotated[tuple[str, ...], LISTS_AS_TUPLES] = spec_field(
        ("balanced", SCENARIO_ROUTING), help="routing conditions the short list is simulated under: routing "
        "presets, 'zipf:S' for a skew level (Zipf exponent S), or 'scenario' for the scenario's own routing (a "
        "trace or drift included)")
    rank_by: RankBy = spec_field(RankBy.MEAN, help="how the short list is ranked over the routing conditions: "
                                 "mean, p95 or worst")
    shortlist: Count = spec_field(10, help="layouts the simulator re-ranks (the estimate's best)", unit="layouts",
                                  ge=1, le=1000)
    steps: Count = spec_field(2, help="simulated steps per layout and routing condition", unit="steps", ge=1,
                              le=1000)
    max_micro_batches: Count = spec_field(32, help="above this many micro-batches per pipeline the simulation "
                                          "extrapolates from two shorter runs (as moesim accuracy)",
                                          unit="micro-batches", ge=2, le=100_000)

    @field_validator("tp", "cp", "pp", "vpp", "ep", "etp", "micro_batch_size", "recompute", "distributed_optimizer",
                     "dispatcher", "moe_a2a_overlap", "uneven_stages", "capacity_factor", "placement",
                     "redundant_experts", "routing")
    @classmethod
    def _each_once(cls, values: tuple | None) -> tuple | None:
        require(values is None or len(values) > 0, "", [], "a non-empty list of the values to try")
        require(values is None or len(set(values)) == len(values), "", list(values or ()), "each value once")
        return values

    @field_validator("routing")
    @classmethod
    def _known_routing(cls, routing: tuple) -> tuple:
        known = (SCENARIO_ROUTING, *ROUTING_PRESETS)
        for name in routing:
            require(name in known or zipf_level(name) is not None, "", name,
                    f"a routing preset, zipf:S with 0 <= S <= {MAX_ZIPF_S:g}, or 'scenario': {', '.join(known)}")
        require(len(set(routing)) == len(routing), "", list(routing), "each routing condition once")
        return routing
