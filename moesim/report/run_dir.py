"""One simulation run -> its output directory, written as a whole (moesim.io.staged_dir)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.export.perfetto import chrome_trace, write_chrome_trace
from moesim.io.results import write_figure_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic
from moesim.io.staged_dir import staged_dir
from moesim.metrics.summary import per_rank_breakdown
from moesim.metrics.types import RunSummary
from moesim.sim.simulate import SimResult
from moesim.spec.simulation import RecordDetail
from moesim.viz.breakdown import breakdown_figure, per_rank_figure
from moesim.viz.distribution import step_time_histogram
from moesim.viz.network import a2a_heatmap

PER_RANK_PLOT_MAX_RANKS = 64


def write_run(out_dir: Path, result: SimResult, summary: RunSummary, force: bool = False) -> list[Path]:
    """Write the run into a staging directory and swap it in as `out_dir` once every file is there. Returns
    the paths of the files as they are in `out_dir`. Raises SpecError for an --out that is not ours to
    replace, WriteError when the files cannot be written (then `out_dir` is as it was)."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir, force) as staging:
        names = [p.name for p in write_run_files(staging, result, summary)]
    return [out_dir / name for name in names]


def write_run_files(out_dir: Path, result: SimResult, summary: RunSummary) -> list[Path]:
    """summary.json, records.parquet, layer_stats.parquet, a2a_matrices.parquet, placement_events.csv,
    breakdown_per_rank.csv, trace.json (the first measured step) and four PNG plots, into an existing
    directory. Returns the paths written. With simulation.records per_rank, records.parquet holds the per-rank
    sums and there is no trace.json (no op times to draw); with summary, neither is written."""
    sc = result.scenario
    detail = sc.simulation.records
    per_rank = per_rank_breakdown(result)
    written = [write_json_atomic(out_dir / "summary.json", summary.to_dict())]
    if detail is not RecordDetail.SUMMARY:
        written.append(write_parquet_atomic(out_dir / "records.parquet", result.records))
    written += [
        write_parquet_atomic(out_dir / "layer_stats.parquet", result.layer_stats),
        write_parquet_atomic(out_dir / "a2a_matrices.parquet", a2a_frame(result)),
        write_text_atomic(out_dir / "placement_events.csv",
                          result.placement_events.to_csv(index=False, float_format="%.9g")),
        write_text_atomic(out_dir / "breakdown_per_rank.csv", per_rank.to_csv(float_format="%.9g")),
    ]
    if detail is RecordDetail.FULL:
        first = int(result.measured_steps[0])
        trace = chrome_trace(result.records, ranks_per_node=sc.cluster.profile.node.gpus_per_node, steps=[first])
        written.append(write_chrome_trace(out_dir / "trace.json", trace))
    title = f"{sc.name}: {sc.model.name} on {sc.layout.world_size} x {sc.cluster.profile.gpu.name}"
    written.append(write_figure_atomic(out_dir / "breakdown.png",
                                       breakdown_figure(summary.breakdown_s, summary.step_time_mean_s, title)))
    if sc.layout.world_size <= PER_RANK_PLOT_MAX_RANKS:
        grouped, label = per_rank, "per rank"
    else:  # too many bars: average the ranks of each pipeline stage
        grouped = per_rank.groupby(per_rank.index // sc.layout.ranks_per_stage).mean()
        grouped.index.name, label = "stage", "per pipeline stage (mean over its ranks)"
    written.append(write_figure_atomic(out_dir / "breakdown_per_rank.png",
                                       per_rank_figure(grouped, f"{title}: {label}")))
    written.append(write_figure_atomic(out_dir / "step_time_hist.png",
                                       step_time_histogram(result.step_times_s[result.measured_steps], title)))
    ep_per_node = max(1, min(sc.layout.ep, sc.cluster.profile.node.gpus_per_node // sc.layout.etp))
    written.append(write_figure_atomic(out_dir / "a2a_heatmap.png", a2a_heatmap(
        result.a2a_matrices, result.moe_layers, ep_per_node,
        f"{title}: dispatch bytes of the first EP group ({sc.network.all_to_all.value} all-to-all)")))
    return written


def a2a_frame(result: SimResult) -> pd.DataFrame:
    """One row per (MoE layer, source EP rank, destination EP rank): mean dispatch bytes per micro-batch."""
    m = result.a2a_matrices
    layers, src, dst = np.indices(m.shape)
    return pd.DataFrame({"layer": np.asarray(result.moe_layers)[layers.ravel()], "src": src.ravel(),
                         "dst": dst.ravel(), "bytes": m.ravel()})
