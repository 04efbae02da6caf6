"""An executed run's files: the measured records in the simulator's format (so the same summaries, Perfetto
trace and plots read both), the prediction beside them, and what was scaled."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import numpy as np

from moesim.execute.compare import Comparison, format_comparison
from moesim.execute.run import ExecutedRun
from moesim.export.perfetto import chrome_trace, write_chrome_trace
from moesim.io.results import write_json_atomic, write_parquet_atomic, write_text_atomic
from moesim.io.staged_dir import staged_dir
from moesim.metrics.summary import records_breakdown
from moesim.sim.simulate import SimResult

FILES = ("execute.json", "records.parquet", "predicted_records.parquet", "breakdown_per_rank.csv", "trace.json",
         "compare.md")


def summary_dict(run: ExecutedRun, predicted: SimResult, changes: tuple[str, ...], comparison: Comparison | None,
                 command: str) -> dict:
    sc = run.scenario
    measured = run.step_times_s[run.measured_steps]
    breakdown = records_breakdown(run.records, run.measured_steps, sc.layout.world_size).mean()
    out = {
        "command": command,
        "scenario": sc.name,
        "backend": run.backend,
        "device": run.device,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "ranks": sc.layout.world_size,
        "layout": {"pp": sc.layout.pp, "dp": sc.layout.dp, "ep": sc.layout.ep, "edp": sc.layout.edp},
        "profile": sc.cluster.profile.name,
        "scaled": list(changes),
        "measured_steps": int(len(measured)),
        "step_time_s": float(np.median(measured)),
        "step_times_s": [float(x) for x in measured],
        "predicted_step_time_s": float(np.median(predicted.step_times_s[predicted.measured_steps])),
        "breakdown_s": {k: float(v) for k, v in breakdown.items()},
    }
    if comparison is not None:
        # a phase that took no time on either side has no relative error: null, not NaN (not JSON)
        out["comparison"] = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
                             for row in comparison.table.to_dict(orient="records")]
    return out


def write_execution(out_dir: Path, run: ExecutedRun, predicted: SimResult, summary: dict,
                    comparison: Comparison | None, force: bool) -> list[Path]:
    sc = run.scenario
    with staged_dir(out_dir, force) as staging:
        written = [write_json_atomic(staging / "execute.json", summary),
                   write_parquet_atomic(staging / "records.parquet", run.records),
                   write_parquet_atomic(staging / "predicted_records.parquet", predicted.records),
                   write_text_atomic(staging / "breakdown_per_rank.csv",
                                     records_breakdown(run.records, run.measured_steps, sc.layout.world_size)
                                     .to_csv(float_format="%.9g"))]
        first = int(run.measured_steps[0])
        trace = chrome_trace(run.records, ranks_per_node=sc.cluster.profile.node.gpus_per_node, steps=[first])
        written.append(write_chrome_trace(staging / "trace.json", trace))
        if comparison is not None:
            text = (f"# {sc.name}: predicted ({sc.cluster.profile.name}) vs measured ({run.device}, "
                    f"{run.backend}, {sc.layout.world_size} ranks)\n\n```\n{format_comparison(comparison)}\n```\n")
            written.append(write_text_atomic(staging / "compare.md", text))
        names = [p.name for p in written]
    return [out_dir / n for n in names]
