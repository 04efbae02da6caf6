"""`moesim plan`: screen every candidate with the closed-form estimate, re-rank the best with the simulator under
each routing condition, explain the short list and write the winner as a runnable scenario."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moesim.metrics.predict import Prediction, predict, simulated_runs
from moesim.network import build_network
from moesim.plan.estimate import BUCKETS, Estimate, estimate, peak_memory
from moesim.plan.space import KEYS, Candidate, candidates, count
from moesim.spec.errors import SpecError
from moesim.spec.placement import PlacementPolicyKind, PlacementSpec
from moesim.spec.placement_params import EplbParams
from moesim.spec.plan import SCENARIO_ROUTING, PlanSpec, RankBy, zipf_level
from moesim.spec.routing import RoutingDistribution, RoutingSpec
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.scenario import Scenario

GIB = 2**30


@dataclass(frozen=True)
class Screened:
    candidate: Candidate
    estimate: Estimate | None
    reason: str  # "" when it passed the screen
    peak_memory_bytes: float = float("nan")  # when the memory check ran


@dataclass(frozen=True)
class Evaluated:
    screened: Screened
    placement: PlacementPolicyKind
    capacity_factor: float | None
    redundant_experts: int  # EPLB's redundant slots per EP group (0 for other policies)
    scenario: Scenario
    predictions: dict[str, Prediction]  # routing condition -> simulated step
    score_s: float  # by the plan's rank_by
    explanation: tuple[str, ...]


@dataclass(frozen=True)
class PlanResult:
    plan: PlanSpec
    screened: list[Screened]
    shortlist: list[Evaluated]  # best first
    screen_s: float
    simulate_s: float

    @property
    def winner(self) -> Evaluated | None:
        return self.shortlist[0] if self.shortlist else None


def screen(sc: Scenario, plan: PlanSpec, progress: Callable[[int, int], None] | None = None) -> list[Screened]:
    """Every candidate with its estimate, or the reason it was pruned (memory included: a candidate that does not
    fit its GPUs under balanced routing is pruned with the numbers)."""
    net = build_network(sc.cluster, sc.network)  # one cluster for every candidate: one network, one cache
    total, out = count(plan), []
    for i, cand in enumerate(candidates(sc, plan)):
        if cand.scenario is None:
            out.append(Screened(cand, None, cand.reason))
        else:
            peak, stage = peak_memory(cand.scenario)  # first: a layout that does not fit needs no step time
            hbm = cand.scenario.cluster.profile.gpu.hbm_bytes
            if peak > hbm:
                out.append(Screened(cand, None, f"does not fit: {peak / GIB:.1f} of {hbm / GIB:.1f} GiB on "
                                                f"stage {stage}", peak))
            else:
                out.append(Screened(cand, estimate(cand.scenario, net), "", peak))
        if progress is not None:
            progress(i + 1, total)
    return out


def routing_conditions(sc: Scenario, plan: PlanSpec) -> dict[str, Scenario]:
    """Routing condition name -> the scenario routed that way."""
    out = {}
    for name in plan.routing:
        if name == SCENARIO_ROUTING:
            out[f"scenario ({sc.routing.preset or sc.routing.distribution.value})"] = sc
        elif zipf_level(name) is not None:
            out[name] = sc.replace(routing=RoutingSpec(distribution=RoutingDistribution.ZIPF, zipf_s=zipf_level(name)))
        else:
            out[name] = sc.replace(routing=RoutingSpec(**ROUTING_PRESETS[name], preset=name))
    return out


def score(predictions: dict[str, Prediction], rank_by: RankBy) -> float:
    steps = [p.step_s for p in predictions.values()]
    if rank_by is RankBy.MEAN:
        return float(np.mean(steps))
    if rank_by is RankBy.WORST:
        return float(max(steps))
    return float(max(p.step_p95_s for p in predictions.values()))


_ADVICE = {
    "all_to_all": "exposed expert all-to-all: {share} of the step; try moe_a2a_overlap, the flex dispatcher or "
                  "a smaller ep inside a node",
    "straggler_wait": "waiting for the hot experts' GPUs (routing skew): {share} of the step (placement and "
                      "capacity options act on it: plan.placement, plan.capacity_factor)",
    "pipeline_bubble": "pipeline bubble {share}: raise the micro-batch count or vpp, or lower pp",
    "tensor_parallel": "tensor-parallel collectives {share}: tp_comm_overlap or a smaller tp",
    "context_parallel": "context-parallel ring exchange {share}: a smaller cp or longer sequences per rank",
    "dp_sync": "gradient sync {share}: overlap_grad_reduce / overlap_param_gather",
    "memory_bound": "memory-bound kernels {share}: larger micro-batches amortise little here; fewer, larger GEMMs",
    "kernel_launch": "kernel launches {share}: CUDA graphs or fused kernels",
}


def explain(sc: Scenario, predictions: dict[str, Prediction]) -> tuple[str, ...]:
    """The short list's bottleneck in words, from the worst routing condition's breakdown, and how the step
    degrades from the first routing condition to the others."""
    worst_name = max(predictions, key=lambda k: predictions[k].step_s)
    worst = predictions[worst_name]
    total = sum(max(v, 0.0) for v in worst.breakdown_s.values()) or 1.0
    shares = {b: max(v, 0.0) / total for b, v in worst.breakdown_s.items() if b in _ADVICE}
    lines = []
    for bucket, share in sorted(shares.items(), key=lambda kv: -kv[1])[:2]:
        if share >= 0.05:
            lines.append(_ADVICE[bucket].format(share=f"{100 * share:.0f} %") + f" (under {worst_name})")
    if not lines:
        lines.append(f"compute-bound: {100 * worst.breakdown_s.get('compute', 0.0) / total:.0f} % compute "
                     f"(under {worst_name})")
    names = list(predictions)
    base = predictions[names[0]].step_s
    if len(names) > 1 and base > 0:
        steps = {n: predictions[n].step_s for n in names}
        lines.append("routing: " + ", ".join(f"{n} {t:.3f} s ({100 * (t / base - 1):+.0f} %)"
                                             for n, t in steps.items()))
    return tuple(lines)


def plan(sc: Scenario, plan_spec: PlanSpec | None = None, progress: Callable[[str, int, int], None] | None = None,
         check: Callable[[list[Scenario]], None] | None = None) -> PlanResult:
    """Screen, short-list, simulate under every routing condition and placement policy, rank. `check` is given
    every scenario the simulation stage will simulate, before it simulates any (a cost guard raises there)."""
    plan_spec = plan_spec or sc.plan or PlanSpec()
    t0 = time.perf_counter()
    screened = screen(sc, plan_spec, (lambda i, n: progress("screen", i, n)) if progress else None)
    t1 = time.perf_counter()
    kept = sorted((s for s in screened if not s.reason), key=lambda s: s.estimate.step_s)
    shortlist = kept[:plan_spec.shortlist]
    placements = plan_spec.placement or (sc.placement.policy,)
    capacities = plan_spec.capacity_factor or (sc.gate.capacity_factor,)
    jobs = [(s, p, cf, r) for s in shortlist for p in placements for cf in capacities
            for r in (plan_spec.redundant_experts if p is PlacementPolicyKind.EPLB else (0,))]
    bases = [_variant_or_none(sc, s.candidate.scenario, policy, cf, redundant, plan_spec.steps)
             for s, policy, cf, redundant in jobs]
    conditions = [routing_conditions(base, plan_spec) if base is not None else {} for base in bases]
    if check is not None:
        check([run for variants in conditions for variant in variants.values()
               for run in simulated_runs(variant, plan_spec.max_micro_batches)])
    evaluated = []
    for i, ((s, policy, cf, redundant), base, variants) in enumerate(zip(jobs, bases, conditions)):
        if base is not None:
            predictions = {name: predict(variant, plan_spec.max_micro_batches) for name, variant in variants.items()}
            evaluated.append(Evaluated(s, policy, cf, redundant, base, predictions,
                                       score(predictions, plan_spec.rank_by), explain(base, predictions)))
        if progress is not None:
            progress("simulate", i + 1, len(jobs))
    evaluated = _with_recovery(evaluated)
    evaluated.sort(key=lambda e: e.score_s)
    return PlanResult(plan_spec, screened, evaluated, t1 - t0, time.perf_counter() - t1)


def _with_recovery(evaluated: list[Evaluated]) -> list[Evaluated]:
    """Each choice's explanation gains, for its layout, which placement and capacity recovered the skew best
    against static placement and the first capacity tried (when more than one was tried)."""
    groups: dict[int, list[Evaluated]] = {}
    for e in evaluated:
        groups.setdefault(id(e.screened), []).append(e)
    out = []
    for e in evaluated:
        group = groups[id(e.screened)]
        if len(group) < 2:
            out.append(e)
            continue
        base = group[0]
        best = min(group, key=lambda x: x.score_s)
        line = ("no placement or capacity tried beats " + _label(base) if best is base else
                f"best placement and capacity for this layout: {_label(best)} "
                f"({100 * (best.score_s / base.score_s - 1):+.1f} % against {_label(base)})")
        out.append(dataclasses.replace(e, explanation=(*e.explanation, line)))
    return out


def _label(e: Evaluated) -> str:
    placement = e.placement.value + (f" +{e.redundant_experts} redundant" if e.redundant_experts else "")
    return placement + (", dropless" if e.capacity_factor is None else f", CF {e.capacity_factor:g}")


def _variant_or_none(original: Scenario, sc: Scenario, policy: PlacementPolicyKind, cf: float | None,
                     redundant: int, steps: int) -> Scenario | None:
    try:
        return _variant(original, sc, policy, cf, redundant, steps)
    except SpecError:
        return None  # a policy or capacity this layout cannot use


def _variant(original: Scenario, sc: Scenario, policy: PlacementPolicyKind, cf: float | None, redundant: int,
             steps: int) -> Scenario:
    """A short-listed layout with a placement policy and a capacity factor, simulated for `steps` steps. The
    scenario's own policy keeps its parameters; EPLB with `redundant` spare expert slots per EP group (rounded up to
    whole slots per GPU) rebalances every step on the last step's loads, after one warm-up step, so that the
    measured steps see it placed."""
    lay, m = sc.layout, sc.model
    warmup = 0
    if policy is original.placement.policy and not redundant:
        placement = original.placement
    elif policy is PlacementPolicyKind.EPLB:
        slots = m.num_experts // lay.ep + -(-redundant // lay.ep)
        params = EplbParams(redundant_experts=slots * lay.ep - m.num_experts, period_steps=1, history_steps=1)
        placement = PlacementSpec(policy=policy, slots_per_gpu=slots if redundant else None, params=params)
        warmup = 1
    else:
        placement = PlacementSpec(policy=policy)
    gate = sc.gate.replace(capacity_factor=cf, pad_to_capacity=sc.gate.pad_to_capacity and cf is not None)
    return sc.replace(placement=placement, gate=gate,
                      simulation=sc.simulation.replace(steps=steps, warmup_steps=warmup))


def candidate_rows(result: PlanResult) -> list[dict]:
    """One row per candidate (candidates.parquet): its values, the estimate and its breakdown, memory, the reason
    it was pruned; short-listed ones add their simulated score."""
    simulated: dict[int, float] = {}
    for e in result.shortlist:
        key = id(e.screened)
        simulated[key] = min(simulated.get(key, math.inf), e.score_s)
    rows = []
    for s in result.screened:
        row = {k: s.candidate.values[k] for k in KEYS}
        for key in ("first_stage_layers", "last_stage_layers"):  # one column type: -1 for the even split
            row[key] = -1 if row[key] is None else int(row[key])
        est = s.estimate
        row["pruned_because"] = s.reason
        row["estimated_step_s"] = est.step_s if est is not None else float("nan")
        peak = est.peak_memory_bytes if est is not None else s.peak_memory_bytes
        row["peak_memory_bytes"] = peak
        row["memory_headroom_bytes"] = s.candidate.scenario.cluster.profile.gpu.hbm_bytes - peak \
            if s.candidate.scenario is not None else float("nan")
        for bucket in BUCKETS:  # every column in every file, NaN where there is no estimate
            row[f"est_{bucket}_s"] = est.breakdown_s[bucket] if est is not None else float("nan")
        row["simulated_score_s"] = simulated.get(id(s), float("nan"))
        rows.append(row)
    return rows


def winner_document(doc: dict, winner: Evaluated) -> dict:
    """The user's scenario file with the winner's choices written in: `moesim run plan.yaml` reproduces it."""
    out = copy.deepcopy(dict(doc))
    out.pop("plan", None)
    values = winner.screened.candidate.values
    layout = {k: values[k] for k in ("tp", "cp", "pp", "vpp", "dp", "ep", "etp")}
    for key in ("first_stage_layers", "last_stage_layers"):
        if values[key] is not None:
            layout[key] = values[key]
    if winner.scenario.layout.order.value != "tp-cp-ep-dp-pp":
        layout["order"] = winner.scenario.layout.order.value
    out["layout"] = layout
    training = dict(out.get("training", {}))
    tr = winner.scenario.training
    training.update(micro_batch_size=tr.micro_batch_size, recompute=tr.recompute.value)
    if tr.recompute.value == "selective":
        training["recompute_modules"] = [m.value for m in tr.recompute_modules]
    else:
        training.pop("recompute_modules", None)
    optimizer = dict(training.get("optimizer", {}))
    optimizer["distributed"] = tr.optimizer.distributed
    training["optimizer"] = optimizer
    out["training"] = training
    c = winner.scenario.comm
    out["comm"] = {**dict(out.get("comm", {})), "dispatcher": c.dispatcher.value,
                   "moe_a2a_overlap": c.moe_a2a_overlap, "tp_comm_overlap": c.tp_comm_overlap,
                   "overlap_param_gather": c.overlap_param_gather, "shared_expert_overlap": c.shared_expert_overlap}
    g = winner.scenario.gate
    out["gate"] = {**dict(out.get("gate", {})), "capacity_factor": g.capacity_factor,
                   "pad_to_capacity": g.pad_to_capacity}
    pl = winner.scenario.placement
    original = doc.get("placement") if isinstance(doc.get("placement"), dict) else {}
    if original.get("policy", "static") == pl.policy.value and not winner.redundant_experts:
        out["placement"] = dict(original)  # the scenario's own policy, as written
    else:
        placement: dict = {"policy": pl.policy.value}
        if pl.slots_per_gpu is not None:
            placement["slots_per_gpu"] = pl.slots_per_gpu
        if pl.policy is PlacementPolicyKind.EPLB:
            placement["eplb"] = {"redundant_experts": pl.params.redundant_experts, "period_steps": 1,
                                 "history_steps": 1}
        out["placement"] = placement
    return out
