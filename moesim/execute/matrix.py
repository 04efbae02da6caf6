"""`moesim accuracy --execute`: executed vs simulated step time over a small matrix, on the machine at hand.

Expert-parallel degree x routing imbalance (balanced, aux-loss, collapse) x two shapes of a base plan (the
quickstart's Mixtral-like model by default), each scaled to this machine as one pipeline stage of data and expert
parallelism, executed for real and simulated on a
profile calibrated on the same machine (cpu-gloo-2c on this project's CI machine class). Every case runs the
routing the simulator drew for it (same seed), so the two sides differ only by the cost model and the profile -
and by the machine's own noise, which the passes (every case executed again, the matrix in alternating order)
show as each case's spread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from moesim.execute.command import comparison_of
from moesim.execute.compare import error_pct
from moesim.execute.run import execute
from moesim.execute.scale import ScaleLimits, scale_plan
from moesim.sim.simulate import simulate
from moesim.spec.dtype import Dtype
from moesim.spec.hardware import ClusterProfile
from moesim.spec.layout import ParallelLayout
from moesim.spec.routing import RoutingSpec
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.scenario import Scenario

ROUTINGS = {"balanced": "balanced", "aux-loss": "aux-loss", "collapse": "no-aux-collapse"}  # column -> preset
SHAPES = {  # two shapes: attention-heavy narrow experts, and wider experts (more of the step in the MoE block)
    "h128-f256-s128": ScaleLimits(hidden_size=128, head_dim=32, ffn_size=256, seq_len=128, num_layers=2,
                                  num_experts=8, vocab_size=1024, num_micro_batches=2),
    "h256-f768-s256": ScaleLimits(hidden_size=256, head_dim=64, ffn_size=768, seq_len=256, num_layers=2,
                                  num_experts=8, vocab_size=1024, num_micro_batches=2),
}


@dataclass(frozen=True)
class Case:
    ep: int
    routing: str
    shape: str
    ranks: int
    predicted_s: float  # median step time over the measured steps
    measured_s: float  # the median over the passes of each pass's median step time
    error_pct: float
    expert_max_over_mean: float  # the routing's imbalance as the simulator drew it
    phases: dict  # phase -> (predicted_s, measured_s: median over the passes)
    measured_passes_s: tuple[float, ...] = ()  # each pass's median step time, in the order they ran

    @property
    def spread_pct(self) -> float:
        """How far apart the passes' measurements of this same case lie: (max - min) / median, in %."""
        runs = self.measured_passes_s or (self.measured_s,)
        return 100.0 * (max(runs) - min(runs)) / self.measured_s


def ep_degrees(nproc: int, num_experts: int) -> list[int]:
    """Every expert-parallel degree that divides both the ranks and the experts: 1 (no all-to-all) up to nproc."""
    return [d for d in range(1, nproc + 1) if nproc % d == 0 and num_experts % d == 0]


def run_matrix(base: Scenario, nproc: int, profile: ClusterProfile, steps: int, threads: int, timeout_s: float,
               progress: Callable[[int, int], None] | None = None, passes: int = 1) -> list[Case]:
    """Every case simulated once and executed `passes` times, the passes running the matrix in alternating order
    (so that a machine drifting over the minutes of a run shows as spread, not as a trend along the table)."""
    keys = [(ep, r, s) for s in SHAPES for r in ROUTINGS for ep in ep_degrees(nproc, SHAPES[s].num_experts)]
    prepared = {}
    for key in keys:
        ep, routing, shape = key
        preset = ROUTINGS[routing]
        sc = base.replace(routing=RoutingSpec(**ROUTING_PRESETS[preset], preset=preset))
        scaled = scale_plan(sc, nproc, profile, Dtype.FP32, steps, SHAPES[shape]).scenario
        # one stage: the matrix varies the expert-parallel degree over all the ranks
        scaled = scaled.replace(layout=ParallelLayout(dp=nproc, ep=ep), training=scaled.training.replace(
            global_batch_size=nproc * SHAPES[shape].num_micro_batches))
        log: list = []
        prepared[key] = (scaled, simulate(scaled, routing_log=log), log)
    runs: dict = {key: [] for key in keys}
    done = 0
    for p in range(passes):
        for key in (keys if p % 2 == 0 else keys[::-1]):
            scaled, predicted, log = prepared[key]
            runs[key].append(comparison_of(execute(scaled, log, "gloo", threads, timeout_s), predicted))
            done += 1
            if progress is not None:
                progress(done, len(keys) * passes)
    return [_case(key, nproc, prepared[key][1], runs[key]) for key in keys]


def _case(key: tuple, nproc: int, predicted, comparisons: list) -> Case:
    ep, routing, shape = key
    stats = predicted.layer_stats
    imbalance = float(stats[stats["step"].isin(predicted.measured_steps)]["expert_max_over_mean"].mean())
    measured = float(np.median([c.step_measured_s for c in comparisons]))
    predicted_s = comparisons[0].step_predicted_s
    phases, last_pass = {}, ""
    for row_index, row in enumerate(comparisons[0].table.itertuples()):
        name = row.phase.strip()
        if name.startswith("of which"):  # "  of which experts" under each pass's compute: name its pass
            name = f"{last_pass} {name.removeprefix('of which ')}"
        last_pass = name.split()[0]
        phases[name] = (row.predicted_s,
                        float(np.median([c.table.iloc[row_index]["measured_s"] for c in comparisons])))
    return Case(ep, routing, shape, nproc, predicted_s, measured, error_pct(predicted_s, measured), imbalance, phases,
                tuple(c.step_measured_s for c in comparisons))


def mape(cases: list[Case]) -> float:
    return float(np.mean([abs(c.error_pct) for c in cases]))


def markdown(cases: list[Case], header: str, profile: str) -> str:
    spreads = [c.spread_pct for c in cases]
    passes = max(len(c.measured_passes_s) for c in cases)
    lines = [
        "# Executed vs simulated: `moesim accuracy --execute`", "", header, "",
        f"Each row is one plan executed for real (`moesim execute`: gloo ranks, the simulator's routing replayed with "
        f"the same seed) and simulated on the profile `{profile}`. Step time is the median over the measured "
        "steps; error = (predicted - measured) / measured. Expert max/mean is the routing's imbalance as drawn.", "",
        f"**Mean absolute percentage error of the step time: {mape(cases):.1f} %** over {len(cases)} cases "
        f"(goal on this machine class: <= 10 %).", "",
        f"The measurement's own repeatability: each case ran {passes} time(s), the passes in alternating order; "
        f"spread = (slowest - fastest) / median of a case's passes: median {np.median(spreads):.1f} %, "
        f"largest {max(spreads):.1f} %. An error smaller than the spread is not resolved.", "",
        "| shape | routing | ep | expert max/mean | predicted ms | measured ms | spread | error "
        "| all-to-all pred / meas ms | compute pred / meas ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        a2a = [sum(c.phases[f"{d} {k}"][i] for d in ("forward", "backward") for k in ("dispatch", "combine"))
               for i in (0, 1)]
        comp = [sum(c.phases[f"{d} compute"][i] for d in ("forward", "backward")) for i in (0, 1)]
        lines.append(f"| {c.shape} | {c.routing} | {c.ep} | {c.expert_max_over_mean:.2f} | {c.predicted_s * 1e3:.1f} "
                     f"| {c.measured_s * 1e3:.1f} | {c.spread_pct:.1f} % | {c.error_pct:+.1f} % "
                     f"| {a2a[0] * 1e3:.1f} / {a2a[1] * 1e3:.1f} "
                     f"| {comp[0] * 1e3:.1f} / {comp[1] * 1e3:.1f} |")
    lines += ["", "Shapes (hidden-ffn-sequence): " + "; ".join(
        f"{name}: {s.num_layers} layers, {s.num_experts} experts, head_dim {s.head_dim}, vocabulary {s.vocab_size}, "
        f"{s.num_micro_batches} micro-batches" for name, s in SHAPES.items()), ""]
    return "\n".join(lines)


def as_json(cases: list[Case], header: str, profile: str) -> str:
    return json.dumps({"header": header, "profile": profile, "mape_pct": mape(cases),
                       "cases": [{**asdict(c), "spread_pct": c.spread_pct} for c in cases]}, indent=2) + "\n"


def default_nproc() -> int:
    """Ranks of the matrix: one per core, at most 4 (ranks sharing a core measure each other's compute)."""
    return max(1, min(4, os.cpu_count() or 1))
