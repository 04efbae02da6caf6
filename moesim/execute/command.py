"""`moesim execute PLAN.yaml`: scale the plan to this machine, simulate it (routing + prediction), run it for
real, write the measured records, and with a profile to compare against print predicted vs measured per phase."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moesim.execute.compare import Comparison, compare, format_comparison
from moesim.execute.run import BACKENDS, ExecutedRun, execute, torchrun_world
from moesim.execute.scale import ScaledPlan, scale_plan
from moesim.io.host import cpu_rank_description
from moesim.io.profile import load_profile, resolve_profile
from moesim.io.staged_dir import check_out_dir, default_run_dir
from moesim.loader import load_scenario
from moesim.sim.simulate import LayerRouting, SimResult, simulate
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError
from moesim.spec.scenario import Scenario

# The committed profiles calibrated on this project's CI machine class (2 cores, gloo, one thread per rank), by
# the ranks their collectives were measured with (4 ranks on 2 cores share the cores, which 2 ranks do not); the
# class comes with either CPU, so each rank count lists its profiles, the default first.
CPU_PROFILES = {2: ("cpu-gloo-2c-2r", "cpu-gloo-2c-2r-xeon"), 4: ("cpu-gloo-2c",)}


def default_cpu_profile(nproc: int, cpu: str | None = None) -> str:
    """The committed CPU profile measured with `nproc` ranks (or the nearest above it) on this machine's CPU model
    (`cpu`, default: /proc/cpuinfo's) where one was, else that rank count's default."""
    names = CPU_PROFILES[min((n for n in CPU_PROFILES if n >= nproc), default=max(CPU_PROFILES))]
    here = cpu_rank_description(cpu)
    return next((n for n in names if load_profile(resolve_profile(n)).gpu.name == here), names[0])


def default_nproc(backend: str) -> int:
    if torchrun_world() is not None:
        return torchrun_world()
    if backend == "nccl":
        import torch  # noqa: PLC0415 - torch only for this command

        return torch.cuda.device_count()
    return 2


def prepare(sc: Scenario, nproc: int, backend: str, profile_ref: str | None, steps: int
            ) -> tuple[ScaledPlan, SimResult, list[LayerRouting]]:
    """The scaled plan, its simulation on `profile_ref` (default: the committed CPU profile measured with as many
    ranks for gloo, the plan's own profile for nccl) and the routing the ranks will replay."""
    if profile_ref is not None:
        profile = load_profile(resolve_profile(profile_ref))
    elif backend == "gloo":
        profile = load_profile(resolve_profile(default_cpu_profile(nproc)))
    else:
        profile = sc.cluster.profile
    dtype = Dtype.FP32 if backend == "gloo" else Dtype.BF16
    scaled = scale_plan(sc, nproc, profile, dtype=dtype, steps=steps)
    routing: list[LayerRouting] = []
    try:
        predicted = simulate(scaled.scenario, routing_log=routing)
    except SpecError as err:  # valid as written, not once scaled (e.g. EPLB's spare slots on fewer ranks)
        raise SpecError(f"scaled plan: {err.key}", err.value, f"{err.expected} (scaled to {nproc} ranks and "
                        f"{scaled.scenario.model.num_experts} experts: pass another --nproc or change the plan)"
                        ) from None
    return scaled, predicted, routing


def comparison_of(run: ExecutedRun, predicted: SimResult) -> Comparison:
    return compare(predicted.records, predicted.step_times_s, run.records, run.step_times_s, run.measured_steps,
                   run.scenario.layout.world_size)


def execute_plan(plan_file: Path, steps: int, backend: str, nproc: int | None, threads: int,
                 compare_profile: str | None, out: Path | None, force: bool, timeout_s: float,
                 progress: Callable[[int, int], None] | None = None, command: str = "moesim execute") -> int:
    from moesim.execute.output import summary_dict, write_execution  # noqa: PLC0415 - pandas/parquet writers

    if backend not in BACKENDS:
        raise SpecError("--backend", backend, "gloo (CPU ranks) or nccl (one GPU per rank)")
    if steps < 1:
        raise SpecError("--steps", steps, "an integer >= 1")
    if threads < 1:
        raise SpecError("--threads", threads, "an integer >= 1")
    sc = load_scenario(plan_file)
    nproc = nproc if nproc is not None else default_nproc(backend)
    if nproc < 1:
        raise SpecError("--nproc", nproc, "an integer >= 1" + (" (no GPU found for nccl)" if backend == "nccl"
                                                               else ""))
    out = out if out is not None else default_run_dir(f"{sc.name}-execute")
    check_out_dir(out, force)  # refuse before the run, not after
    scaled, predicted, routing = prepare(sc, nproc, backend, compare_profile, steps)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        print(f"executing {plan_file} on {nproc} {backend} ranks, scaled:")
        print("\n".join(f"  {line}" for line in scaled.changes))
        sys.stdout.flush()
    run = execute(scaled.scenario, routing, backend, threads, timeout_s, progress)
    if run is None:  # another torchrun rank: rank 0 reports
        return 0
    comparison = comparison_of(run, predicted) if compare_profile is not None else None
    measured = run.step_times_s[run.measured_steps]
    print(f"measured on {run.device}: step time median {float(np.median(measured)) * 1e3:.1f} ms "
          f"over {len(measured)} steps ({', '.join(f'{x * 1e3:.1f}' for x in measured)} ms)")
    if comparison is not None:
        print(f"predicted by {compare_profile} vs measured, per rank and step:")
        print(format_comparison(comparison))
    summary = summary_dict(run, predicted, scaled.changes, comparison, command)
    paths = write_execution(out, run, predicted, summary, comparison, force)
    print(f"wrote {len(paths)} files to {out}/: {', '.join(p.name for p in paths)}")
    return 0
