"""Summaries of a simulation: step-time distribution, breakdown, MFU, memory, routing imbalance."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from moesim.cost.compute import model_flop_per_token, routed_expert_flop_per_token
from moesim.metrics.errors import ResultError
from moesim.metrics.types import (LayerSummary, LayoutDegrees, LinkUtilisation, NetworkSummary, PlacementSummary,
                                  ProfileRef, Provenance, RunSummary)
from moesim.sim.records import BREAKDOWN_BUCKETS, BREAKDOWN_OF
from moesim.sim.simulate import LAYER_STAT_COLUMNS, TIERS, SimResult

_BUCKET_OF_OP = {op.value: bucket for op, bucket in BREAKDOWN_OF.items()}


def per_rank_breakdown(result: SimResult) -> pd.DataFrame:
    """[rank x bucket] seconds per measured step, averaged over measured steps. Rows add up to each rank's
    mean step time. The waiting part of collectives is its own bucket, `straggler_wait`."""
    return records_breakdown(result.records, result.measured_steps, result.scenario.layout.world_size)


def records_breakdown(records: pd.DataFrame, measured_steps, world_size: int) -> pd.DataFrame:
    """per_rank_breakdown of any records (simulated, or measured by `moesim execute`).
    Groups integer codes under a mask of the records (no string column, no filtered copy of the frame); each
    (rank, bucket) sums the same values in the same order as the former pivot table: identical numbers."""
    rec = records
    measured = rec["step"].isin(measured_steps).to_numpy()
    op = rec["op"].array  # Categorical
    bucket_of_code = np.array([BREAKDOWN_BUCKETS.index(_BUCKET_OF_OP[o]) for o in op.categories], dtype=np.int8)
    rank = rec["rank"].to_numpy()[measured]
    wait = rec["wait_s"].to_numpy()[measured]
    busy = rec["end_s"].to_numpy()[measured] - rec["start_s"].to_numpy()[measured] - wait
    by_op = pd.Series(busy).groupby([rank, bucket_of_code[op.codes[measured]]]).sum()
    straggler = np.full(len(rank), BREAKDOWN_BUCKETS.index("straggler_wait"), np.int8)
    by_wait = pd.Series(wait).groupby([rank, straggler]).sum()
    table = pd.concat([by_op, by_wait]).unstack(fill_value=0.0)
    table.columns = [BREAKDOWN_BUCKETS[c] for c in table.columns]
    table = table.reindex(index=range(world_size), columns=list(BREAKDOWN_BUCKETS), fill_value=0.0)
    table.index.name, table.columns.name = "rank", "bucket"
    return table / len(measured_steps)


def hidden_breakdown(result: SimResult) -> dict[str, float]:
    """bucket -> seconds per measured step of communication that overlapped compute (records' hidden_s), mean
    over ranks; every bucket present, zeros where nothing overlaps."""
    rec = result.records
    measured = rec["step"].isin(result.measured_steps).to_numpy()
    hidden = rec["hidden_s"].to_numpy()[measured]
    buckets = np.array([BREAKDOWN_BUCKETS.index(_BUCKET_OF_OP[o]) for o in rec["op"].array.categories])
    codes = buckets[rec["op"].array.codes[measured]]
    per_bucket = np.bincount(codes, hidden, minlength=len(BREAKDOWN_BUCKETS))
    scale = len(result.measured_steps) * result.scenario.layout.world_size
    return {b: float(per_bucket[i] / scale) for i, b in enumerate(BREAKDOWN_BUCKETS)}


def _a2a_bytes_per_step(result: SimResult) -> float:
    """Dispatch + combine bytes per measured step, summed over a mask (no filtered copy of the records)."""
    rec = result.records
    mask = (rec["op"].isin(["dispatch", "combine"]) & rec["step"].isin(result.measured_steps)).to_numpy()
    return float(pd.Series(rec["bytes"].to_numpy()[mask]).sum() / len(result.measured_steps))


def network_usage(result: SimResult) -> NetworkSummary:
    """All-to-all traffic per tier and per-link utilisation (bytes / (capacity x step time)) over measured
    steps. Only the MoE all-to-alls are counted, not TP, DP or pipeline traffic."""
    sc, lk = result.scenario, result.links
    steps = result.measured_steps
    per_step = lk.bytes_per_step[steps]  # [steps, links]
    util = per_step / (lk.capacity_bytes_per_s * result.step_times_s[steps, None])
    bytes_per_step, utilisation = {}, {}
    for t, name in enumerate(TIERS):
        on = lk.link_tier == t
        bytes_per_step[name] = float(per_step[:, on].sum(-1).mean() / 2.0)  # egress + ingress
        u = util[:, on]
        utilisation[name] = LinkUtilisation(mean=float(u.mean()) if u.size else 0.0,
                                            max=float(u.max(-1).mean()) if u.size else 0.0)
    return NetworkSummary(model=sc.network.model.value, solver=sc.network.solver.value,
                          cross_rail=sc.network.cross_rail.value, all_to_all=sc.network.all_to_all.value,
                          all_reduce=sc.network.all_reduce.value, a2a_bytes_per_step=bytes_per_step,
                          a2a_link_utilisation=utilisation)


def balance_ratio_per_step(result: SimResult) -> pd.Series:
    """The GPU balance ratio (busiest GPU's expert rows / mean within its EP group, the worst group) of each
    measured step, averaged over MoE layers and micro-batches; indexed by step."""
    stats = result.layer_stats
    return stats[stats["step"].isin(result.measured_steps)].groupby("step")["gpu_max_over_mean"].mean()


def placement_summary(result: SimResult) -> PlacementSummary:
    sc, ev = result.scenario, result.placement_events
    per_step = balance_ratio_per_step(result)
    return PlacementSummary(
        policy=sc.placement.policy.value, slots_per_gpu=sc.placement.slots_per_gpu,
        migration=sc.placement.migration.value, changes=int(len(ev)), moved_slots=int(ev["moved_slots"].sum()),
        migration_bytes=float(ev["migration_bytes"].sum()), migration_s=float(ev["migration_s"].sum()),
        balance_ratio_mean=float(per_step.mean()), balance_ratio_p95=float(np.percentile(per_step, 95)))


def summarize(result: SimResult) -> RunSummary:
    """Every number is finite; a NaN or inf raises ResultError naming the field (its key path in
    summary.json) and the inputs behind it."""
    summary = _summary(result)
    check_finite(summary.to_dict())
    return summary


_INPUTS_OF = {  # summary field prefix -> the inputs that produce it, for the error message
    "step_time": "the profile's peaks, efficiencies and bandwidths (cluster.profile) and the model sizes",
    "tokens_per_s": "the step time (cluster.profile) and training.global_batch_size x training.seq_len",
    "mfu": "the GPU peak for training.dtype (gpu.peak_dense_TFLOPs.<dtype>) and the step time",
    "breakdown": "the profile's peaks, efficiencies and bandwidths (cluster.profile)",
    "peak_memory": "the model sizes and training.optimizer.state_bytes_per_param",
    "network": "the profile's link bandwidths (node.nvlink_GBps, fabric.nic_Gbps)",
}


def provenance(sc) -> Provenance:
    """What produced a result, so that two results can always be told apart: moesim's version, the seed, the
    steps, and the resolved scenario (presets expanded, profile inlined, SI units) with its SHA-256. A replayed
    trace is represented by the SHA-256 of its counts."""
    from moesim import __version__  # noqa: PLC0415 - the package root imports this module lazily

    resolved = sc.model_dump(mode="json", exclude={"routing": {"trace"}})
    if sc.routing.trace is not None:
        resolved["routing"]["trace_sha256"] = sc.routing.trace.counts_sha256
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return Provenance(moesim_version=__version__, seed=sc.simulation.seed, steps=sc.simulation.steps,
                      warmup_steps=sc.simulation.warmup_steps,
                      scenario_sha256=hashlib.sha256(canonical.encode()).hexdigest(), scenario=resolved)


def check_finite(value, path: str = "") -> None:
    """Raise ResultError for the first NaN/inf anywhere in a (nested) summary."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        inputs = next((v for k, v in _INPUTS_OF.items() if path.startswith(k)), "the scenario's numbers")
        raise ResultError(f"summary {path} is {value}: not a finite number; check {inputs}")


def _summary(result: SimResult) -> RunSummary:
    sc, lay = result.scenario, result.scenario.layout
    measured = result.step_times_s[result.measured_steps]
    p50 = float(np.percentile(measured, 50))
    tokens = sc.training.tokens_per_step
    peak = sc.cluster.profile.gpu.peak(sc.training.dtype)
    nominal_flop = model_flop_per_token(sc.model, sc.training.seq_len) * tokens
    breakdown = per_rank_breakdown(result).mean(axis=0)
    stats = result.layer_stats[result.layer_stats["step"].isin(result.measured_steps)]
    per_layer = stats.groupby("layer")[list(LAYER_STAT_COLUMNS)].mean()
    hbm = sc.cluster.profile.gpu.hbm_bytes
    dropped = float(stats["dropped_fraction"].mean())
    capacity_s = p50 * lay.world_size * peak  # FLOP the GPUs could have done in the step
    mem = result.peak_memory_bytes
    return RunSummary(
        scenario=sc.name,
        gpus=lay.world_size,
        layout=LayoutDegrees(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, etp=lay.etp, edp=lay.edp, cp=lay.cp),
        profile=ProfileRef(name=sc.cluster.profile.name, status=sc.cluster.profile.status),
        measured_steps=int(len(measured)),
        step_time_s=p50,
        step_time_p95_s=float(np.percentile(measured, 95)),
        step_time_p99_s=float(np.percentile(measured, 99)),
        step_time_mean_s=float(measured.mean()),
        tokens_per_s=tokens / p50,
        # MFU counts the FLOPs the model really did: a dropped assignment skips its expert (the convention of
        # Megatron-LM's and PaLM's MFU: useful model FLOPs, no padding, no recompute). `mfu_nominal` counts
        # every token as if nothing were dropped.
        mfu=(nominal_flop - routed_expert_flop_per_token(sc.model) * tokens * dropped) / capacity_s,
        mfu_nominal=nominal_flop / capacity_s,
        capacity_factor=sc.gate.capacity_factor,
        breakdown_s={k: float(v) for k, v in breakdown.items()},
        hidden_s=hidden_breakdown(result),
        peak_memory_bytes=tuple(float(x) for x in mem),
        peak_memory_bytes_max=float(mem.max()),
        peak_memory_breakdown_bytes={k: float(v) for k, v in result.peak_memory_breakdown_bytes.items()},
        hbm_bytes=float(hbm),
        fits_in_memory=bool(mem.max() <= hbm),
        expert_load_max_over_mean=float(stats["expert_max_over_mean"].mean()),
        gpu_load_max_over_mean=float(stats["gpu_max_over_mean"].mean()),
        dropped_fraction=dropped,
        dropped_first_choice_fraction=float(stats["dropped_first_fraction"].mean()),
        padding_fraction=float(stats["padding_fraction"].mean()),
        unrouted_token_fraction=float(stats["unrouted_fraction"].mean()),
        all_to_all_bytes_per_step=_a2a_bytes_per_step(result),
        network=network_usage(result),
        placement=placement_summary(result),
        step_times_s=tuple(float(x) for x in measured),
        per_layer=tuple(LayerSummary(layer=int(layer), **{k: float(row[k]) for k in LAYER_STAT_COLUMNS})
                        for layer, row in per_layer.iterrows()),
        provenance=provenance(sc),
    )
