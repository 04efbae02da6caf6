"""Batch runs: a scenario file's sweep points simulated in parallel worker processes, one Parquet file per
finished point (keyed by the resolved scenario and the moesim version), so an interrupted sweep resumes where
it stopped."""

from moesim.sweep.out_dir import prepare_sweep_dir
from moesim.sweep.plan import SweepPlan, plan_sweep
from moesim.sweep.runner import run_sweep

__all__ = ["SweepPlan", "plan_sweep", "prepare_sweep_dir", "run_sweep"]
