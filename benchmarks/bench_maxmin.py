"""Speed of the max-min fair flow solver (moesim.network.maxmin) on instances shaped like an aggregated
2,048-GPU uneven all-to-all: F weighted rows, each crossing 2-4 distinct links out of ~6,000, skewed bytes.

Cases vary the number of rows and how many distinct byte sizes they have (distinct finishing times drive the
number of completion events; column t_done counts distinct completion times), exact (ties only) and with lazy reallocation (reallocation_rtol).
Usage: .venv/bin/python benchmarks/bench_maxmin.py [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from moesim.network.maxmin import flow_completion_times, link_bound_s, max_min_rates_bytes_per_s

N_LINKS = 6000
CAPACITY_BYTES_PER_S = 50e9


def instance(rng: np.random.Generator, n_rows: int, n_byte_levels: int | None):
    """Rows crossing 2-4 distinct links; lognormal (sigma 1) bytes, optionally snapped to n_byte_levels sizes."""
    nlinks = rng.integers(2, 5, size=n_rows)
    indptr = np.concatenate([[0], np.cumsum(nlinks)])
    # distinct links per row: 4 draws from disjoint quarters of the link range, keep the first nlinks
    quarter = N_LINKS // 4
    picks = rng.integers(0, quarter, size=(n_rows, 4)) + np.arange(4) * quarter
    indices = picks[np.arange(4)[None, :] < nlinks[:, None]]
    flow_bytes = rng.lognormal(np.log(4e6), 1.0, size=n_rows)
    if n_byte_levels is not None:
        levels = np.quantile(flow_bytes, np.linspace(0, 1, n_byte_levels))
        flow_bytes = levels[np.abs(flow_bytes[:, None] - levels[None, :]).argmin(1)]
    weight = rng.integers(1, 17, size=n_rows)
    capacity = np.full(N_LINKS, CAPACITY_BYTES_PER_S) * rng.choice([1.0, 0.5, 2.0], size=N_LINKS)
    return (indptr, indices), flow_bytes, weight, capacity


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"numpy {np.__version__}, python {platform.python_version()}, {platform.processor() or platform.machine()}")
    print(f"{'rows':>6} {'byte sizes':>10} {'rtol':>7} {'t_done':>6} {'ms/solve':>9} {'rates ms':>8} "
          f"{'makespan/bound':>14} {'vs exact':>9}")
    for n_rows in (5_000, 10_000, 30_000):
        for levels in (8, 64, None):
            rng = np.random.default_rng(args.seed)
            links, nbytes, weight, cap = instance(rng, n_rows, levels)
            rates_ms = best_ms(lambda links=links, weight=weight, cap=cap: max_min_rates_bytes_per_s(links, weight, cap),
                               args.repeats)
            bound = link_bound_s(links, nbytes, weight, cap)
            exact = None
            for rtol in (1e-12, 1e-2, 5e-2, 2e-1):
                if rtol == 1e-12 and n_rows > 10_000:
                    continue  # one event per row: seconds, not ms
                t = flow_completion_times(links, nbytes, weight, cap, reallocation_rtol=rtol)
                events = np.unique(t).size
                ms = best_ms(lambda links=links, nbytes=nbytes, weight=weight, cap=cap, rtol=rtol:
                             flow_completion_times(links, nbytes, weight, cap, reallocation_rtol=rtol),
                             1 if events > 2000 else args.repeats)
                exact = t if rtol == 1e-12 else exact
                err = "" if exact is None else f"{np.abs(t / exact - 1).max():9.2%}"
                print(f"{n_rows:>6} {str(levels or 'all'):>10} {rtol:>7.0e} {events:>6} {ms:>9.1f} {rates_ms:>8.2f} "
                      f"{t.max() / bound:>14.4f} {err}")


if __name__ == "__main__":
    main()
