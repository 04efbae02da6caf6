"""Tables of one simulation for the dashboard (app/): per-GPU and per-expert load, the all-to-all matrix with
the tier each pair of GPUs talks over, and one step's timeline per rank. Selections of what the simulator
recorded, in SI units; nothing here models anything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.sim.records import BREAKDOWN_OF, OpKind, Phase
from moesim.sim.simulate import LayerRouting, SimResult
from moesim.spec.scenario import Scenario

_BUCKET_OF_OP = {op.value: bucket for op, bucket in BREAKDOWN_OF.items()}
LINK_LOCAL, LINK_NVLINK, LINK_NIC = "local", "nvlink", "nic"  # the network tiers: moesim.sim.simulate.TIERS


def gpu_expert_rows(result: SimResult) -> pd.Series:
    """Rows each GPU's routed experts compute per measured step (forward pass: every MoE layer and micro-batch of
    its stage, capacity and tile padding included), indexed by rank; from the records (any records detail)."""
    rec = result.records
    mask = ((rec["op"] == OpKind.EXPERT.value) & (rec["phase"] == Phase.FORWARD.value)
            & rec["step"].isin(result.measured_steps)).to_numpy()
    rows = np.bincount(rec["rank"].to_numpy()[mask], rec["rows"].to_numpy()[mask].astype(np.float64),
                       minlength=result.scenario.layout.world_size)
    series = pd.Series(rows / len(result.measured_steps), name="rows_per_step")
    series.index.name = "rank"
    return series


class ExpertLoadLog:
    """Per-expert routed load, summed as the simulator goes: pass it as simulate(..., routing_log=log). It keeps
    one vector per MoE layer, not the [micro-batch, rank, expert] arrays of every step (memory stays that of one
    layer, whatever the scenario's size)."""

    def __init__(self, scenario: Scenario):
        self._warmup_steps = scenario.simulation.warmup_steps
        self._steps = scenario.simulation.steps
        self._sums: dict[int, np.ndarray] = {}

    def append(self, routed: LayerRouting) -> None:
        if routed.step < self._warmup_steps:
            return
        loads = np.asarray(routed.loads, dtype=np.float64).sum(axis=(0, 1))  # [E]: every micro-batch and rank
        self._sums[routed.layer] = self._sums.get(routed.layer, 0.0) + loads

    def table(self) -> pd.DataFrame:
        """One row per (MoE layer, expert): `assignments_per_step`, the tokens its router sent the expert (top-k
        assignments, before capacity) per measured step, over every micro-batch and rank of the layer's stage."""
        frames = [pd.DataFrame({"layer": layer, "expert": np.arange(len(total)),
                                "assignments_per_step": total / self._steps})
                  for layer, total in sorted(self._sums.items())]
        columns = ["layer", "expert", "assignments_per_step"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def a2a_pairs(result: SimResult) -> pd.DataFrame:
    """The all-to-all matrices of SimResult.a2a_matrices (each MoE layer's first EP group, dispatch bytes per
    micro-batch, mean over measured steps) as rows (layer, src, dst, bytes, src_gpu, dst_gpu, link): `link` is
    "local" for a GPU's rows to its own experts (no transfer), "nvlink" for two GPUs of one node, "nic" for
    GPUs on different nodes (through their NICs)."""
    sc = result.scenario
    lay, gpus_per_node = sc.layout, sc.cluster.profile.node.gpus_per_node
    frames = []
    for i, layer in enumerate(result.moe_layers):
        gpus = lay.ep_groups()[sc.stage_of_layer(layer)].reshape(-1, lay.ep)[0]  # the group the matrix is of
        src, dst = np.indices((lay.ep, lay.ep))
        src_gpu, dst_gpu = gpus[src.ravel()], gpus[dst.ravel()]
        frames.append(pd.DataFrame({
            "layer": layer, "src": src.ravel(), "dst": dst.ravel(), "bytes": result.a2a_matrices[i].ravel(),
            "src_gpu": src_gpu, "dst_gpu": dst_gpu,
            "link": np.where(src_gpu == dst_gpu, LINK_LOCAL,
                             np.where(src_gpu // gpus_per_node == dst_gpu // gpus_per_node, LINK_NVLINK, LINK_NIC))}))
    return pd.concat(frames, ignore_index=True)


def step_timeline(result: SimResult, step: int, ranks: list[int] | None = None) -> pd.DataFrame:
    """One step's ops of `ranks` (None: all): rank, start_s, end_s (from the step's start), phase, op, bucket
    (the breakdown bucket), micro_batch, layer, wait_s. Needs records: full (raises ValueError otherwise)."""
    from moesim.spec.simulation import RecordDetail  # noqa: PLC0415 - only this function needs it

    if result.scenario.simulation.records is not RecordDetail.FULL:
        raise ValueError("a timeline needs simulation.records: full (one record per op)")
    rec = result.records
    mask = (rec["step"] == step).to_numpy()
    if ranks is not None:
        mask = mask & rec["rank"].isin(ranks).to_numpy()
    rows = rec.loc[mask, ["rank", "start_s", "end_s", "phase", "op", "micro_batch", "layer", "wait_s"]]
    rows = rows.assign(phase=rows["phase"].astype(str), op=rows["op"].astype(str))
    return rows.assign(bucket=rows["op"].map(_BUCKET_OF_OP)).reset_index(drop=True)
