"""What one simulated step costs as the cluster and the pipeline grow, and how sweeps scale with cores.

1. One step of the DeepSeek-V3-like scenario (scenarios/deepseek-v3-256.yaml re-laid out: pp 16, dp = ep,
   32 micro-batches of one 4,096-token sequence per pipeline) at 64 ... 4,096 GPUs.
2. The same at 512 GPUs with 8 ... 256 micro-batches per pipeline (a global batch of 256 ... 8,192 sequences).
3. `moesim sweep scenarios/skew-sweep.yaml` (20 points) with --jobs 1 and with one job per CPU.

Each simulation runs `simulate()` + `summarize()` in a fresh process on one core (taskset -c 0 where it exists,
one BLAS thread) and reports wall time, CPU time and peak memory (VmHWM: the process's own peak, imports
included), beside moesim's own estimate (moesim/sim/estimate.py). `--records summary` keeps per-rank sums only
(simulation.records); `--draws normal` uses the approximate routing draws (simulation.routing_draws).

Usage: .venv/bin/python benchmarks/bench_scale.py [--gpus 64 256 ...] [--micro-batches 8 16 ...] [--no-sweep]
                                                  [--records full|per_rank|summary] [--draws exact|normal]
                                                  [--plot PATH [--force]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "deepseek-v3-256.yaml"

# gpus -> (pp, dp = ep); 64 layers split over pp stages.
LAYOUTS = {64: (8, 8), 256: (16, 16), 512: (16, 32), 1024: (16, 64), 2048: (16, 128), 4096: (16, 256)}
MICRO_BATCH_GPUS = 512

_CHILD = """
import json, sys, time
from pathlib import Path
import yaml
from moesim.loader import parse_scenario
from moesim.metrics.summary import summarize
from moesim.sim.estimate import estimate_cost
from moesim.sim.simulate import simulate
sc = parse_scenario(yaml.safe_load(Path(sys.argv[1]).read_text()), "bench", Path(sys.argv[1]).parent)
est = estimate_cost(sc)
w0, c0 = time.perf_counter(), time.process_time()
summary = summarize(simulate(sc))
wall_s, cpu_s = time.perf_counter() - w0, time.process_time() - c0
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"wall_s": wall_s, "cpu_s": cpu_s, "peak_bytes": peak, "step_time_s": summary.step_time_s,
                  "records": est.record_rows, "est_wall_s": est.wall_s, "est_peak_bytes": est.peak_memory_bytes}))
"""


def scenario_for(gpus: int, micro_batches: int = 32, records: str = "full", draws: str = "exact") -> dict:
    pp, dp = LAYOUTS[gpus]
    doc = yaml.safe_load(BASE.read_text())
    doc["name"] = f"deepseek-v3-{gpus}"
    doc["cluster"]["nodes"] = gpus // 8
    doc["cluster"]["profile"] = str(ROOT / "hw_profiles" / "dgx-h100.yaml")
    doc["layout"] = {"tp": 1, "pp": pp, "dp": dp, "ep": dp, "etp": 1}
    doc["training"]["global_batch_size"] = micro_batches * dp
    doc["simulation"] = {"steps": 1, "warmup_steps": 0, "seed": 0, "records": records, "routing_draws": draws}
    return doc


def _one_core() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def measure(doc: dict, workdir: Path) -> dict:
    path = workdir / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([*_one_core(), sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{doc['name']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(label: str, layout: str, r: dict) -> str:
    return (f"| {label} | {layout} | {r['records'] / 1e6:.2f} M | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s "
            f"| {r['peak_bytes'] / 2**20:,.0f} MiB | {r['est_wall_s']:.1f} s, {r['est_peak_bytes'] / 2**20:,.0f} MiB "
            f"| {r['step_time_s']:.3f} s |")


HEADER = ("| {what} | layout | records | wall | CPU | peak memory | estimate | simulated step |\n"
          "|---|---|---|---|---|---|---|---|")


def sweep_throughput(jobs: int, workdir: Path) -> float:
    out = workdir / f"sweep-{jobs}"
    moesim = Path(sys.executable).with_name("moesim")
    t0 = time.perf_counter()
    proc = subprocess.run([str(moesim), "sweep", str(ROOT / "scenarios" / "skew-sweep.yaml"), "--jobs", str(jobs),
                           "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"moesim sweep --jobs {jobs} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def plot(path: Path, by_gpus: dict[int, dict]) -> None:
    import matplotlib  # only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = sorted(by_gpus)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(gpus, [by_gpus[g]["wall_s"] for g in gpus], "o-", label="wall time (s)")
    ax.plot(gpus, [by_gpus[g]["peak_bytes"] / 2**30 for g in gpus], "s--", label="peak memory (GiB)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(gpus, [str(g) for g in gpus])
    ax.set_xlabel("simulated GPUs (one step, 32 micro-batches per pipeline)")
    ax.set_title("moesim: cost of one simulated step, one core")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="*", default=sorted(LAYOUTS), choices=sorted(LAYOUTS))
    ap.add_argument("--micro-batches", type=int, nargs="*", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep throughput")
    ap.add_argument("--records", default="full", choices=("full", "per_rank", "summary"))
    ap.add_argument("--draws", default="exact", choices=("exact", "normal"))
    ap.add_argument("--plot", type=Path, help="write the cost-vs-GPUs figure here (PNG)")
    ap.add_argument("--force", action="store_true", help="replace an existing --plot file")
    args = ap.parse_args()
    if args.plot is not None and args.plot.exists() and not args.force:
        raise SystemExit(f"--plot {args.plot} exists; pass --force to replace it")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, one core per "
          f"simulation{' (taskset -c 0)' if _one_core() else ''}, records {args.records}, draws {args.draws}, "
          f"{time.strftime('%Y-%m-%d')}")
    by_gpus = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpus:
            print(HEADER.format(what="GPUs"))
        for gpus in args.gpus:
            pp, dp = LAYOUTS[gpus]
            by_gpus[gpus] = r = measure(scenario_for(gpus, 32, args.records, args.draws), Path(tmp))
            print(_row(f"{gpus:,}", f"pp{pp} dp{dp} ep{dp}, 32 mb", r), flush=True)
        if args.micro_batches:
            print()
            print(HEADER.format(what="micro-batches"))
        pp, dp = LAYOUTS[MICRO_BATCH_GPUS]
        for mbs in args.micro_batches:
            r = measure(scenario_for(MICRO_BATCH_GPUS, mbs, args.records, args.draws), Path(tmp))
            print(_row(str(mbs), f"{MICRO_BATCH_GPUS} GPUs pp{pp} dp{dp} ep{dp}", r), flush=True)
        if not args.no_sweep:
            cores = os.cpu_count() or 1
            print()
            print("| sweep (skew-sweep.yaml, 20 points) | wall | points/s |\n|---|---|---|")
            for jobs in sorted({1, cores}):
                wall_s = sweep_throughput(jobs, Path(tmp))
                print(f"| --jobs {jobs} | {wall_s:.1f} s | {20 / wall_s:.2f} |", flush=True)
    if args.plot is not None and by_gpus:
        plot(args.plot, by_gpus)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
