"""Peak memory and wall time of `simulate()` + `summarize()` against the global batch size, with the
estimate of moesim.sim.estimate beside each measurement.

Each point runs in a fresh Python process (so its VmHWM is that run's own peak) on a copy of a scenario with
`training.global_batch_size` replaced. Usage:
    .venv/bin/python benchmarks/bench_memory.py [--scenario scenarios/quickstart.yaml] [--batch 32 256 1024 4096]
    .venv/bin/python benchmarks/bench_memory.py --shipped        # every scenarios/*.yaml as it is
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def child(path: str) -> None:
    """Runs in the fresh process: load, simulate, summarize; print one JSON line."""
    from moesim.metrics.summary import summarize
    from moesim.sim.simulate import simulate

    sc = first_point(path)
    baseline_bytes = peak_rss_bytes()  # imports + scenario, before the run
    t0 = time.perf_counter()
    result = simulate(sc)
    sim_s = time.perf_counter() - t0
    summary = summarize(result)
    wall_s = time.perf_counter() - t0
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline_bytes,
                      "wall_s": wall_s, "simulate_s": sim_s, "record_rows": len(result.records),
                      "step_time_s": summary.step_time_s}))


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM of its own address space. Not ru_maxrss, which Linux
    carries over from the parent into a child started by vfork + exec."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except OSError:  # not Linux: ru_maxrss is KiB on most Unixes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"run failed for {path}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate(path: Path):
    try:
        from moesim.sim.estimate import estimate_cost
    except ImportError:  # the estimator did not exist when the "before" numbers were taken
        return None
    return estimate_cost(first_point(path))


def first_point(path: Path | str):
    """The scenario itself, or the first point of its sweep."""
    from moesim.loader import load_scenarios

    return load_scenarios(path)[1][0][1]


def with_batch(base: Path, batch: int, workdir: Path) -> Path:
    doc = yaml.safe_load(base.read_text())
    doc["training"]["global_batch_size"] = batch
    doc["name"] = f"{doc.get('name', base.stem)}-gbs{batch}"
    path = workdir / f"{base.stem}-gbs{batch}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def row(label: str, path: Path) -> str:
    got, est = measure(path), estimate(path)
    mib = 2.0 ** 20
    text = (f"{label:>24} {got['record_rows']:>11,} {got['peak_rss_bytes'] / mib:>9.0f} "
            f"{(got['peak_rss_bytes'] - got['baseline_rss_bytes']) / mib:>9.0f} {got['wall_s']:>8.1f}")
    if est is not None:
        text += (f" | {est.record_rows:>11,} {est.peak_memory_bytes / mib:>9.0f} {est.wall_s:>8.1f}"
                 f"  x{est.peak_memory_bytes / got['peak_rss_bytes']:.2f} mem, x{est.wall_s / got['wall_s']:.2f} time")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--scenario", type=Path, default=QUICKSTART)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256, 1024, 4096])
    ap.add_argument("--shipped", action="store_true", help="measure every scenarios/*.yaml as shipped")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; peak = VmHWM of a fresh process (imports included), "
          f"run = peak minus the RSS before simulate()")
    print(f"{'scenario':>24} {'rows':>11} {'peak MiB':>9} {'run MiB':>9} {'wall s':>8} | "
          f"{'est rows':>11} {'est MiB':>9} {'est s':>8}  estimate / measured")
    if args.shipped:
        for path in sorted((ROOT / "scenarios").glob("*.yaml")):
            print(row(path.stem, path), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch:
            print(row(f"{args.scenario.stem} gbs {batch}", with_batch(args.scenario, batch, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
