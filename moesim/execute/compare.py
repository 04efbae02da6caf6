"""Predicted (simulated) vs measured (executed) records of the same scaled plan, phase by phase.

A phase is a set of op kinds in one pass; both sides are read the same way: the mean over ranks of the time the
phase's records span per measured step (a collective's wait for its group included). The op kinds are
grouped where the simulator splits what a measured segment does at once: its attention record excludes the
norms and element-wise kernels it charges as memory_bound and kernel_launch ops, which the executed attention
segment runs itself, so all compute of a pass is one phase; the expert GEMMs are shown on their own too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.sim.records import OpKind, Phase

_COMPUTE = (OpKind.ATTENTION, OpKind.DENSE_FFN, OpKind.ROUTER, OpKind.EXPERT, OpKind.MEMORY_BOUND, OpKind.LAUNCH,
            OpKind.LM_HEAD, OpKind.CONTENTION)
PHASES: tuple[tuple[str, tuple[Phase, ...], tuple[OpKind, ...]], ...] = (
    ("forward compute", (Phase.FORWARD,), _COMPUTE),
    ("  of which experts", (Phase.FORWARD,), (OpKind.EXPERT,)),
    ("forward dispatch", (Phase.FORWARD,), (OpKind.DISPATCH,)),
    ("forward combine", (Phase.FORWARD,), (OpKind.COMBINE,)),
    ("backward compute", (Phase.BACKWARD,), _COMPUTE),
    ("  of which experts", (Phase.BACKWARD,), (OpKind.EXPERT,)),
    ("backward dispatch", (Phase.BACKWARD,), (OpKind.DISPATCH,)),
    ("backward combine", (Phase.BACKWARD,), (OpKind.COMBINE,)),
    ("tensor-parallel comm", (Phase.FORWARD, Phase.BACKWARD), (OpKind.TP_COMM,)),
    ("pipeline wait", (Phase.FORWARD, Phase.BACKWARD), (OpKind.PP_WAIT,)),
    ("gradient all-reduce", (Phase.STEP,), (OpKind.DP_SYNC_DENSE, OpKind.DP_SYNC_EXPERT, OpKind.TP_COMM)),
    ("optimizer", (Phase.STEP,), (OpKind.OPTIMIZER,)),
    ("placement", (Phase.STEP,), (OpKind.MIGRATION, OpKind.SHADOW, OpKind.REPLICA_SYNC)),
)


@dataclass(frozen=True)
class Comparison:
    table: pd.DataFrame  # phase, predicted_s, measured_s, error_pct (predicted vs measured), last row: step time
    step_predicted_s: float  # median over measured steps
    step_measured_s: float

    @property
    def step_error_pct(self) -> float:
        return error_pct(self.step_predicted_s, self.step_measured_s)


def error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured if measured > 0 else float("nan")


def phase_seconds(records: pd.DataFrame, measured_steps, world_size: int) -> dict[str, float]:
    """Each PHASES entry's seconds per measured step, mean over ranks."""
    rec = records[records["step"].isin(list(measured_steps))]
    span = (rec["end_s"] - rec["start_s"]).to_numpy()
    phase, op = rec["phase"].astype(str).to_numpy(), rec["op"].astype(str).to_numpy()
    scale = len(measured_steps) * world_size
    out = {}
    for i, (name, phases, ops) in enumerate(PHASES):
        mask = np.isin(phase, [p.value for p in phases]) & np.isin(op, [o.value for o in ops])
        out[f"{i}:{name}"] = float(span[mask].sum() / scale)
    return out


def compare(predicted_records: pd.DataFrame, predicted_steps_s: np.ndarray, measured_records: pd.DataFrame,
            measured_steps_s: np.ndarray, measured_steps, world_size: int) -> Comparison:
    pred = phase_seconds(predicted_records, measured_steps, world_size)
    meas = phase_seconds(measured_records, measured_steps, world_size)
    rows = [{"phase": key.split(":", 1)[1], "predicted_s": pred[key], "measured_s": meas[key],
             "error_pct": error_pct(pred[key], meas[key])} for key in pred]
    step_pred = float(np.median(predicted_steps_s[list(measured_steps)]))
    step_meas = float(np.median(measured_steps_s[list(measured_steps)]))
    rows.append({"phase": "step time (median)", "predicted_s": step_pred, "measured_s": step_meas,
                 "error_pct": error_pct(step_pred, step_meas)})
    return Comparison(pd.DataFrame(rows), step_pred, step_meas)


def format_comparison(c: Comparison) -> str:
    lines = [f"{'phase':<24}{'predicted ms':>14}{'measured ms':>14}{'error':>9}"]
    for row in c.table.itertuples():
        err = "" if not np.isfinite(row.error_pct) else f"{row.error_pct:+.1f} %"
        lines.append(f"{row.phase:<24}{row.predicted_s * 1e3:>14.2f}{row.measured_s * 1e3:>14.2f}{err:>9}")
    return "\n".join(lines)
