"""Typed per-rank, per-op records the simulator emits. Columnar on purpose: a large step emits millions.
This module does not import simpy, so metrics/export/viz can read records without the engine."""

from __future__ import annotations

from array import array
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

_PHASES, _OPS = tuple(Phase), tuple(OpKind)
# Keyed by the member's `_value_` (a plain attribute, its str hash cached): hashing an Enum member calls a
# Python-level __hash__, which made the engine's per-op `add` a third slower.
_PHASE_CODE = {p._value_: i for i, p in enumerate(_PHASES)}
_OP_CODE = {o._value_: i for i, o in enumerate(_OPS)}
# The columns a rank's buffer holds, with their array.array typecode and the frame's dtype. step and rank are
# the same for a whole buffer: they are written once per buffer, when it is flushed.
_BUFFER_COLUMNS = (("micro_batch", "i", np.int32), ("layer", "i", np.int32), ("phase", "b", np.int8),
                   ("op", "b", np.int8), ("start_s", "d", np.float64), ("end_s", "d", np.float64),
                   ("bytes", "d", np.float64), ("rows", "q", np.int64), ("wait_s", "d", np.float64))
_ALL_COLUMNS = (("step", "i", np.int32), ("rank", "i", np.int32)) + _BUFFER_COLUMNS
assert array("i").itemsize == 4 and array("q").itemsize == 8 and array("b").itemsize == 1
# Bytes one record holds in a rank's buffer during its step, then in the columns and the frame (shared).
BUFFER_BYTES_PER_RECORD = sum(array(code).itemsize for _, code, _ in _BUFFER_COLUMNS)
RECORD_BYTES = sum(array(code).itemsize for _, code, _ in _ALL_COLUMNS)


class RankRecords:
    """One rank's records of one step, in program order, in typed buffers (array.array): ~50 bytes a record
    where Python lists of objects took ~300. The engine's hot path calls `add` once per op."""

    __slots__ = tuple(name for name, _, _ in _BUFFER_COLUMNS)

    def __init__(self) -> None:
        for name, code, _ in _BUFFER_COLUMNS:
            setattr(self, name, array(code))

    def add(self, micro_batch: int, layer: int, phase: Phase, op: OpKind, start_s: float, end_s: float,
            nbytes: float = 0.0, rows: int = 0, wait_s: float = 0.0) -> None:
        self.micro_batch.append(micro_batch)
        self.layer.append(layer)
        self.phase.append(_PHASE_CODE[phase._value_])
        self.op.append(_OP_CODE[op._value_])
        self.start_s.append(start_s)
        self.end_s.append(end_s)
        self.bytes.append(nbytes)
        self.rows.append(rows)
        self.wait_s.append(wait_s)

    def __len__(self) -> int:
        return len(self.micro_batch)


class RecordLog:
    """Append-only columnar log in canonical order: by step, then rank, each rank's records in the order they
    were added (program order). The order SimPy interleaves processes in is therefore invisible.
    `micro_batch`/`layer` are -1 where they do not apply; `bytes` is what the rank sent in a communication op,
    `rows` the expert rows it computed (tile padding included) or, for dispatch/combine, the assignments it
    sent. `wait_s` is the part of a collective spent waiting for the group's last member to arrive (load
    imbalance), the rest being the transfer itself.

    Memory: records of the current step wait in per-rank buffers; `flush` (at the end of a step) appends them
    in rank order to one typed array per column, and `to_frame` hands those arrays to pandas without a copy.
    The peak is therefore the records (RECORD_BYTES each) plus one step's buffers, never a second copy."""

    def __init__(self) -> None:
        self._cols = {c: array(code) for c, code, _ in _ALL_COLUMNS}
        self._step: int | None = None  # the step the buffers hold
        self._ranks: dict[int, RankRecords] = {}

    def rank(self, step: int, rank: int) -> RankRecords:
        """The buffer of (step, rank): the engine holds it for the whole step instead of looking it up per op.
        Steps come in order: asking for a later step flushes the current one."""
        if step != self._step:
            if self._step is not None and step < self._step:
                raise ValueError(f"records of step {step} after step {self._step}: steps are appended in order")
            self.flush()
            self._step = step
        buf = self._ranks.get(rank)
        if buf is None:
            buf = self._ranks[rank] = RankRecords()
        return buf

    def add(self, step: int, rank: int, micro_batch: int, layer: int, phase: Phase, op: OpKind,
            start_s: float, end_s: float, nbytes: float = 0.0, rows: int = 0, wait_s: float = 0.0) -> None:
        self.rank(step, rank).add(micro_batch, layer, phase, op, start_s, end_s, nbytes, rows, wait_s)

    def flush(self) -> None:
        """Move the current step's buffers, rank by rank, to the columns (each buffer freed once moved)."""
        cols = self._cols
        for rank in sorted(self._ranks):
            buf = self._ranks.pop(rank)
            n = len(buf)
            cols["step"].extend(array("i", [self._step]) * n)
            cols["rank"].extend(array("i", [rank]) * n)
            for name, _, _ in _BUFFER_COLUMNS:
                cols[name].extend(getattr(buf, name))

    def __len__(self) -> int:
        return len(self._cols["step"]) + sum(len(buf) for buf in self._ranks.values())

    def to_frame(self) -> pd.DataFrame:
        """All records as a DataFrame (columns RECORD_COLUMNS) that shares the log's memory; the log starts
        over empty (its columns now belong to the frame)."""
        self.flush()
        cols, self._cols, self._step = self._cols, {c: array(code) for c, code, _ in _ALL_COLUMNS}, None
        data = {c: np.frombuffer(cols[c], dtype=dtype) if len(cols[c]) else np.zeros(0, dtype)
                for c, _, dtype in _ALL_COLUMNS}
        data["phase"] = pd.Categorical.from_codes(data["phase"], categories=[p.value for p in _PHASES])
        data["op"] = pd.Categorical.from_codes(data["op"], categories=[o.value for o in _OPS])
        return pd.DataFrame({c: data[c] for c in RECORD_COLUMNS}, copy=False)
