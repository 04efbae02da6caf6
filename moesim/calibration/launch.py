"""Start calibration ranks: on this machine (run_local: spawned gloo processes, e.g. CPU ranks or a test) or
under torchrun / srun (init_from_env), and the worker that measures and writes a samples directory.

A samples directory (what `moesim calibrate --from-samples DIR` reads) holds:
- collectives.csv: COLLECTIVE_COLUMNS rows for the collectives (src = dst = -1);
- p2p.csv: COLLECTIVE_COLUMNS rows of the pair matrix (op "p2p", tier "pair");
- tiers.json: discover_tiers(p2p) - pair-bandwidth tiers and the ranks joined by the fastest one;
- meta.json: backend, world size, hosts, versions, NCCL_* variables, the plan;
- progress.csv: every row as it was measured (the part that survives a crash).
Each file but progress.csv is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, UTC
from multiprocessing.connection import wait as wait_for_any
from pathlib import Path
from collections.abc import Callable, Sequence

import pandas as pd

from moesim.calibration.collectives import (COLLECTIVE_OPS, ELEMENT_BYTES, ERROR_FILE_ENV, RANKS_PER_NODE_ENV,
                                            STEP_FILE_ENV,
                                            discover_layout, discover_tiers, gather_hostnames,
                                            measure_collectives, measure_p2p_matrix, report_error)
from moesim.calibration.errors import CalibrationError
from moesim.io.results import write_json_atomic, write_parquet_atomic, write_text_atomic
from moesim.spec.errors import SpecError

DEFAULT_MASTER_PORT = 29500
NO_ERROR_LINE = " (no error line: it exited without raising - os._exit, a signal, a start-up crash; see its stderr)"


def write_samples_atomic(frame: pd.DataFrame, path: Path) -> None:
    """CSV (or Parquet when the name ends in .parquet) of `frame`, atomically (moesim.io.results)."""
    if Path(path).suffix == ".parquet":
        write_parquet_atomic(path, frame)
    else:
        write_text_atomic(path, frame.to_csv(index=False))


# ------------------------------------------------------------------------------------------------ the worker

@dataclass(frozen=True)
class SamplePlan:
    """What calibration_worker measures and where it writes (see the module docstring for the files).

    sizes_bytes: nccl-tests per-rank sizes; p2p_bytes: pair-matrix message size (0: no pair matrix);
    op_timeout_s: the longest one step (one repeat of one case) may take; progress_path: default
    out_dir/progress.csv."""

    out_dir: str
    sizes_bytes: tuple[int, ...]
    repeats: int
    warmup: int
    p2p_bytes: int
    op_timeout_s: float
    ops: tuple[str, ...] = COLLECTIVE_OPS
    skew: float = 4.0
    progress_path: str | None = None
    ranks_per_node: int | None = None
    extra_meta: dict = field(default_factory=dict)

    @property
    def progress(self) -> Path:
        return Path(self.progress_path) if self.progress_path else Path(self.out_dir) / "progress.csv"


def _run_meta(plan: SamplePlan, hostnames: list[str] | None, layout_hosts: list[list[int]]) -> dict:
    """Provenance for the profile: versions, devices, the NCCL_* environment, the plan."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    backend = dist.get_backend()
    meta = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "backend": backend,
        "world_size": dist.get_world_size(),
        "hosts": layout_hosts,
        "hostnames": hostnames,
        "element_dtype": "float32",
        "element_bytes": ELEMENT_BYTES,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if backend == "nccl" else "cpu",
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if backend == "nccl" else None,
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("NCCL_", "MOESIM_")) and k not in (ERROR_FILE_ENV, STEP_FILE_ENV)},
        "plan": {k: v for k, v in asdict(plan).items() if k not in ("extra_meta",)},
    }
    meta.update(plan.extra_meta)
    return meta


def measure_and_write(plan: SamplePlan) -> None:
    """Measure collectives, then the pair matrix, and have rank 0 write the samples directory. Call on every
    rank of an initialised process group."""
    import torch.distributed as dist  # noqa: PLC0415

    rank = dist.get_rank()
    out_dir = Path(plan.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        plan.progress.unlink(missing_ok=True)  # progress of THIS run only
    collectives = measure_collectives(list(plan.sizes_bytes), plan.repeats, plan.warmup, ops=plan.ops,
                                      skew=plan.skew, timeout_s=plan.op_timeout_s, progress_path=plan.progress,
                                      ranks_per_node=plan.ranks_per_node)
    p2p = None
    if plan.p2p_bytes > 0 and dist.get_world_size() > 1:
        p2p = measure_p2p_matrix(plan.p2p_bytes, plan.repeats, plan.warmup, timeout_s=plan.op_timeout_s,
                                 progress_path=plan.progress, ranks_per_node=plan.ranks_per_node)
    layout = discover_layout(plan.ranks_per_node)
    hostnames = gather_hostnames()
    if rank != 0:
        return
    meta = _run_meta(plan, hostnames, [list(h) for h in layout.hosts])
    write_samples_atomic(collectives, out_dir / "collectives.csv")
    if p2p is not None:
        write_samples_atomic(p2p, out_dir / "p2p.csv")
        write_json_atomic(out_dir / "tiers.json", discover_tiers(p2p))
    write_json_atomic(out_dir / "meta.json", meta)


def calibration_worker(rank: int, world_size: int, plan: SamplePlan) -> None:
    """run_local worker: measure_and_write on each spawned rank."""
    measure_and_write(plan)


# ------------------------------------------------------------------------------------------ local processes

def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it before rank 0 binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, ranks_per_node: int | None, op_timeout_s: float,
               error_file: str, worker_fn: Callable, args: tuple) -> None:
    """One spawned rank: gloo on 127.0.0.1, one thread (ranks share the cores), then worker_fn. A failure is
    written as one line to `error_file` for the parent, and the process exits 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ[ERROR_FILE_ENV] = error_file
    os.environ[STEP_FILE_ENV] = error_file + ".step"
    if ranks_per_node is not None:
        os.environ[RANKS_PER_NODE_ENV] = str(ranks_per_node)
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    torch.set_num_threads(1)
    code = 0
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=op_timeout_s))
        worker_fn(rank, world_size, *args)
    except (CalibrationError, SpecError) as exc:
        report_error(str(exc))
        code = 1
    except BaseException as exc:
        traceback.print_exc()
        report_error(f"rank {rank}: {type(exc).__name__}: {' '.join(str(exc).split())}")
        code = 1
    finally:
        if dist.is_initialized() and code == 0:
            dist.destroy_process_group()  # after a failure peers may be gone: teardown could block
    if code:
        sys.stdout.flush()
        os._exit(code)  # skip interpreter teardown: gloo threads blocked on dead peers must not hold us


def _first_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[0] if lines else None


def _last_progress_line(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1] if len(lines) > 1 else None  # line 0 is the header


def _exit_text(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _stop(processes: Sequence) -> None:
    """Terminate, then kill what is left; never blocks for long."""
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=2.0)


def run_local(world_size: int, worker_fn: Callable, args: tuple = (), ranks_per_node: int | None = None,
              timeout_s: float = 300.0, *, op_timeout_s: float | None = None,
              progress_path: Path | None = None) -> None:
    """Run worker_fn(rank, world_size, *args) on `world_size` spawned processes of this machine, joined by a
    gloo process group on 127.0.0.1. worker_fn must be importable (module level) for spawn.

    ranks_per_node: pretend nodes of that many ranks (sets MOESIM_RANKS_PER_NODE in the ranks). timeout_s: the
    deadline for the whole run, start-up included. op_timeout_s: the process-group timeout of one collective
    (default timeout_s). Returns when every rank exited 0; else ends the others and raises CalibrationError
    naming the failed rank(s) with their one-line errors, the ranks still running, and the last row in
    progress_path if any."""
    if not (isinstance(world_size, int) and world_size >= 1):
        raise SpecError("world_size", world_size, "an integer >= 1")
    if ranks_per_node is not None and not (isinstance(ranks_per_node, int) and ranks_per_node >= 1
                                           and world_size % ranks_per_node == 0):
        raise SpecError("ranks_per_node", ranks_per_node, f"an integer >= 1 that divides {world_size}")
    import torch.multiprocessing as mp  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    port = free_port()
    deadline_s = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="moesim-calibrate-") as err_dir:
        error_files = [Path(err_dir) / f"rank{r}.txt" for r in range(world_size)]
        processes = [ctx.Process(target=_rank_main, name=f"moesim-calibrate-rank{r}", daemon=True,
                                 args=(r, world_size, port, ranks_per_node, op_timeout_s or timeout_s,
                                       str(error_files[r]), worker_fn, tuple(args)))
                     for r in range(world_size)]
        try:
            for proc in processes:
                proc.start()
            failed, timed_out = _wait(processes, deadline_s)
            if not failed and not timed_out:
                return
            running = [r for r, p in enumerate(processes) if p.exitcode is None]
        finally:
            _stop(processes)
        parts = []
        for r in failed:
            line = _first_line(error_files[r])
            why = f" ({line})" if line else NO_ERROR_LINE
            parts.append(f"rank {r} {_exit_text(processes[r].exitcode)}{why}")
        if timed_out:
            doing = _first_line(Path(f"{error_files[0]}.step"))
            parts.append(f"the deadline of {timeout_s:g} s passed"
                         + (f" during {doing}" if doing else " before the first measurement started"))
        if running:
            parts.append(f"rank(s) {', '.join(map(str, running))} still running, terminated")
        last = _last_progress_line(progress_path)
        parts.append(f"last measured row: {last}" if last else "no row measured")
        raise CalibrationError(f"local calibration run of {world_size} ranks failed: " + "; ".join(parts))


def _wait(processes: Sequence, deadline_s: float) -> tuple[list[int], bool]:
    """Wait until all exit 0, one fails, or the deadline passes: (failed ranks, deadline passed)."""
    while True:
        failed = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
        if failed:
            return failed, False
        alive = [p for p in processes if p.exitcode is None]
        if not alive:
            return [], False
        left_s = deadline_s - time.monotonic()
        if left_s <= 0:
            return [], True
        wait_for_any([p.sentinel for p in alive], timeout=min(left_s, 1.0))


# ----------------------------------------------------------------------------------------- torchrun / srun

@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # "nccl" or "gloo"
    device: str   # "cuda:<i>" or "cpu"


def _env_int(names: Sequence[str], default: int | None = None) -> int:
    """The first of `names` set in the environment, as an integer (SpecError naming the variable if not)."""
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise SpecError(name, value, "an integer") from None
    if default is not None:
        return default
    raise SpecError(" / ".join(names), None, "set by torchrun (first name) or srun (second name)")


def init_from_env(timeout_s: float = 600.0) -> RankInfo:
    """Initialise torch.distributed from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) or Slurm's
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), with MASTER_ADDR (required) and MASTER_PORT (default 29500):
    NCCL on cuda:<local rank> when a GPU is visible, else gloo on CPU. timeout_s: the process-group timeout of
    one collective. Already initialised: only describes it."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    rank = _env_int(("RANK", "SLURM_PROCID"))
    world_size = _env_int(("WORLD_SIZE", "SLURM_NTASKS"))
    local_rank = _env_int(("LOCAL_RANK", "SLURM_LOCALID"), default=0)
    if not os.environ.get("MASTER_ADDR"):
        raise SpecError("MASTER_ADDR", None, "rank 0's host address (torchrun sets it; under Slurm export "
                        "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1))")
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = "cpu"
    if backend == "nccl":
        # srun --gpus-per-task shows each task only its GPU (cuda:0); otherwise all GPUs are visible
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return RankInfo(rank, world_size, local_rank, dist.get_backend(), device)
