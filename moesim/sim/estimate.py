"""What a simulation will cost, known before it is spent: SimPy events, record rows, array sizes, peak memory
and wall time of `simulate()` + `summarize()`, from the scenario alone (arithmetic only, well under 1 ms).

The counts mirror the engine (moesim/sim/engine.py) op by op; the few that depend on the run (pipeline waits,
placement moves, end-of-step idling) use the bounds or typical values noted where they are counted, so
events and record rows come out within a few percent (summed records, simulation.records per_rank | summary,
within about 10 %: which stages idle at the end of a step is known only after it). Bytes and seconds multiply
the counts by the constants below, measured with benchmarks/bench_memory.py and per-phase timings on a 2-core
x86_64 VM (Python 3.11, numpy 2.4, pandas 3.1, simpy 4.1, no GPU); other machines differ by their single-core
speed. Re-measure them
when the engine, the record log or metrics.summarize change (bench_memory.py prints estimate / measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.sim.records import BUFFER_BYTES_PER_RECORD, RECORD_BYTES
from moesim.spec.errors import SpecError
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.scenario import Scenario
from moesim.spec.simulation import RecordDetail, RoutingDraws

MIB = 2**20

# --- memory (bytes) ---
# RSS of a fresh interpreter after importing moesim (numpy, pandas, simpy, pydantic) and loading a scenario:
# 119 MiB for every shipped scenario without a trace.
BASELINE_RSS_BYTES = 119 * MIB
# Loading a routing trace peaks at about twice its counts (npz decompression + validation), then holds them.
TRACE_LOAD_PEAK_PER_BYTE = 2.2
# Static work, network model, placement driver, lazily imported modules: quickstart at 32 sequences peaks
# 26 MiB above the baseline, 10 MiB of which are its records.
SIM_FIXED_BYTES = 16 * MIB
# One op of one stage while its step runs: the block's tuple and its vectors' headers; per record: its start
# and end (and, for collectives, wait/bytes/rows) values; per record of the stage being flushed: the float64
# columns before their typed copy.
BUFFER_BYTES_PER_OP = 600
FLUSH_BYTES_PER_RECORD = 150
# Synthetic routing per (micro-batch, MoE layer, source rank, expert) element of one step: the int32 loads and
# the previous step's, still referenced; the draws' int64 temporaries are one micro-batch large.
ROUTING_BYTES_PER_ELEMENT = 8
ROUTING_SIGMA_BYTES_PER_ELEMENT = 64  # source_sigma > 0 adds float64 normal draws and capped-share temporaries
# moe_layer_work temporaries per [M, q, E] element of one layer (gate, split, per-rank rows; deepseek: 3.9 MiB).
LAYER_WORK_BYTES_PER_ELEMENT = 32
# metrics.summarize per measured record: the breakdown groups integer op codes under a mask of the records
# (masked columns and group keys; measured with the quickstart at 32-4,096 sequences). The former pivot table
# over a string column took 340 bytes and 0.9 us a record.
SUMMARIZE_BYTES_PER_ROW = 70
SUMMARIZE_FIXED_BYTES = 10 * MIB
LAYER_STATS_BYTES_PER_ROW = 13 * 8  # one float64/int64 per column per (step, layer, micro-batch)
LAYER_STATS_BYTES_PER_FRAME = 8_000  # one small DataFrame per (step, MoE layer) until the final concat

# --- time (seconds), single core ---
# The engine (sim/engine.py), fitted over quickstart (64 and 1,024 sequences) and the DeepSeek-V3-like scenario
# of benchmarks/bench_scale.py (256-2,048 GPUs), one thread: per op of a stage (a numpy block over its ranks),
# per SimPy event (pipeline messages), per record (blocks flushed to columns, then the frame), and per record
# summed at the flush when records are summed.
ENGINE_S_PER_OP = 8.5e-6
ENGINE_S_PER_SUMMED_RECORD = 0.35e-6  # summing a step's records at its flush (quickstart, 1,024 sequences)
ENGINE_S_PER_EVENT = 5e-6
ENGINE_S_PER_ROW = 0.16e-6
ROUTING_S_PER_ELEMENT = 85e-9  # numpy multinomial (2,048 GPUs: 5.3 s per step for 64 M elements)
ROUTING_NORMAL_S_PER_ELEMENT = 34e-9  # simulation.routing_draws: normal (the same step: 2.2 s)
TRACE_S_PER_ELEMENT = 10e-9  # trace replay: gather + rescale
# moe_layer_work per (step, MoE layer): a fixed part (gate, network model, stats frame), per micro-batch
# (all-to-all per micro-batch), per [M, q, E] element (quickstart 32 -> 1,024 sequences: 0.7 -> 4.2 ms) and per
# all-to-all matrix element [M, EP groups, ep, ep] (the link model; 2,048 GPUs, ep 128: 38 ms per layer).
LAYER_WORK_S_PER_CALL = 0.7e-3
LAYER_WORK_S_PER_MICRO_BATCH = 14e-6
LAYER_WORK_S_PER_ELEMENT = 12e-9
LAYER_WORK_S_PER_MATRIX_ELEMENT = 45e-9
SUMMARIZE_S_PER_ROW = 0.2e-6  # metrics.summarize per measured record (masked group sums)
FIXED_S = 0.1  # network model, static work, result assembly

# --- writing a run's files (report.run_dir), on top of the summarize peak: the Perfetto trace of one step is
# built as one Python dict per event before it is serialised, records.parquet converts the records to Arrow.
# Quickstart at 256 and 1,024 sequences, 3 steps: +268 / +894 MB and +1.9 / +6.4 s over --no-files.
TRACE_MAX_RANKS = 64  # trace.json shows at most this many ranks (export.perfetto's default)
WRITE_BYTES_PER_TRACE_EVENT = 950
WRITE_BYTES_PER_RECORD = 60
WRITE_S_PER_TRACE_EVENT = 7.2e-6
WRITE_S_PER_RECORD = 0.3e-6


@dataclass(frozen=True)
class CostEstimate:
    """Counts are exact or within a few percent; bytes and seconds within ~2x on the machine the constants
    come from (see the module docstring). Bytes are resident memory of the whole process."""

    steps: int  # warm-up + measured
    events: int  # SimPy events processed, all steps
    record_rows: int  # rows of SimResult.records
    measured_record_rows: int  # of which in measured steps (what summarize reads)
    routing_elements_per_step: int  # loads [micro-batches, MoE layers, ranks per stage, experts]
    record_bytes: int  # SimResult.records
    simulate_peak_bytes: int  # above the baseline, during simulate()
    summarize_peak_bytes: int  # above the baseline, during summarize() (records included)
    baseline_memory_bytes: int  # interpreter, imports, scenario (and its trace) before simulate()
    peak_memory_bytes: int  # process peak RSS
    simulate_s: float
    summarize_s: float
    write_bytes: int  # above the summarize peak, while the run's files are written (0 without files)
    write_s: float
    wall_s: float  # simulate() + summarize() (+ writing the files)

    def describe(self) -> str:
        return (f"~{_si(self.events)} SimPy events, {_si(self.record_rows)} records "
                f"({self.record_bytes / MIB:,.0f} MiB), peak memory ~{_mib(self.peak_memory_bytes)}, "
                f"~{_duration(self.wall_s)} for {self.steps} steps")


def estimate_cost(sc: Scenario, write_files: bool = False) -> CostEstimate:
    """The cost of `summarize(simulate(sc))` from the scenario alone; with `write_files`, also of writing the
    run's files (`moesim run` without --no-files)."""
    steps = sc.simulation.warmup_steps + sc.simulation.steps
    rows_per_step, events_per_step, ops = records_per_step(sc), events_per_step_count(sc), ops_per_step(sc)
    rows, measured = rows_per_step * steps, rows_per_step * sc.simulation.steps
    elements = routing_elements_per_step(sc)
    record_bytes = int(rows * RECORD_BYTES)
    full = sc.simulation.records is RecordDetail.FULL
    # one step's blocks, then one stage's columns at a time (float64 before the typed copy) while flushed
    # (summed records are summed at the flush, from the same blocks)
    per_op_records = ops * sc.layout.ranks_per_stage
    step_bytes = ops * BUFFER_BYTES_PER_OP + per_op_records * (BUFFER_BYTES_PER_RECORD
                                                               + FLUSH_BYTES_PER_RECORD / sc.layout.pp)
    sim_peak = int(SIM_FIXED_BYTES + record_bytes + step_bytes + _routing_bytes(sc, elements) + _layer_bytes(sc, steps))
    summarize_peak = int(sim_peak + measured * SUMMARIZE_BYTES_PER_ROW + SUMMARIZE_FIXED_BYTES)
    trace_bytes = sc.routing.trace.counts.nbytes if sc.routing.trace is not None else 0
    baseline = BASELINE_RSS_BYTES + trace_bytes
    peak = max(BASELINE_RSS_BYTES + int(TRACE_LOAD_PEAK_PER_BYTE * trace_bytes), baseline + summarize_peak)
    summing_s = 0.0 if full else per_op_records * ENGINE_S_PER_SUMMED_RECORD
    engine_s = steps * (ops * ENGINE_S_PER_OP + events_per_step * ENGINE_S_PER_EVENT + summing_s) \
        + rows * ENGINE_S_PER_ROW
    simulate_s = FIXED_S + engine_s + _workload_s(sc, steps, elements)
    summarize_s = measured * SUMMARIZE_S_PER_ROW
    write_bytes, write_s = _write_cost(sc, rows_per_step, rows) if write_files else (0, 0.0)
    return CostEstimate(steps, events_per_step * steps, rows, measured, elements, record_bytes, sim_peak,
                        summarize_peak, baseline, peak + write_bytes, simulate_s, summarize_s, write_bytes,
                        write_s, simulate_s + summarize_s + write_s)


def available_memory_bytes() -> float:
    """MemAvailable from /proc/meminfo; where that cannot be read, no memory limit."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return math.inf


def check_cost(scenarios: list[Scenario], max_wall_s: float, max_memory_GiB: float | None, write_files: bool,
               jobs: int = 1) -> None:
    """The cost guard of `moesim run` (and of the dashboard): refuse, before any work, what would take more than
    `max_wall_s` or more than `max_memory_GiB` (None: the memory available here). A sweep runs `jobs` points at
    a time: memory is the largest point's times that, time the sum over it. Raises SpecError naming the CLI flag."""
    for flag, value in (("--max-wall-s", max_wall_s), ("--max-memory-GiB", max_memory_GiB)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SpecError(flag, value, "a finite number > 0")
    if not scenarios:  # nothing to run costs nothing
        return
    estimates = [estimate_cost(sc, write_files=write_files) for sc in scenarios]
    wall_s = sum(e.wall_s for e in estimates) / jobs
    memory_bytes = max(e.peak_memory_bytes for e in estimates) * jobs
    limit_bytes = max_memory_GiB * 2**30 if max_memory_GiB is not None else available_memory_bytes()
    what = estimates[0].describe() if len(estimates) == 1 else f"{len(estimates)} points"
    if wall_s > max_wall_s:
        raise SpecError("--max-wall-s", max_wall_s,
                        f"a run estimated to fit: this one needs about {wall_s:,.0f} s ({what}); pass "
                        f"--max-wall-s {math.ceil(wall_s * 1.5)} to run it anyway, or simulate fewer steps")
    if memory_bytes > limit_bytes:
        given = max_memory_GiB if max_memory_GiB is not None else \
            f"no value: the memory available here, {limit_bytes / 2**30:.1f} GiB"
        raise SpecError("--max-memory-GiB", given,
                        f"a run estimated to fit: this one needs about {memory_bytes / 2**30:.1f} GiB ({what}); "
                        f"pass --max-memory-GiB {math.ceil(memory_bytes * 1.25 / 2**30)} to run it anyway")


def _write_cost(sc: Scenario, rows_per_step: int, rows: int) -> tuple[int, float]:
    """(bytes, seconds) of writing the files: trace.json holds one step of at most TRACE_MAX_RANKS ranks (only with
    full records); records.parquet is not written with summary records."""
    detail = sc.simulation.records
    trace_events = rows_per_step * min(1.0, TRACE_MAX_RANKS / sc.layout.world_size) \
        if detail is RecordDetail.FULL else 0.0
    rows = rows if detail is not RecordDetail.SUMMARY else 0
    return (int(trace_events * WRITE_BYTES_PER_TRACE_EVENT + rows * WRITE_BYTES_PER_RECORD),
            trace_events * WRITE_S_PER_TRACE_EVENT + rows * WRITE_S_PER_RECORD)


def _layers_per_stage(sc: Scenario) -> list[tuple[int, int]]:
    """[(layers, MoE layers)] per pipeline stage."""
    return [(len(layers), sum(sc.model.is_moe_layer(layer) for layer in layers))
            for layers in map(sc.stage_layers, range(sc.layout.pp))]


def _ops_per_stage(sc: Scenario) -> list[int]:
    """Ops one step adds per stage (each a numpy block over the stage's ranks), as engine._Stage emits them."""
    lay, mbs = sc.layout, sc.num_micro_batches
    tp_comm = 1 if lay.tp > 1 else 0
    ops = []
    for stage, (layers, moe) in enumerate(_layers_per_stage(sc)):
        # attention + router|dense FFN + memory-bound + launches (+ TP); dispatch, expert, its activations, combine
        per_pass = layers * (4 + tp_comm) + 4 * moe
        per_pass += 3 * (stage == lay.pp - 1)  # LM head, its memory-bound ops and launches
        # pipeline waits: at most one per received pass; counted in full (they are < 3 % of the rows)
        waits = mbs * (2 * lay.vpp - (stage == 0) - (stage == lay.pp - 1))  # one per received pass and chunk
        n = 2 * mbs * per_pass + waits + 3  # + dp sync dense, expert, optimizer
        n += stage < lay.pp - 1  # idle: the stages that finish before the slowest (typically all but the last)
        n += sc.placement.policy is not PlacementPolicyKind.STATIC  # a migration, shadow or replica sync op
        ops.append(n)
    return ops


def _kinds_per_rank(sc: Scenario, stage: int, layers: int, moe: int) -> int:
    """Distinct (phase, op kind) of one rank of `stage`: its rows per step when records are summed."""
    lay = sc.layout
    per_pass = 3 + (moe > 0) + (layers > moe) + (lay.tp > 1) + 3 * (moe > 0) + (stage == lay.pp - 1)
    waits = (stage > 0 or lay.vpp > 1) + (stage < lay.pp - 1 or lay.vpp > 1)
    return 2 * per_pass + waits + 3 + (stage < lay.pp - 1) + (sc.placement.policy is not PlacementPolicyKind.STATIC)


def records_per_step(sc: Scenario) -> int:
    """Rows one step appends: one per op and rank, or (simulation.records per_rank | summary) one per rank and
    (phase, op kind)."""
    q = sc.layout.ranks_per_stage
    if sc.simulation.records is not RecordDetail.FULL:
        return q * sum(_kinds_per_rank(sc, s, *lm) for s, lm in enumerate(_layers_per_stage(sc)))
    return q * sum(_ops_per_stage(sc))


def ops_per_step(sc: Scenario) -> int:
    """Blocks the engine adds in one step (one per op and stage)."""
    return sum(_ops_per_stage(sc))


def events_per_step_count(sc: Scenario) -> int:
    """SimPy events one step processes: per stage its process's start and end and a last clock advance; per
    pipeline message the sender's clock advance, the transfer's timeout and the message; the empty queue's end."""
    lay = sc.layout
    return 3 * lay.pp + 3 * 2 * (lay.pp * lay.vpp - 1) * sc.num_micro_batches + 1  # messages between virtual stages


def routing_elements_per_step(sc: Scenario) -> int:
    """Elements of one step's loads [micro-batches, MoE layers, ranks per stage, experts]."""
    return sc.num_micro_batches * sc.model.num_moe_layers * sc.layout.ranks_per_stage * sc.model.num_experts


def _layer_elements(sc: Scenario) -> int:
    return sc.num_micro_batches * sc.layout.ranks_per_stage * sc.model.num_experts


def _routing_bytes(sc: Scenario, elements: int) -> int:
    sigma = sc.routing.trace is None and sc.routing.source_sigma > 0
    return elements * (ROUTING_SIGMA_BYTES_PER_ELEMENT if sigma else ROUTING_BYTES_PER_ELEMENT)


def _layer_bytes(sc: Scenario, steps: int) -> int:
    """One layer's moe_layer_work temporaries + the layer stats of every step (held until the end)."""
    frames = steps * sc.model.num_moe_layers
    stats = frames * (sc.num_micro_batches * LAYER_STATS_BYTES_PER_ROW + LAYER_STATS_BYTES_PER_FRAME)
    return _layer_elements(sc) * LAYER_WORK_BYTES_PER_ELEMENT + stats


def _workload_s(sc: Scenario, steps: int, elements: int) -> float:
    """Routing draws and moe_layer_work, per step and MoE layer (numpy)."""
    if sc.routing.trace is not None:
        per_element = TRACE_S_PER_ELEMENT
    elif sc.simulation.routing_draws is RoutingDraws.NORMAL:
        per_element = ROUTING_NORMAL_S_PER_ELEMENT
    else:
        per_element = ROUTING_S_PER_ELEMENT
    lay = sc.layout
    matrix = sc.num_micro_batches * lay.edp * lay.etp * lay.ep * lay.ep
    per_call = (LAYER_WORK_S_PER_CALL + sc.num_micro_batches * LAYER_WORK_S_PER_MICRO_BATCH
                + _layer_elements(sc) * LAYER_WORK_S_PER_ELEMENT + matrix * LAYER_WORK_S_PER_MATRIX_ELEMENT)
    return steps * (elements * per_element + sc.model.num_moe_layers * per_call)


def _si(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f}"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / MIB:.0f} MiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"
