"""Speed of one uneven all-to-all timed by the flow-level network model (link-bound solver, direct and
hierarchical algorithms, PXN on rails, DGX H100 nodes) for 64 -> 4,096 GPUs, on ONE core (BLAS threads pinned to 1 before numpy loads).
The byte matrix: each GPU routes 4,096 tokens x top-8 with Zipf(0.8) destination shares, 14,336-byte rows.
Usage: .venv/bin/python benchmarks/bench_network.py"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from moesim.io.profile import PROFILE_DIR, load_profile  # noqa: E402
from moesim.network.flow import FlowNetwork  # noqa: E402
from moesim.spec import ClusterSpec  # noqa: E402
from moesim.spec.network import AllToAllAlgorithm, FlowSolver, NetworkSpec  # noqa: E402


def main() -> None:
    profile = load_profile(Path(PROFILE_DIR) / "dgx-h100.yaml")
    print(f"{'GPUs':>6} {'algorithm':>13} {'best of 5 (ms)':>15} {'all-to-all time (s)':>20}")
    for gpus in (64, 256, 1024, 2048, 4096):
        rng = np.random.default_rng(0)
        shares = np.arange(1, gpus + 1, dtype=float) ** -0.8
        matrix = rng.multinomial(4096 * 8, shares / shares.sum(), size=gpus) * 14336.0
        ranks = np.arange(gpus)
        for algorithm in AllToAllAlgorithm:
            net = FlowNetwork(ClusterSpec(profile, gpus // 8), NetworkSpec(solver=FlowSolver.BOUND,
                                                                          all_to_all=algorithm))
            best = min(_timed(net, matrix, ranks) for _ in range(5))
            print(f"{gpus:>6} {algorithm.value:>13} {1e3 * best:>15.1f} "
                  f"{float(net.all_to_all_s(matrix, ranks)):>20.4f}", flush=True)


def _timed(net, matrix, ranks) -> float:
    t0 = time.perf_counter()
    net.all_to_all_s(matrix, ranks)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
