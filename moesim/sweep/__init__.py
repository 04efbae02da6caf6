"""Batch runs: a scenario file's sweep points simulated in parallel worker processes or on a Ray cluster, one
Parquet file per finished point (keyed by the resolved scenario and the moesim version), so an interrupted sweep
resumes where it stopped."""

from moesim.sweep.out_dir import prepare_sweep_dir
from moesim.sweep.plan import SweepPlan, plan_sweep
from moesim.sweep.runner import SweepBackend, check_backend, run_sweep

__all__ = ["SweepBackend", "SweepPlan", "check_backend", "plan_sweep", "prepare_sweep_dir", "run_sweep"]
