"""Breakdown figures render to PNG without pyplot."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.io.results import write_figure_atomic
from moesim.sim.records import BREAKDOWN_BUCKETS
from moesim.viz.breakdown import breakdown_figure, per_rank_figure

PNG_MAGIC = b"\x89PNG"


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_breakdown_figure_png(tmp_path: Path) -> None:
    breakdown = {"idle": 0.05, "compute": 0.6, "all_to_all": 0.25, "dp_sync": 0.1, "optimizer": 0.0}
    fig = breakdown_figure(breakdown, step_time_s=1.0, title="deepseek-v3 on 64 H100")
    labels = _legend_texts(fig)
    # BREAKDOWN_BUCKETS order, zero buckets left out, seconds and percent in every label
    assert labels == ["compute: 0.6 s (60.0%)", "all_to_all: 0.25 s (25.0%)", "dp_sync: 0.1 s (10.0%)",
                      "idle: 0.05 s (5.0%)"]
    assert fig.axes[0].get_xlabel() == "time per step (s)"
    path = write_figure_atomic(tmp_path / "breakdown.png", fig)
    assert path.read_bytes()[:4] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["breakdown.png"]



def test_no_pyplot_global_state() -> None:
    import moesim.viz.breakdown as module

    tree = ast.parse(inspect.getsource(module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any("pyplot" in name for name in imported)
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "use" not in calls  # no matplotlib.use(...) backend switching


def test_breakdown_figure_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="step_time_s"):
        breakdown_figure({"compute": 1.0}, step_time_s=0.0, title="x")
    with pytest.raises(ValueError, match="breakdown_s"):
        breakdown_figure({"compute": float("nan")}, step_time_s=1.0, title="x")


@pytest.mark.parametrize(("n", "tick_labels"), [(8, [str(r) for r in range(8)]),
                                                 (40, [str(r) for r in range(0, 40, 2)])])
def test_per_rank_figure_png(tmp_path: Path, n: int, tick_labels: list[str]) -> None:
    rng = np.random.default_rng(0)
    cols = ["idle", "compute", "all_to_all", "pipeline_bubble"]  # deliberately out of order
    table = pd.DataFrame(rng.uniform(0.0, 0.3, size=(n, len(cols))), columns=cols,
                         index=pd.Index(range(n), name="rank"))
    fig = per_rank_figure(table, title="per rank")
    ax = fig.axes[0]
    assert _legend_texts(fig) == [b for b in BREAKDOWN_BUCKETS if b in cols]
    assert [t.get_text() for t in ax.get_xticklabels()] == tick_labels  # thinned to <= 32 beyond 32 bars
    assert ax.get_xlabel() == "rank" and ax.get_ylabel() == "time per step (s)"
    assert write_figure_atomic(tmp_path / f"ranks{n}.png", fig).read_bytes()[:4] == PNG_MAGIC


def test_per_rank_figure_rejects_empty_table() -> None:
    with pytest.raises(ValueError, match="empty"):
        per_rank_figure(pd.DataFrame(columns=["compute"]), title="x")


@pytest.mark.parametrize("times", [[1.0, 1.0 + 2e-16, 1.0], [5.0], [1e-300, 1.0000001e-300], [0.0, 0.0]])
def test_step_time_histogram_draws_times_a_few_ulps_apart(times):
    import numpy as np

    from moesim.viz.distribution import step_time_histogram

    fig = step_time_histogram(np.array(times), "nearly constant")
    assert len(fig.axes[0].patches) >= 1
