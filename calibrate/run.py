#!/usr/bin/env python3
"""Calibrate-on-cluster: time the collectives (and the pair matrix) on every rank of a torchrun or srun job and
write a samples directory that `moesim calibrate --from-samples DIR --out hw_profiles/NAME.yaml` turns into a
hardware profile. See calibrate/README.md.

    torchrun --nnodes N --nproc-per-node G [rendezvous options] calibrate/run.py --out samples/DIR [--quick]
    srun --ntasks-per-node G python calibrate/run.py --out samples/DIR        (MASTER_ADDR exported)

Rank 0 writes DIR/collectives.csv, p2p.csv, tiers.json, meta.json, and progress.csv as it goes. Exit status 0
on success; 1 with ONE line on stderr naming the rank, the operation and the reason otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from moesim.calibration.collectives import (COLLECTIVE_OPS, FULL_SIZES_BYTES, P2P_FULL_BYTES,
                                            P2P_QUICK_BYTES, QUICK_SIZES_BYTES, report_error)
from moesim.calibration.errors import CalibrationError
from moesim.calibration.launch import SamplePlan, init_from_env, measure_and_write
from moesim.spec.errors import SpecError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}  # binary, as nccl-tests' -b/-e


def parse_bytes(text: str) -> int:
    """'4096', '4K', '256KiB', '1M', '2G' -> bytes (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS or int(match.group(1)) <= 0:
        raise SpecError("--sizes", text, "a positive size like 4096, 4K, 1M or 1G (binary multiples)")
    return int(match.group(1)) * _UNITS[unit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="samples directory to write (rank 0)")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {', '.join(str(s) for s in QUICK_SIZES_BYTES)} B, 5 repeats, 2 warm-ups, "
                             f"p2p {P2P_QUICK_BYTES} B (default: 1 KiB..1 GiB x2, 20 repeats, 5 warm-ups, "
                             f"p2p {P2P_FULL_BYTES} B)")
    parser.add_argument("--sizes", nargs="+", metavar="SIZE", help="per-rank sizes (nccl-tests 'size'), e.g. 4K 1M")
    parser.add_argument("--repeats", type=int, help="timed runs per case")
    parser.add_argument("--warmup", type=int, help="untimed runs per case")
    parser.add_argument("--p2p-bytes", metavar="SIZE", help="pair-matrix message size; 0 skips the matrix")
    parser.add_argument("--ops", nargs="+", choices=COLLECTIVE_OPS, default=list(COLLECTIVE_OPS))
    parser.add_argument("--skew", type=float, default=4.0,
                        help="all_to_all_skewed: the hot rank's share / another rank's share (default 4)")
    parser.add_argument("--timeout-s", type=float, default=300.0,
                        help="longest one collective may take before the run is declared failed (default 300)")
    parser.add_argument("--ranks-per-node", type=int,
                        help="pretend nodes of this many ranks (default: torchrun's nodes, else hostnames)")
    return parser


def plan_from_args(args: argparse.Namespace) -> SamplePlan:
    sizes = [parse_bytes(s) for s in args.sizes] if args.sizes else list(
        QUICK_SIZES_BYTES if args.quick else FULL_SIZES_BYTES)
    p2p_default = P2P_QUICK_BYTES if args.quick else P2P_FULL_BYTES
    p2p_bytes = p2p_default if args.p2p_bytes is None else (0 if args.p2p_bytes.strip() == "0"
                                                             else parse_bytes(args.p2p_bytes))
    return SamplePlan(out_dir=str(args.out), sizes_bytes=tuple(sizes),
                      repeats=args.repeats if args.repeats is not None else (5 if args.quick else 20),
                      warmup=args.warmup if args.warmup is not None else (2 if args.quick else 5),
                      p2p_bytes=p2p_bytes, op_timeout_s=args.timeout_s, ops=tuple(args.ops), skew=args.skew,
                      ranks_per_node=args.ranks_per_node,
                      extra_meta={"mode": "quick" if args.quick else "full", "command": sys.argv})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_s = time.monotonic()
    try:
        plan = plan_from_args(args)
        info = init_from_env(timeout_s=plan.op_timeout_s)
        measure_and_write(plan)
    except (CalibrationError, SpecError) as exc:
        report_error(f"calibrate/run.py: {exc}")
        os._exit(1)  # peers may be gone: a normal teardown of the process group could block
    import torch.distributed as dist  # noqa: PLC0415

    dist.destroy_process_group()
    if info.rank == 0:
        print(f"calibrate/run.py: {info.world_size} ranks ({info.backend}) measured in "
              f"{time.monotonic() - start_s:.1f} s; samples in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
