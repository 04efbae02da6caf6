"""Speed of `moe_layer_work` (gate, placement split, all-to-all timing and link bytes) for one step of the
DeepSeek-V3-like scenario of bench_scale.py: every MoE layer of one step's routing draw, best of --repeat.

Usage: .venv/bin/python benchmarks/bench_layer_work.py [--gpus 1024 2048] [--repeat 3] [--profile]
(`taskset -c 0` and OPENBLAS_NUM_THREADS=1 for one core). The routing draw and placement are made once, outside
the timed part. glibc hands large temporaries back to the OS between calls, so part of the time is page faults:
MALLOC_MMAP_THRESHOLD_=1000000000 shows how much (at 2,048 GPUs on a 2-core x86 VM: 3.4 s -> 2.0 s).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import LAYOUTS, scenario_for

from moesim.loader import load_scenario
from moesim.network import build_network
from moesim.sim.placement_driver import PlacementDriver
from moesim.sim.simulate import _Loads, _rngs  # the simulator's own routing draw
from moesim.sim.workload import moe_layer_work


def one_step(gpus: int):
    """(scenario, network, loads [M, moe layers, q, E], placements, MoE layer indices) of step 0."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ds{gpus}.yaml"
        path.write_text(yaml.safe_dump(scenario_for(gpus)))
        sc = load_scenario(path)
    m = sc.model
    moe_layers = [i for i in range(m.num_layers) if m.is_moe_layer(i)]
    routing_rng, _, _ = _rngs(sc)
    loads, placements, _ = PlacementDriver(sc, moe_layers).step(0, _Loads(sc, len(moe_layers), routing_rng).step(0))
    return sc, build_network(sc.cluster, sc.network), loads, placements, moe_layers


def run_layers(sc, net, loads, placements, moe_layers) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i, layer in enumerate(moe_layers):
        moe_layer_work(sc, net, net, loads[:, i], sc.stage_of_layer(layer), rng, placements[layer])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1024], choices=sorted(LAYOUTS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the 15 costliest functions of one repeat")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'GPUs':>6} {'MoE layers':>11} {'micro-batches':>14} {'moe_layer_work s/step':>22}")
    for gpus in args.gpus:
        work = one_step(gpus)
        best = min(run_layers(*work) for _ in range(args.repeat))
        print(f"{gpus:>6} {len(work[4]):>11} {work[2].shape[0]:>14} {best:>22.3f}", flush=True)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run_layers, *work)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
