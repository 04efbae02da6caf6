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

# the group a collective op waits on, unless its row names another (expert tensor parallelism's "etp")
_GROUP_OF = {OpKind.DISPATCH.value: "ep", OpKind.COMBINE.value: "ep", OpKind.DP_SYNC_DENSE.value: "dp",
             OpKind.DP_SYNC_EXPERT.value: "edp", OpKind.TP_COMM.value: "tp"}


class ExecuteError(Exception):
    """The ranks of an executed run disagree, died or hung: one line, no traceback."""


def _members(lay: ParallelLayout) -> dict[str, np.ndarray]:
    """group name -> [world, group size]: the members of each rank's group."""
    out = {}
    for name, grid in (("ep", lay.ep_groups()), ("edp", lay.edp_groups()), ("dp", lay.dp_groups()),
                       ("tp", lay.tp_groups()), ("etp", lay.etp_groups())):
        groups = grid.reshape(-1, grid.shape[-1])
        table = np.empty((lay.world_size, groups.shape[1]), np.int64)
        for g in groups:
            table[g] = g
        out[name] = table
    return out


def assemble(lay: ParallelLayout, timelines: list[list[tuple]], step_starts: list[list[float]]
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """timelines[rank]: (step, mb, layer, phase, op, start, end, bytes, rows[, group]) in program order (group:
    the collective's process group when not its op's usual one, moesim.execute.train.Timeline); step_starts[rank]:
    the clock when the rank left each step's barrier. Returns (records, step_times_s [steps])."""
    world = len(timelines)
    stage_of = [lay.stage_of(r) for r in range(world)]
    firsts = {}  # stage -> its first rank: every rank of a stage runs the same ops in the same order
    for rank in range(world):
        first = firsts.setdefault(stage_of[rank], rank)
        rows, ref = timelines[rank], timelines[first]
        if len(rows) != len(ref) or any(tuple(r[:5]) != tuple(k[:5]) for r, k in zip(rows, ref)):
            raise ExecuteError(f"rank {rank} ran other ops than rank {first} of its stage: the executed program "
                               "diverged")
    members = _members(lay)
    steps = 1 + max(int(r[0]) for rows in timelines for r in rows)
    origin = np.asarray(step_starts, dtype=np.float64).min(axis=0)  # [steps]: the first rank out of the barrier
    start, end, wait, bounds = [], [], [], []
    step_end = np.zeros(steps)
    for rank, rows in enumerate(timelines):
        t0 = np.array([r[5] for r in rows])
        t1 = np.array([r[6] for r in rows])
        w = np.zeros(len(rows))
        for j, row in enumerate(rows):
            group = (row[9] if len(row) > 9 else "") or _GROUP_OF.get(row[4])
            if group is not None:  # the group's members are on this rank's stage: record j is the same op there
                last = max(timelines[g][j][5] for g in members[group][rank])
                w[j] = min(max(0.0, last - t0[j]), t1[j] - t0[j])
        steps_of = np.array([r[0] for r in rows], dtype=np.int64)  # non-decreasing: rows are in program order
        start.append(t0 - origin[steps_of])
        end.append(t1 - origin[steps_of])
        wait.append(w)
        bounds.append(np.searchsorted(steps_of, np.arange(steps + 1)))  # step s is rows bounds[s]:bounds[s + 1]
        np.maximum.at(step_end, steps_of, end[rank])
    log = RecordLog(RecordDetail.FULL)
    phases, ops = {p.value: p for p in Phase}, {o.value: o for o in OpKind}
    for s in range(steps):  # the log takes steps in order, each step's ranks in order
        for rank, rows in enumerate(timelines):
            first, stop = bounds[rank][s], bounds[rank][s + 1]
            for j in range(first, stop):
                _, mb, layer, phase, op, _, _, nbytes, n_rows = rows[j][:9]
                log.add(s, rank, mb, layer, phases[phase], ops[op], float(start[rank][j]), float(end[rank][j]),
                        float(nbytes), int(n_rows), float(wait[rank][j]))
            finish = float(end[rank][first:stop].max()) if stop > first else 0.0
            if finish < step_end[s]:
                log.add(s, rank, -1, -1, Phase.STEP, OpKind.IDLE, finish, float(step_end[s]))
    return log.to_frame(), step_end
