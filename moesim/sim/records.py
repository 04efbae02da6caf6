"""Typed records the simulator emits, one per (step, rank, op). Columnar on purpose: a large step emits millions.
The engine adds them a pipeline stage at a time, as numpy blocks (one vector over the stage's ranks per op).
This module does not import simpy, so metrics/export/viz can read records without the engine."""

from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd

from moesim.spec.simulation import RecordDetail


class Phase(Enum):
    FORWARD = "fwd"
    BACKWARD = "bwd"
    STEP = "step"  # once per step: gradient sync, optimizer, end-of-step idle


class OpKind(Enum):
    ATTENTION = "attention"  # norms, QKV, attention core, output projection (+ recompute in bwd)
    DENSE_FFN = "dense_ffn"  # FFN of a dense layer
    ROUTER = "router"  # router GEMM + shared experts (runs before dispatch)
    EXPERT = "expert"  # routed expert GEMMs on the tokens this rank received
    MEMORY_BOUND = "memory_bound"  # norms, RoPE, residuals, router softmax/top-k, permute, activations, fp8
    # casts, cross-entropy: bytes over the HBM bandwidth such kernels achieve (moesim.cost.ops)
    LAUNCH = "kernel_launch"  # one launch overhead per kernel of the ops before it
    LM_HEAD = "lm_head"  # output projection + loss (last stage)
    TP_COMM = "tp_comm"  # sequence-parallel all-gather / reduce-scatter in the tensor-parallel group
    CP_COMM = "cp_comm"  # ring attention's key/value exchange in the context-parallel group, the part its
    # attention compute does not hide
    DISPATCH = "dispatch"  # all-to-all to the experts (from arrival to group completion)
    COMBINE = "combine"  # all-to-all back from the experts
    PP_WAIT = "pp_wait"  # waiting for the previous/next pipeline stage (bubble)
    DP_SYNC_DENSE = "dp_sync_dense"  # gradient all-reduce of non-expert parameters over dp
    DP_SYNC_EXPERT = "dp_sync_expert"  # gradient all-reduce of expert parameters over edp
    OPTIMIZER = "optimizer"  # optimizer update (HBM-bound)
    MIGRATION = "migration"  # moving re-placed experts (weights + optimizer state) or waiting for them
    SHADOW = "shadow"  # broadcasting shadowed experts' weights and reducing their gradients (FasterMoE)
    REPLICA_SYNC = "replica_sync"  # gradient all-reduce among the replicas of replicated experts
    CONTENTION = "contention"  # compute slowed by communication running beside it (overlap: SMs, HBM)
    IDLE = "idle"  # finished before the slowest rank of the step


# Which breakdown bucket each op falls into. Every op is in exactly one bucket, so per rank the buckets
# add up to the step time; the `wait_s` part of collectives is moved to "straggler_wait" by metrics.
BREAKDOWN_OF: dict[OpKind, str] = {
    OpKind.ATTENTION: "compute", OpKind.DENSE_FFN: "compute", OpKind.ROUTER: "compute",
    OpKind.EXPERT: "compute", OpKind.LM_HEAD: "compute",
    OpKind.MEMORY_BOUND: "memory_bound", OpKind.LAUNCH: "kernel_launch", OpKind.CONTENTION: "compute",
    OpKind.TP_COMM: "tensor_parallel", OpKind.CP_COMM: "context_parallel",
    OpKind.DISPATCH: "all_to_all", OpKind.COMBINE: "all_to_all",
    OpKind.PP_WAIT: "pipeline_bubble",
    OpKind.DP_SYNC_DENSE: "dp_sync", OpKind.DP_SYNC_EXPERT: "dp_sync",
    OpKind.OPTIMIZER: "optimizer",
    OpKind.MIGRATION: "placement", OpKind.SHADOW: "placement", OpKind.REPLICA_SYNC: "dp_sync",
    OpKind.IDLE: "idle",
}
BREAKDOWN_BUCKETS = ("compute", "memory_bound", "kernel_launch", "all_to_all", "straggler_wait", "tensor_parallel",
                     "context_parallel", "pipeline_bubble", "dp_sync", "optimizer", "placement", "idle")

RECORD_COLUMNS = ("step", "rank", "micro_batch", "layer", "phase", "op", "start_s", "end_s", "bytes", "rows",
                  "wait_s", "hidden_s")

_PHASES, _OPS = tuple(Phase), tuple(OpKind)
PHASE_CODE = {p: i for i, p in enumerate(_PHASES)}
OP_CODE = {o: i for i, o in enumerate(_OPS)}
_DTYPES = {"step": np.int32, "rank": np.int32, "micro_batch": np.int32, "layer": np.int32, "phase": np.int8,
           "op": np.int8, "start_s": np.float64, "end_s": np.float64, "bytes": np.float64, "rows": np.int64,
           "wait_s": np.float64, "hidden_s": np.float64}
RECORD_BYTES = sum(np.dtype(d).itemsize for d in _DTYPES.values())  # one record in the columns and the frame
# One op of one rank while its step is simulated: start and end vectors (the other columns are mostly scalars
# shared by the stage's ranks, or small next to the ~100-byte Python tuple an op costs the whole stage).
BUFFER_BYTES_PER_RECORD = 2 * 8


class RecordBlock:
    """One step's records of a run of consecutive ranks (a pipeline stage), op by op in program order. `add`
    takes each column as a vector over the ranks or one scalar for all; `keep` (bool vector) drops the ranks for
    which the op did not happen (a pipeline message that was already there).

    With `aggregate`, the step's ops are summed per (rank, phase, op kind) when the block is flushed: start_s is 0
    and end_s the summed duration, wait_s, bytes and rows are sums (each in program order, as the ops came),
    micro_batch and layer are -1. `add` only appends: its cost is the same either way."""

    __slots__ = ("first_rank", "num_ranks", "aggregate", "_ops", "_count")

    def __init__(self, first_rank: int, num_ranks: int, aggregate: bool = False):
        self.first_rank, self.num_ranks, self.aggregate = first_rank, num_ranks, aggregate
        self._ops: list[tuple] = []
        self._count = 0  # records before any summing

    def add(self, micro_batch: int, layer: int, phase: Phase, op: OpKind, start_s, end_s, nbytes=0.0, rows=0,
            wait_s=0.0, keep: np.ndarray | None = None, hidden_s=0.0) -> None:
        self._ops.append((micro_batch, layer, PHASE_CODE[phase], OP_CODE[op], start_s, end_s, nbytes, rows, wait_s,
                          hidden_s, keep))
        self._count += self.num_ranks if keep is None else int(np.count_nonzero(keep))

    def __len__(self) -> int:
        return len(self.columns(0)["step"]) if self.aggregate else self._count

    def columns(self, step: int) -> dict[str, np.ndarray]:
        """The block's records in canonical order (by rank, each rank's records in program order)."""
        n_ranks, ops, n_ops = self.num_ranks, self._ops, len(self._ops)
        names = ("micro_batch", "layer", "phase", "op", "start_s", "end_s", "bytes", "rows", "wait_s", "hidden_s")
        # one copy per column: the [ranks, ops] view straight into a contiguous array of the column's type
        cols = {name: np.ascontiguousarray(_rank_major([op[i] for op in ops], n_ranks), _DTYPES[name]).ravel()
                for i, name in enumerate(names)}
        cols["rank"] = np.repeat(np.arange(self.first_rank, self.first_rank + n_ranks), n_ops)
        if any(op[10] is not None for op in ops):
            keep = _rank_major([True if op[10] is None else op[10] for op in ops], n_ranks, bool).ravel()
            cols = {k: v[keep] for k, v in cols.items()}
        n = self._count
        if self.aggregate:
            cols, n = _summed(cols, self.first_rank, n_ranks)
        cols["step"] = step
        return {c: cols[c] if isinstance(cols[c], np.ndarray) and cols[c].dtype == _DTYPES[c] and cols[c].shape == (n,)
                else np.broadcast_to(np.asarray(cols[c]), (n,)).astype(_DTYPES[c]) for c in RECORD_COLUMNS}


def _summed(cols: dict[str, np.ndarray], first_rank: int, n_ranks: int) -> tuple[dict, int]:
    """Records summed per (rank, phase, op kind), rank-major then by code; bincount adds each key's values in
    the order they come, program order."""
    kinds = len(_PHASES) * len(_OPS)
    code = cols["phase"].astype(np.int64) * len(_OPS) + cols["op"]
    key = (cols["rank"] - first_rank) * kinds + code
    size = n_ranks * kinds
    present = np.flatnonzero(np.bincount(key, minlength=size))
    total = {name: np.bincount(key, values, minlength=size)[present] for name, values in
             (("end_s", cols["end_s"] - cols["start_s"]), ("wait_s", cols["wait_s"]), ("hidden_s", cols["hidden_s"]),
              ("bytes", cols["bytes"]),
              ("rows", cols["rows"].astype(np.float64)))}
    summed = {"micro_batch": -1, "layer": -1, "phase": (present % kinds) // len(_OPS),
              "op": (present % kinds) % len(_OPS), "start_s": 0.0, "rank": first_rank + present // kinds, **total}
    return summed, len(present)


def _rank_major(values: list, n_ranks: int, dtype=np.float64) -> np.ndarray:
    """One column of a block's ops (each a scalar or a vector over the ranks) as [ranks, ops]."""
    try:
        arr = np.array(values, dtype=dtype)  # all scalars: [ops]; all vectors: [ops, ranks]
    except ValueError:  # scalars and vectors mixed
        arr = np.empty((len(values), n_ranks), dtype)
        for i, value in enumerate(values):
            arr[i] = value
    if arr.ndim == 1:
        return np.broadcast_to(arr, (n_ranks, len(values)))
    return arr.T


class RecordLog:
    """Append-only columnar log in canonical order: by step, then rank, each rank's records in the order they
    were added (program order). The order SimPy interleaves processes in is therefore invisible.
    `micro_batch`/`layer` are -1 where they do not apply; `bytes` is what the rank sent in a communication op,
    `rows` the expert rows it computed (tile padding included) or, for dispatch/combine, the assignments it
    sent. `wait_s` is the part of a collective spent waiting for the group's last member to arrive (load
    imbalance), the rest being the transfer itself. `hidden_s` is communication of the op that ran under other
    compute (an overlap option of the scenario's `comm:`), off the critical path: not in end_s - start_s.
    `detail` says whether ops are kept one by one or summed per (rank, phase, op kind) (RecordBlock)."""

    def __init__(self, detail: RecordDetail = RecordDetail.FULL) -> None:
        self.detail = detail
        self._chunks: list[dict[str, np.ndarray]] = []
        self._step: int | None = None  # the step the blocks hold
        self._blocks: dict[int, RecordBlock] = {}

    def block(self, step: int, first_rank: int, num_ranks: int) -> RecordBlock:
        """The block of ranks [first_rank, first_rank + num_ranks) for `step`. Steps come in order: asking for
        a later step flushes the current one."""
        if step != self._step:
            if self._step is not None and step < self._step:
                raise ValueError(f"records of step {step} after step {self._step}: steps are appended in order")
            self.flush()
            self._step = step
        blk = self._blocks.get(first_rank)
        if blk is None:
            blk = self._blocks[first_rank] = RecordBlock(first_rank, num_ranks,
                                                         self.detail is not RecordDetail.FULL)
        return blk

    def add(self, step: int, rank: int, micro_batch: int, layer: int, phase: Phase, op: OpKind,
            start_s: float, end_s: float, nbytes: float = 0.0, rows: int = 0, wait_s: float = 0.0,
            hidden_s: float = 0.0) -> None:
        """One record of one rank (a block of one rank)."""
        self.block(step, rank, 1).add(micro_batch, layer, phase, op, start_s, end_s, nbytes, rows, wait_s,
                                      hidden_s=hidden_s)

    def flush(self) -> None:
        """Move the current step's blocks, in rank order, to the columns."""
        end = -1
        for first in sorted(self._blocks):
            blk = self._blocks.pop(first)
            if first <= end:
                raise AssertionError(f"record blocks overlap at rank {first}")
            end = first + blk.num_ranks - 1
            if len(blk):
                self._chunks.append(blk.columns(self._step))

    def __len__(self) -> int:
        return sum(len(c["step"]) for c in self._chunks) + sum(len(b) for b in self._blocks.values())

    def to_frame(self) -> pd.DataFrame:
        """All records as a DataFrame (columns RECORD_COLUMNS); the log starts over empty."""
        self.flush()
        chunks, self._chunks, self._step = self._chunks, [], None
        # column by column, each step's piece freed once copied: the peak is the records plus one column
        data = {c: np.concatenate([ch.pop(c) for ch in chunks]) if chunks else np.zeros(0, _DTYPES[c])
                for c in RECORD_COLUMNS}
        data["phase"] = pd.Categorical.from_codes(data["phase"], categories=[p.value for p in _PHASES])
        data["op"] = pd.Categorical.from_codes(data["op"], categories=[o.value for o in _OPS])
        return pd.DataFrame(data, copy=False)
