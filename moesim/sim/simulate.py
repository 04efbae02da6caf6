"""Simulate a scenario for warm-up + measured steps. Seeds: one SeedSequence(simulation.seed) spawns a
generator per component, so the same seed gives byte-identical records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.cost.memory import peak_memory_per_rank, rank_memory
from moesim.network import FlowNetwork, build_network
from moesim.network.model import CollectiveModel
from moesim.routing.generators import SyntheticRouter
from moesim.routing.replay import replay_loads
from moesim.sim.engine import StepContext, simulate_step
from moesim.sim.placement_driver import PlacementDriver
from moesim.sim.records import RecordLog
from moesim.sim.workload import MoeLayerWork, moe_layer_work, static_work
from moesim.spec.scenario import Scenario
from moesim.spec.simulation import RecordDetail


LAYER_STAT_COLUMNS = ("expert_max_over_mean", "gpu_max_over_mean", "dropped_fraction", "dropped_first_fraction",
                      "padding_fraction", "unrouted_fraction", "a2a_bytes", "a2a_nvlink_bytes", "a2a_nic_bytes",
                      "a2a_spine_bytes")
TIERS = ("nvlink", "nic", "spine")  # moesim.network.topology link_tier 0, 1, 2


@dataclass(frozen=True)
class LinkUsage:
    """All-to-all bytes per link of the topology (dispatch + combine, forward + backward), per step."""

    link_tier: np.ndarray  # [links] index into TIERS
    capacity_bytes_per_s: np.ndarray  # [links]
    bytes_per_step: np.ndarray  # [warmup + steps, links]


@dataclass(frozen=True)
class SimResult:
    scenario: Scenario
    records: pd.DataFrame  # one row per (step, rank, op); times relative to the step start
    step_times_s: np.ndarray  # [warmup + steps]
    layer_stats: pd.DataFrame  # step, layer, micro_batch and LAYER_STAT_COLUMNS
    peak_memory_bytes: np.ndarray  # [world]
    peak_memory_breakdown_bytes: dict[str, float]  # the busiest rank's peak by kind (cost.memory.MemoryBreakdown)
    links: LinkUsage
    a2a_matrices: np.ndarray  # [moe layers, ep, ep] dispatch bytes of each layer's first EP group, mean per
    # micro-batch over the measured steps
    moe_layers: tuple[int, ...]
    placement_events: pd.DataFrame  # one row per placement change (moesim.sim.placement_driver.EVENT_COLUMNS)

    @property
    def measured_steps(self) -> np.ndarray:
        return np.arange(self.scenario.simulation.warmup_steps, len(self.step_times_s))


def _rngs(sc: Scenario) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """(routing, gate, process start order)."""
    root = np.random.SeedSequence(sc.simulation.seed)
    routing_seq, gate_seq, order_seq = root.spawn(3)
    if sc.routing.seed is not None:  # an explicit routing seed decouples routing from the master seed
        routing_seq = np.random.SeedSequence(sc.routing.seed)
    return tuple(np.random.default_rng(s) for s in (routing_seq, gate_seq, order_seq))


class _Loads:
    """This step's router demand [M, moe_layers, q, E]: synthetic or replayed from a trace."""

    def __init__(self, sc: Scenario, num_moe_layers: int, rng: np.random.Generator):
        self.sc, self.rng, self.num_layers = sc, rng, num_moe_layers
        m = sc.model
        self.router = None if sc.routing.trace is not None else \
            SyntheticRouter(sc.routing, num_moe_layers, m.num_experts, m.top_k, rng, sc.simulation.routing_draws)

    def step(self, step: int) -> np.ndarray:
        sc = self.sc
        if self.router is not None:
            return self.router.next_step(sc.num_micro_batches, sc.layout.ranks_per_stage, sc.tokens_routed_per_rank)
        return replay_loads(sc.routing.trace, step, sc.num_micro_batches, self.num_layers, sc.layout.ranks_per_stage,
                            sc.model.num_experts, sc.tokens_routed_per_rank * sc.model.top_k, self.rng)


Progress = Callable[[int, int], None]  # (steps done, steps total), called after each simulated step


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer of one step as the simulator routed it: what `moesim execute` replays with real tokens."""

    step: int
    layer: int
    loads: np.ndarray  # [M, q, E] assignments each local rank's router asked for (after the placement driver)
    sent: np.ndarray  # [M, q, E] rows each local rank sends each expert (MoeLayerWork.sent_per_expert)
    computed: np.ndarray  # [M, edp * etp, E] rows each expert computes per EP group
    placement: object  # moesim.placement.base.Placement of the layer this step (None: contiguous)


def simulate(sc: Scenario, network: CollectiveModel | None = None, shuffle_start_order: bool = False,
             progress: Progress | None = None, records: RecordDetail | None = None,
             routing_log: list[LayerRouting] | None = None) -> SimResult:
    """`network` overrides the model the scenario's `network:` section asks for (tests pass their own);
    `records` what is kept of every op, instead of simulation.records (sweeps keep the per-rank sums only).
    `progress(steps_done, steps_total)` is called after each step, warm-up included (the CLI shows a rate and
    an ETA from it); moesim.sim.estimate.estimate_cost says what the run will cost before it starts.
    `routing_log`, when given, receives every (step, MoE layer)'s routing (LayerRouting), in order."""
    net = network or build_network(sc.cluster, sc.network)
    links = net if isinstance(net, FlowNetwork) else FlowNetwork(sc.cluster, sc.network)
    lay, m = sc.layout, sc.model
    routing_rng, gate_rng, order_rng = _rngs(sc)
    moe_layers = [i for i in range(m.num_layers) if m.is_moe_layer(i)]
    demand = _Loads(sc, len(moe_layers), routing_rng)
    static = static_work(sc, net)
    log = RecordLog(records if records is not None else sc.simulation.records)
    total = sc.simulation.warmup_steps + sc.simulation.steps
    step_times = np.zeros(total)
    stats: list[pd.DataFrame] = []
    # per rank: sum over its stage's MoE layers of the worst micro-batch's expert rows (for the memory model)
    worst_rows = np.zeros((total, lay.world_size))
    link_bytes = np.zeros((total, links.num_links))
    matrices = np.zeros((len(moe_layers), lay.ep, lay.ep))
    driver = PlacementDriver(sc, moe_layers)
    for step in range(total):
        loads, placements, placement_work = driver.step(step, demand.step(step))  # [M, moe_layers, q, E]
        work: dict[int, MoeLayerWork] = {}
        for i, layer in enumerate(moe_layers):
            stage = sc.stage_of_layer(layer)
            w = work[layer] = moe_layer_work(sc, net, links, loads[:, i], stage, gate_rng, placements[layer])
            if routing_log is not None:
                routing_log.append(LayerRouting(step, layer, loads[:, i], w.sent_per_expert, w.computed_per_expert,
                                                placements[layer]))
            ranks = lay.stage_ranks(stage)
            worst_rows[step, ranks] += w.expert_rows.max(axis=0)
            link_bytes[step] += 2.0 * w.link_bytes  # the backward pass moves the same bytes again
            if step >= sc.simulation.warmup_steps:
                matrices[i] += w.a2a_matrix / sc.simulation.steps
            tiers = {f"a2a_{t}_bytes": w.a2a_tier_bytes[:, j] for j, t in enumerate(TIERS)}
            stats.append(pd.DataFrame({"step": step, "layer": layer, "micro_batch": np.arange(sc.num_micro_batches),
                                       **{k: getattr(w, k) for k in LAYER_STAT_COLUMNS[:7]}, **tiers}))
        order = order_rng.permutation(lay.pp) if shuffle_start_order else None
        step_times[step] = simulate_step(StepContext(sc, static, work, step, log,
                                                     placement_work if driver.active else None), order)
        if progress is not None:
            progress(step + 1, total)
    # The log is in canonical order (by step and rank, each rank's records in program order): the order SimPy
    # interleaves the stages' processes in is invisible, so summaries and files are byte-identical for any order.
    records = log.to_frame()
    moe_per_stage = np.bincount([sc.stage_of_layer(layer) for layer in moe_layers], minlength=lay.pp)
    rows_per_layer = worst_rows.max(axis=0) / np.maximum(np.repeat(moe_per_stage, lay.ranks_per_stage), 1)
    usage = LinkUsage(links.topology.link_tier, links.topology.link_capacity_bytes_per_s, link_bytes)
    peak = peak_memory_per_rank(sc, rows_per_layer)
    busiest = int(peak.argmax())
    breakdown = rank_memory(sc, busiest, float(rows_per_layer[busiest])).as_dict()
    return SimResult(sc, records, step_times, pd.concat(stats, ignore_index=True), peak, breakdown, usage,
                     matrices, tuple(moe_layers), driver.events_frame())
