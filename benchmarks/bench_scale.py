"""Speed of `moesim run` for a DeepSeek-V3-like scenario at 64, 256 and 1,024 GPUs.

Each size runs `moesim run` (1 measured step, all output files written) in a fresh process and reports its
wall time and peak resident memory. Usage: .venv/bin/python benchmarks/bench_scale.py [--gpus 64 256 1024]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "deepseek-v3-256.yaml"

# gpus -> (pp, dp = ep); 64 layers split over pp stages; 32 micro-batches of one sequence per dp rank.
LAYOUTS = {64: (8, 8), 256: (16, 16), 512: (16, 32), 1024: (16, 64), 2048: (16, 128), 4096: (16, 256)}


def scenario_for(gpus: int) -> dict:
    pp, dp = LAYOUTS[gpus]
    doc = yaml.safe_load(BASE.read_text())
    doc["name"] = f"deepseek-v3-{gpus}"
    doc["cluster"]["nodes"] = gpus // 8
    doc["cluster"]["profile"] = str(ROOT / "hw_profiles" / "dgx-h100.yaml")
    doc["layout"] = {"tp": 1, "pp": pp, "dp": dp, "ep": dp, "etp": 1}
    doc["training"]["global_batch_size"] = 32 * dp
    doc["simulation"] = {"steps": 1, "warmup_steps": 0, "seed": 0}
    return doc


def run_one(gpus: int, workdir: Path) -> tuple[float, float, str]:
    path = workdir / f"ds{gpus}.yaml"
    path.write_text(yaml.safe_dump(scenario_for(gpus)))
    moesim = Path(sys.executable).with_name("moesim")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(moesim), "run", str(path), "--out", str(workdir / f"out{gpus}")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"moesim run failed for {gpus} GPUs:\n{out}")
    step = next(line for line in out.splitlines() if line.startswith("step time"))
    return wall_s, usage.ru_maxrss / 1024, step  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, nargs="+", default=[64, 256, 1024], choices=sorted(LAYOUTS))
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'GPUs':>6} {'layout':>20} {'wall s':>8} {'peak RSS MiB':>13}  simulated")
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in args.gpus:
            pp, dp = LAYOUTS[gpus]
            wall_s, rss_mib, step = run_one(gpus, Path(tmp))
            print(f"{gpus:>6} {f'pp{pp} dp{dp} ep{dp}':>20} {wall_s:8.1f} {rss_mib:13.0f}  {step}", flush=True)


if __name__ == "__main__":
    main()
