"""How fast `moesim plan` screens: candidates per minute of the closed-form estimate (moesim/plan/estimate.py), one
core, on the DeepSeek-V3-like scenario (scenarios/deepseek-v3-256.yaml) re-sized to each cluster, over the plan's
default search space (tp, pp, ep, micro-batch size, recompute, all-to-all overlap). Pruned candidates count: a
planner must look at them to say why they were pruned.

Usage: .venv/bin/python benchmarks/bench_plan.py [--gpus 256 2048 ...]
Runs in this process after pinning it to one core (taskset -c 0 where it exists, one BLAS thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from moesim.loader import load_scenario
from moesim.network import build_network
from moesim.plan.estimate import estimate
from moesim.plan.run import screen
from moesim.spec.plan import PlanSpec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[256, 2048])
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    base = load_scenario(ROOT / "scenarios" / "deepseek-v3-256.yaml")
    spec = PlanSpec()
    print(f"# {platform.machine()}, {os.cpu_count()} cores (1 used), Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| GPUs | candidates | pruned | fit | seconds | candidates per minute | step estimates per minute |")
    print("|---|---|---|---|---|---|---|")
    for gpus in args.gpus:
        sc = base.replace(cluster=base.cluster.replace(nodes=gpus // 8),
                          layout=base.layout.replace(dp=gpus // (base.layout.tp * base.layout.pp),
                                                     ep=min(64, gpus // base.layout.pp)),
                          training=base.training.replace(global_batch_size=max(512, gpus)))
        t0 = time.perf_counter()
        out = screen(sc, spec)
        dt = time.perf_counter() - t0
        pruned = sum(1 for s in out if s.reason)
        fit = sum(1 for s in out if not s.reason)
        net = build_network(sc.cluster, sc.network)
        kept = [s.candidate.scenario for s in out if not s.reason]
        t1 = time.perf_counter()
        for candidate in kept:  # the step estimate alone, on the candidates that fit
            estimate(candidate, net)
        per_estimate = (time.perf_counter() - t1) / max(len(kept), 1)
        print(f"| {gpus:,} | {len(out):,} | {pruned:,} | {fit:,} | {dt:.1f} | {60 * len(out) / dt:,.0f} "
              f"| {60 / per_estimate:,.0f} |")


if __name__ == "__main__":
    main()
