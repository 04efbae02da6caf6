"""Typed per-rank, per-op records the simulator emits. Columnar on purpose: a large step emits millions.
This module does not import simpy, so metrics/export/viz can read records without the engine."""

from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd


class Phase(Enum):
    FORWARD = "fwd"
    BACKWARD = "bwd"
    STEP = "step"  # once per step: gradient sync, optimizer, end-of-step idle


class OpKind(Enum):
    ATTENTION = "attention"  # norms, QKV, attention core, output projection (+ recompute in bwd)
    DENSE_FFN = "dense_ffn"  # FFN of a dense layer
    ROUTER = "router"  # router GEMM + shared experts (runs before dispatch)
    EXPERT = "expert"  # routed expert GEMMs on the tokens this rank received
    LM_HEAD = "lm_head"  # output projection + loss (last stage)
    TP_COMM = "tp_comm"  # sequence-parallel all-gather / reduce-scatter in the tensor-parallel group
    DISPATCH = "dispatch"  # all-to-all to the experts (from arrival to group completion)
    COMBINE = "combine"  # all-to-all back from the experts
    PP_WAIT = "pp_wait"  # waiting for the previous/next pipeline stage (bubble)
    DP_SYNC_DENSE = "dp_sync_dense"  # gradient all-reduce of non-expert parameters over dp
    DP_SYNC_EXPERT = "dp_sync_expert"  # gradient all-reduce of expert parameters over edp
    OPTIMIZER = "optimizer"  # optimizer update (HBM-bound)
    MIGRATION = "migration"  # moving re-placed experts (weights + optimizer state) or waiting for them
    SHADOW = "shadow"  # broadcasting shadowed experts' weights and reducing their gradients (FasterMoE)
    REPLICA_SYNC = "replica_sync"  # gradient all-reduce among the replicas of replicated experts
    IDLE = "idle"  # finished before the slowest rank of the step


# Which breakdown bucket each op falls into. Every op is in exactly one bucket, so per rank the buckets
# add up to the step time; the `wait_s` part of collectives is moved to "straggler_wait" by metrics.
BREAKDOWN_OF: dict[OpKind, str] = {
    OpKind.ATTENTION: "compute", OpKind.DENSE_FFN: "compute", OpKind.ROUTER: "compute",
    OpKind.EXPERT: "compute", OpKind.LM_HEAD: "compute",
    OpKind.TP_COMM: "tensor_parallel",
    OpKind.DISPATCH: "all_to_all", OpKind.COMBINE: "all_to_all",
    OpKind.PP_WAIT: "pipeline_bubble",
    OpKind.DP_SYNC_DENSE: "dp_sync", OpKind.DP_SYNC_EXPERT: "dp_sync",
    OpKind.OPTIMIZER: "optimizer",
    OpKind.MIGRATION: "placement", OpKind.SHADOW: "placement", OpKind.REPLICA_SYNC: "dp_sync",
    OpKind.IDLE: "idle",
}
BREAKDOWN_BUCKETS = ("compute", "all_to_all", "straggler_wait", "tensor_parallel", "pipeline_bubble", "dp_sync",
                     "optimizer", "placement", "idle")

RECORD_COLUMNS = ("step", "rank", "micro_batch", "layer", "phase", "op", "start_s", "end_s", "bytes", "rows",
                  "wait_s")


class RecordLog:
    """Append-only columnar log. `micro_batch`/`layer` are -1 where they do not apply; `bytes` is what the
    rank sent in a communication op, `rows` the expert rows it computed (tile padding included) or, for
    dispatch/combine, the assignments it sent. `wait_s` is the part of a collective spent waiting for the
    group's last member to arrive (load imbalance), the rest being the transfer itself."""

    def __init__(self) -> None:
        self._cols: dict[str, list] = {c: [] for c in RECORD_COLUMNS}

    def add(self, step: int, rank: int, micro_batch: int, layer: int, phase: Phase, op: OpKind,
            start_s: float, end_s: float, nbytes: float = 0.0, rows: int = 0, wait_s: float = 0.0) -> None:
        c = self._cols
        c["step"].append(step)
        c["rank"].append(rank)
        c["micro_batch"].append(micro_batch)
        c["layer"].append(layer)
        c["phase"].append(phase.value)
        c["op"].append(op.value)
        c["start_s"].append(start_s)
        c["end_s"].append(end_s)
        c["bytes"].append(nbytes)
        c["rows"].append(rows)
        c["wait_s"].append(wait_s)

    def __len__(self) -> int:
        return len(self._cols["step"])

    def to_frame(self) -> pd.DataFrame:
        c = self._cols
        return pd.DataFrame({
            "step": np.asarray(c["step"], dtype=np.int32),
            "rank": np.asarray(c["rank"], dtype=np.int32),
            "micro_batch": np.asarray(c["micro_batch"], dtype=np.int32),
            "layer": np.asarray(c["layer"], dtype=np.int32),
            "phase": pd.Categorical(c["phase"], categories=[p.value for p in Phase]),
            "op": pd.Categorical(c["op"], categories=[o.value for o in OpKind]),
            "start_s": np.asarray(c["start_s"], dtype=np.float64),
            "end_s": np.asarray(c["end_s"], dtype=np.float64),
            "bytes": np.asarray(c["bytes"], dtype=np.float64),
            "rows": np.asarray(c["rows"], dtype=np.int64),
            "wait_s": np.asarray(c["wait_s"], dtype=np.float64),
        })
