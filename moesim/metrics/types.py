"""The summary of a run as typed, frozen records (built by moesim.metrics.summary.summarize).

Field names carry their units (`_s`, `_bytes`, `_fraction`) like every name in moesim. `RunSummary.to_dict()`
is what `summary.json` holds: fields in declaration order, so the file keeps its key order; reorder a field
only with a reason to change the file. Keys that are data, not schema, stay dict keys: breakdown buckets,
network tiers ("nvlink", "nic", "spine") and the resolved scenario in the provenance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def _plain(value: Any) -> Any:
    """Records -> dicts (field order), tuples -> lists: the JSON shape. Containers are copied, so a caller
    that edits the result cannot reach into the frozen summary."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True, kw_only=True)
class LayoutDegrees:
    """The parallel sizes the run used (Megatron's TP, PP, DP, EP, expert-TP and expert-DP)."""

    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    edp: int
    cp: int = 1


@dataclass(frozen=True, kw_only=True)
class ProfileRef:
    """Which hardware profile the run used, and whether it is calibrated."""

    name: str
    status: str


@dataclass(frozen=True, kw_only=True)
class LinkUtilisation:
    """Busy fraction (bytes / (capacity x step time)) of a tier's links: mean over links and steps, and the
    busiest link per step averaged over steps."""

    mean: float
    max: float


@dataclass(frozen=True, kw_only=True)
class NetworkSummary:
    """The network models used and the MoE all-to-all traffic per tier (TP, DP and pipeline traffic are not
    counted). Both dicts are keyed by tier: "nvlink", "nic", "spine"."""

    model: str
    solver: str
    cross_rail: str
    all_to_all: str
    all_reduce: str
    a2a_bytes_per_step: dict[str, float]
    a2a_link_utilisation: dict[str, LinkUtilisation]


@dataclass(frozen=True, kw_only=True)
class PlacementSummary:
    """The placement policy, its changes over the measured steps, and the GPU balance ratio it reached."""

    policy: str
    slots_per_gpu: int | None
    migration: str
    changes: int
    moved_slots: int
    migration_bytes: float
    migration_s: float
    balance_ratio_mean: float
    balance_ratio_p95: float


@dataclass(frozen=True, kw_only=True)
class LayerSummary:
    """One layer's routing statistics, averaged over measured steps and micro-batches (the columns of
    moesim.sim.simulate.LAYER_STAT_COLUMNS, in that order)."""

    layer: int
    expert_max_over_mean: float
    gpu_max_over_mean: float
    dropped_fraction: float
    dropped_first_fraction: float
    padding_fraction: float
    unrouted_fraction: float
    a2a_bytes: float
    a2a_nvlink_bytes: float
    a2a_nic_bytes: float
    a2a_spine_bytes: float


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """What produced a result: moesim's version, the seed, the steps, and the resolved scenario (presets
    expanded, profile inlined, SI units; free-form JSON) with its SHA-256."""

    moesim_version: str
    seed: int
    steps: int
    warmup_steps: int
    scenario_sha256: str
    scenario: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """Every number of a run's summary; all floats are finite (summarize checks)."""

    scenario: str
    gpus: int
    layout: LayoutDegrees
    profile: ProfileRef
    measured_steps: int
    step_time_s: float  # p50 over measured steps
    step_time_p95_s: float
    step_time_p99_s: float
    step_time_mean_s: float
    tokens_per_s: float
    mfu: float  # useful model FLOPs: a dropped assignment skips its expert
    mfu_nominal: float  # every token counted as if nothing were dropped
    capacity_factor: float | None  # None: dropless
    breakdown_s: dict[str, float]  # bucket -> seconds per step, mean over ranks; sums to step_time_mean_s
    hidden_s: dict[str, float]  # bucket -> communication per step that ran under compute (overlap), mean over
    # ranks; not in breakdown_s (the exposed part is)
    peak_memory_bytes: tuple[float, ...]  # per rank
    peak_memory_bytes_max: float
    peak_memory_breakdown_bytes: dict[str, float]  # the busiest rank: weights, gradients, optimizer, activations,
    # all-to-all buffers and their total
    hbm_bytes: float
    fits_in_memory: bool
    expert_load_max_over_mean: float
    gpu_load_max_over_mean: float
    dropped_fraction: float
    dropped_first_choice_fraction: float
    padding_fraction: float
    unrouted_token_fraction: float
    all_to_all_bytes_per_step: float
    network: NetworkSummary
    placement: PlacementSummary
    step_times_s: tuple[float, ...]  # per measured step
    per_layer: tuple[LayerSummary, ...]
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON types, in the key order of summary.json."""
        return _plain(self)
