"""Qualitative reproductions of the placement papers' findings (docs/placement.md has the results and the
comparison with the papers). Reads the SmartMoE trace from ../shared (GPL-3.0; read, never copied).
Usage: .venv/bin/python benchmarks/placement_repro.py [fig13|replication|fastermoe|tamoe|compare|compare-trace ...]
(default: all). `compare` and `compare-trace` run scenarios/placement-compare.yaml through `moesim sweep` and
`moesim report` into runs/placement-repro/ (a rerun reuses the finished points; delete the folder to simulate
again) and print the report's grid; the other parts need per-op records, so they simulate here."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from moesim.loader import parse_scenario
from moesim.metrics.summary import summarize
from moesim.metrics.types import RunSummary
from moesim.sim.simulate import SimResult, simulate

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
OUT = ROOT / "runs" / "placement-repro"
SMARTMOE_TRACE = ROOT.parent / "shared" / "traces" / "smartmoe-ae" / "counts.npz"


def doc(name: str) -> dict:
    data = yaml.safe_load((SCENARIOS / f"{name}.yaml").read_text())
    data.pop("sweep", None)
    return data


def run(data: dict) -> tuple[SimResult, RunSummary]:
    sc = parse_scenario(copy.deepcopy(data), "repro", SCENARIOS)
    res = simulate(sc)
    return res, summarize(res)


def moe_layer_ms(res: SimResult) -> float:
    """Mean over steps of the slowest rank's dispatch + expert + combine time (waits included): the MoE layer's
    forward + backward, the quantity of SmartMoE's Figure 13."""
    rec = res.records
    moe = rec[rec["op"].isin(["dispatch", "expert", "combine"])]
    per = moe.assign(d=moe["end_s"] - moe["start_s"]).groupby(["step", "rank"])["d"].sum().groupby("step").max()
    return 1e3 * float(per.mean())


def fig13() -> None:
    print("## SmartMoE Figure 13: trace layer 6, 8 GPUs x 4 experts, 300 steps (iterations 1-2,991)")
    print("| placement | MoE layer fwd+bwd (ms) | speedup | step p50 (ms) | accepted changes | migration (ms total) |")
    print("|---|---|---|---|---|---|")
    base = None
    for label, placement in (("static", {"policy": "static"}),
                             ("smartmoe every 10 iterations", {"policy": "smartmoe", "smartmoe": {"freq": 1, "history_steps": 1}}),
                             ("smartmoe every 100 iterations", {"policy": "smartmoe", "smartmoe": {"freq": 10, "history_steps": 1}})):
        data = doc("smartmoe-fig13")
        data["placement"] = placement
        res, s = run(data)
        ms = moe_layer_ms(res)
        base = base or ms
        print(f"| {label} | {ms:.2f} | {base / ms:.2f}x | {1e3 * s.step_time_s:.2f} | {s.placement.changes} "
              f"| {1e3 * s.placement.migration_s:.1f} |")


def replication() -> None:
    print("## Replication (EPLB, FlexMoE) vs swap-only re-placement (SmartMoE): trace layer 6, 8 GPUs, 5 slots each")
    print("| placement | MoE layer fwd+bwd (ms) | balance ratio mean | step p50 (ms) | changes |")
    print("|---|---|---|---|---|")
    for label, placement in (("static", {"policy": "static"}),
                             ("smartmoe (every 100 iterations)", {"policy": "smartmoe", "smartmoe": {"freq": 10, "history_steps": 1}}),
                             ("flexmoe", {"policy": "flexmoe"}),
                             ("eplb, 8 redundant experts (every 100 iterations)", {"policy": "eplb", "eplb": {"redundant_experts": 8, "period_steps": 10, "history_steps": 10}})):
        data = doc("smartmoe-fig13")
        data["placement"] = {"slots_per_gpu": 5, **placement}
        res, s = run(data)
        print(f"| {label} | {moe_layer_ms(res):.2f} | {s.placement.balance_ratio_mean:.2f} | "
              f"{1e3 * s.step_time_s:.2f} | {s.placement.changes} |")


def fastermoe() -> None:
    print("## FasterMoE shadowing: one hot expert taking a share of all assignments (hot_set), OLMoE-1B-7B, dropless")
    print("| cluster | hot share | static step p50 (ms) | fastermoe step p50 (ms) | speedup | shadow cost (ms/step) |")
    print("|---|---|---|---|---|---|")
    for nodes in (1, 2):
        for share in (0.02, 0.1, 0.3):
            data = doc("placement-compare")
            data["cluster"]["nodes"] = nodes
            data["layout"] = {"tp": 1, "pp": 1, "dp": 8 * nodes, "ep": 8 * nodes}
            data["training"]["global_batch_size"] = 8 * nodes
            data["routing"] = {"distribution": "hot_set", "hot_experts": 1, "hot_fraction": share}
            data["simulation"]["steps"] = 10
            times = {}
            for policy in ("static", "fastermoe"):
                data["placement"] = {"policy": policy}
                _, s = run(data)
                times[policy] = s
            st, fm = times["static"].step_time_s, times["fastermoe"].step_time_s
            print(f"| {nodes} x 8 H100 | {share:.2f} | {1e3 * st:.1f} | {1e3 * fm:.1f} | {st / fm:.2f}x | "
                  f"{1e3 * times['fastermoe'].breakdown_s['placement']:.2f} |")


def tamoe() -> None:
    print("## TA-MoE: intra-node share of dispatched bytes, OLMoE-1B-7B on 4 x 8 H100, one EP group of 32, Zipf 0")
    print("| strength | intra-node share | all-to-all (s/step) | NIC bytes (GB/step) | step p50 (s) |")
    print("|---|---|---|---|---|")
    for strength in (0.0, 0.5, 1.0):
        data = doc("a2a-incast")
        data["routing"] = {"distribution": "zipf", "zipf_s": 0.0}
        data["placement"] = {"policy": "ta_moe", "ta_moe": {"strength": strength}}
        res, s = run(data)
        m = res.a2a_matrices.sum(0)  # [ep, ep]
        node = np.arange(32) // 8
        share = m[node[:, None] == node[None, :]].sum() / m.sum()
        print(f"| {strength} | {share:.3f} | {s.breakdown_s['all_to_all']:.3f} | "
              f"{s.network.a2a_bytes_per_step['nic'] / 1e9:.1f} | {s.step_time_s:.3f} |")


def moesim(*args: str) -> str:
    """Run the `moesim` command (this interpreter, this checkout) and return what it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "moesim.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"moesim {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def sweep_and_report(name: str, *flags: str) -> None:
    """`moesim sweep` (resumable) then `moesim report`; prints the report's grid or its table of points."""
    out = OUT / name
    jobs = os.environ.get("MOESIM_JOBS", str(os.cpu_count() or 1))
    printed = moesim("sweep", str(SCENARIOS / "placement-compare.yaml"), "--out", str(out), "--jobs", jobs, *flags)
    print(next(line for line in printed.splitlines() if "points simulated" in line))
    moesim("report", str(out), "--force")
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Step time p50") or line == "## Every point")
    for line in lines[first:]:
        if line.startswith("!["):
            break
        print(line)
    print(f"(figures and report.md in {out.relative_to(ROOT)}/)")


def compare() -> None:
    print("## All six policies over a Zipf sweep: scenarios/placement-compare.yaml")
    sweep_and_report("compare")


def compare_trace() -> None:
    print("## All six policies on the SmartMoE trace: placement-compare.yaml --trace")
    sweep_and_report("compare-trace", "--trace", str(SMARTMOE_TRACE))


def main() -> None:
    parts = {"fig13": fig13, "replication": replication, "fastermoe": fastermoe, "tamoe": tamoe,
             "compare": compare, "compare-trace": compare_trace}
    for name in sys.argv[1:] or list(parts):
        t0 = time.perf_counter()
        parts[name]()
        print(f"({time.perf_counter() - t0:.1f} s)\n", flush=True)


if __name__ == "__main__":
    main()
