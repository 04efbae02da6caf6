"""Every rank's timed ops -> the simulator's records (moesim.sim.records: same columns, op kinds, buckets).

All ranks run the same ops in the same order, so record j of every rank is the same op. Times are on the clock
the ranks of one host share (perf_counter, CLOCK_MONOTONIC): a step starts when its first rank leaves the
step's barrier; a collective's `wait_s` is the time from this member's arrival to the group's last arrival
(capped at the op's length), the simulator's definition; ranks that finish before the step's last one idle.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.sim.records import OpKind, Phase, RecordLog
from moesim.spec.layout import ParallelLayout
from moesim.spec.simulation import RecordDetail

_GROUP_OF = {OpKind.DISPATCH.value: "ep", OpKind.COMBINE.value: "ep", OpKind.DP_SYNC_DENSE.value: "dp",
             OpKind.DP_SYNC_EXPERT.value: "edp"}


class ExecuteError(Exception):
    """The ranks of an executed run disagree, died or hung: one line, no traceback."""


def _members(lay: ParallelLayout) -> dict[str, np.ndarray]:
    """group name -> [world, group size]: the members of each rank's group."""
    out = {}
    for name, grid in (("ep", lay.ep_groups()), ("edp", lay.edp_groups()), ("dp", lay.dp_groups())):
        groups = grid.reshape(-1, grid.shape[-1])
        table = np.empty((lay.world_size, groups.shape[1]), np.int64)
        for g in groups:
            table[g] = g
        out[name] = table
    return out


def assemble(lay: ParallelLayout, timelines: list[list[tuple]], step_starts: list[list[float]]
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """timelines[rank]: (step, mb, layer, phase, op, start, end, bytes, rows) in program order; step_starts[rank]:
    the clock when the rank left each step's barrier. Returns (records, step_times_s [steps])."""
    world = len(timelines)
    n = len(timelines[0])
    keys = [tuple(r[:5]) for r in timelines[0]]
    for rank, rows in enumerate(timelines):
        if len(rows) != n or any(tuple(r[:5]) != k for r, k in zip(rows, keys)):
            raise ExecuteError(f"rank {rank} ran other ops than rank 0: the executed program diverged")
    start = np.array([[r[5] for r in rows] for rows in timelines])  # [world, n]
    end = np.array([[r[6] for r in rows] for rows in timelines])
    step_of = np.array([k[0] for k in keys])
    steps = int(step_of.max()) + 1
    origin = np.asarray(step_starts, dtype=np.float64).min(axis=0)  # [steps]
    start_rel, end_rel = start - origin[step_of], end - origin[step_of]
    wait = np.zeros_like(start)
    members = _members(lay)
    for j, key in enumerate(keys):
        group = _GROUP_OF.get(key[4])
        if group is not None:
            last = start[members[group], j].max(axis=1)  # [world]
            wait[:, j] = np.clip(last - start[:, j], 0.0, end[:, j] - start[:, j])
    step_end = np.array([end_rel[:, step_of == s].max() for s in range(steps)])
    log = RecordLog(RecordDetail.FULL)
    phases, ops = {p.value: p for p in Phase}, {o.value: o for o in OpKind}
    for s in range(steps):
        cols = np.flatnonzero(step_of == s)
        for rank in range(world):
            for j in cols:
                _, mb, layer, phase, op, _, _, nbytes, rows = timelines[rank][j]
                log.add(s, rank, mb, layer, phases[phase], ops[op], float(start_rel[rank, j]), float(end_rel[rank, j]),
                        float(nbytes), int(rows), float(wait[rank, j]))
            finish = float(end_rel[rank, cols].max())
            if finish < step_end[s]:
                log.add(s, rank, -1, -1, Phase.STEP, OpKind.IDLE, finish, float(step_end[s]))
    return log.to_frame(), step_end
