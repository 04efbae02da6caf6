"""The planner's candidates: every combination of the `plan:` section's options, as a scenario, or the reason it
cannot run (the first rule it breaks, in the words of the check that refused it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from moesim.io.megatron_args import megatron_refusals
from moesim.spec.errors import SpecError
from moesim.spec.layout import ParallelLayout
from moesim.spec.placement import PlacementSpec
from moesim.spec.plan import PlanSpec
from moesim.spec.scenario import Scenario
from moesim.spec.training import Recompute, RecomputeModule

# the candidate's columns, in output order
KEYS = ("tp", "cp", "pp", "vpp", "dp", "ep", "etp", "first_stage_layers", "last_stage_layers", "micro_batch_size",
        "recompute", "distributed_optimizer", "dispatcher", "moe_a2a_overlap")


@dataclass(frozen=True)
class Candidate:
    values: dict  # KEYS -> the value (enums as their YAML text)
    scenario: Scenario | None  # None when pruned
    reason: str  # why it was pruned ("" when kept)


def _option_sets(plan: PlanSpec) -> list[tuple]:
    return [plan.tp, plan.cp, plan.pp, plan.vpp, plan.ep, plan.etp, plan.micro_batch_size, plan.recompute,
            plan.distributed_optimizer, plan.dispatcher, plan.moe_a2a_overlap, plan.uneven_stages]


def count(plan: PlanSpec) -> int:
    n = 1
    for options in _option_sets(plan):
        n *= len(options)
    return n


def candidates(sc: Scenario, plan: PlanSpec) -> Iterator[Candidate]:
    """Every combination of the plan's options on the scenario's cluster, model and global batch. The scenario's
    own values stand for everything the plan does not vary; overlap flags that a candidate cannot use (tensor-
    parallel overlap at tp 1) are switched off for it rather than pruning it."""
    gpus = sc.cluster.num_gpus
    per_node = sc.cluster.profile.node.gpus_per_node
    layers = sc.model.num_layers
    for (tp, cp, pp, vpp, ep, etp, mbs, recompute, dist, dispatcher, a2a,
         uneven) in itertools.product(*_option_sets(plan)):
        first, last = uneven_split(layers, pp) if uneven else (None, None)
        values = dict(tp=tp, cp=cp, pp=pp, vpp=vpp, dp=0, ep=ep, etp=etp, first_stage_layers=first,
                      last_stage_layers=last, micro_batch_size=mbs, recompute=recompute.value,
                      distributed_optimizer=dist, dispatcher=dispatcher.value, moe_a2a_overlap=a2a)
        if uneven and first is None:
            why = ("need pp > 1" if pp == 1 else f"pp {pp} divides the {layers} layers (the even split is the "
                   "candidate)" if layers % pp == 0 else f"no split of {layers} layers over pp {pp} with equal "
                   "middle stages")
            yield Candidate(values, None, f"uneven stages: {why}")
            continue
        model_parallel = tp * cp * pp
        if gpus % model_parallel:
            yield Candidate(values, None, f"tp x cp x pp = {model_parallel} does not divide the {gpus} GPUs")
            continue
        dp = gpus // model_parallel
        values["dp"] = dp
        if tp > per_node or etp > per_node:
            yield Candidate(values, None, f"tp {tp} / etp {etp} > {per_node} GPUs per node (tensor parallelism "
                                          "stays inside a node)")
            continue
        try:
            yield Candidate(values, _scenario(sc, tp, cp, pp, vpp, dp, ep, etp, first, last, mbs, recompute, dist,
                                              dispatcher, a2a), "")
        except SpecError as err:
            yield Candidate(values, None, err.expected if err.key == "megatron" else err.one_line())


def uneven_split(layers: int, pp: int) -> tuple[int | None, int | None]:
    """(first, last) stage layers when pp does not divide `layers`: the pp - 2 middle stages get ceil(layers / pp)
    each and the end stages what is left, the first one layer more if it is odd (the last also holds the LM head).
    (None, None) when pp divides the layers (the even split) or no such split exists."""
    if pp < 2 or layers % pp == 0:
        return None, None
    middle = -(-layers // pp)
    rest = layers - (pp - 2) * middle
    first = -(-rest // 2)
    last = rest - first
    return (first, last) if last >= 1 else (None, None)


def _scenario(sc: Scenario, tp, cp, pp, vpp, dp, ep, etp, first, last, mbs, recompute, dist, dispatcher,
              a2a) -> Scenario:
    tr = sc.training
    try:
        layout = ParallelLayout(tp=tp, cp=cp, pp=pp, vpp=vpp, dp=dp, ep=ep, etp=etp, first_stage_layers=first,
                                last_stage_layers=last, order=sc.layout.order)
    except SpecError as err:  # the key as it reads in the scenario
        raise SpecError(f"layout.{err.key}", err.value, err.expected) from None
    modules = tr.recompute_modules if recompute is Recompute.SELECTIVE and tr.recompute is Recompute.SELECTIVE \
        else (RecomputeModule.CORE_ATTN,)
    training = tr.replace(micro_batch_size=mbs, recompute=recompute, recompute_modules=modules,
                          optimizer=tr.optimizer.replace(distributed=dist))
    c = sc.comm
    comm = c.replace(dispatcher=dispatcher, moe_a2a_overlap=a2a, tp_comm_overlap=c.tp_comm_overlap and tp > 1,
                     overlap_param_gather=c.overlap_param_gather and dist,
                     shared_expert_overlap=c.shared_expert_overlap and dispatcher.value != "allgather")
    # the short list chooses the placement (static until then: the screen assumes balanced routing)
    out = sc.replace(layout=layout, training=training, comm=comm, placement=PlacementSpec(), plan=None)
    refused = megatron_refusals(out)
    if refused:  # a plan must launch: what Megatron-LM's argument checks refuse is no candidate
        raise SpecError("megatron", f"{layout.tp}/{layout.pp}/{layout.ep}", refused[0])
    return out
