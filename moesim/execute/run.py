"""`moesim execute`: run a scaled plan on this machine's ranks and return its measured records.

On one machine the ranks are processes started here (torch.multiprocessing, spawn); under torchrun (RANK and
WORLD_SIZE set) this process is one rank and rank 0 returns the records. gloo on CPUs, NCCL on GPUs (one GPU per
rank, LOCAL_RANK's). The routing the ranks replay comes from simulating the same scenario (one simulation serves
as the prediction too: moesim.execute.compare).
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.execute.records import ExecuteError, assemble
from moesim.sim.simulate import LayerRouting
from moesim.spec.errors import SpecError
from moesim.spec.routing import GateKind
from moesim.spec.scenario import Scenario

BACKENDS = ("gloo", "nccl")
# A CPU rank's tensors come from glibc's malloc, which by default maps every block over 128 KiB afresh and returns
# freed memory to the kernel: each step's activations then cost page faults that a GPU's caching allocator does
# not, nor the simulator (the accuracy matrix's larger shape, 2 ranks, 6 steps: 525-565 thousand minor faults, 406-440
# thousand with this setting). Started by torchrun, export it yourself. A GLIBC_TUNABLES the user set is kept.
# glibc 2.36 (these machines') takes a 4 GiB threshold; an older one may refuse it and keep the trim threshold alone,
# which fixes the mmap threshold at 128 KiB: the opposite. So it is set from 2.36 on only.
CPU_RANK_MALLOC = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
CPU_RANK_MALLOC_GLIBC = (2, 36)


def rank_env(backend: str) -> dict[str, str]:
    """What the spawned ranks get in their environment beyond this process's: CPU_RANK_MALLOC for gloo ranks on a
    glibc that takes it, unless GLIBC_TUNABLES is set already."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        glibc = tuple(int(v) for v in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):  # not glibc, or no such configuration name
        return {}
    if backend != "gloo" or name != "glibc" or glibc < CPU_RANK_MALLOC_GLIBC or "GLIBC_TUNABLES" in os.environ:
        return {}
    return {"GLIBC_TUNABLES": CPU_RANK_MALLOC}


@dataclass(frozen=True)
class ExecutedRun:
    scenario: Scenario
    records: pd.DataFrame  # moesim.sim.records columns, measured
    step_times_s: np.ndarray  # [warmup + steps]
    backend: str
    device: str  # what ran a rank, e.g. "CPU, 1 thread" or the GPU's name

    @property
    def measured_steps(self) -> np.ndarray:
        return np.arange(self.scenario.simulation.warmup_steps, len(self.step_times_s))


def check_executable(sc: Scenario) -> None:
    """What the trainer cannot run, refused with one line before any process starts."""
    if sc.gate.kind is not GateKind.TOKEN_CHOICE:
        raise SpecError("gate.kind", sc.gate.kind.value, "token_choice: moesim execute runs token-choice routers")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, sc: Scenario, routing: list, backend: str, threads: int, results: str,
               progress_q) -> None:
    """One rank: train, then send its timeline to rank 0, which pickles everything to the file `results` (a
    file, not a pipe: a pipe holds 64 KiB and would block rank 0 until the parent read it)."""
    import torch  # noqa: PLC0415 - torch only where ranks run
    import torch.distributed as dist  # noqa: PLC0415

    from moesim.execute.train import Trainer  # noqa: PLC0415

    warnings.simplefilter("ignore")  # as the CLI: libraries' warnings (deprecations) are not the user's business
    torch.set_num_threads(threads)
    local = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":  # the rank's GPU first: NCCL's communicators bind to the current device
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        if backend == "nccl":
            device, dtype = torch.device("cuda", local), torch.bfloat16
            what = torch.cuda.get_device_name(local)
        else:
            device, dtype, what = torch.device("cpu"), torch.float32, f"CPU, {threads} thread(s) per rank"
        trainer = Trainer(sc, routing, rank, device, dtype)
        total = sc.simulation.warmup_steps + sc.simulation.steps
        for step in range(total):
            trainer.step(step)
            if rank == 0 and progress_q is not None:
                progress_q.put(step + 1)
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((trainer.timeline.rows, trainer.step_starts), gathered, dst=0)
        if rank == 0:
            with open(results, "wb") as fh:
                pickle.dump((gathered, what), fh)
    finally:
        dist.destroy_process_group()


def execute(sc: Scenario, routing: list[LayerRouting], backend: str = "gloo", threads: int = 1,
            timeout_s: float = 600.0, progress: Callable[[int, int], None] | None = None) -> ExecutedRun | None:
    """Run `sc` (already scaled: moesim.execute.scale) for warm-up + measured steps on layout.world_size ranks.
    Under torchrun returns the run on rank 0 and None on the others. Raises ExecuteError when a rank fails or
    the run exceeds `timeout_s`."""
    if backend not in BACKENDS:
        raise SpecError("--backend", backend, "gloo (CPU ranks) or nccl (one GPU per rank)")
    check_executable(sc)
    world = sc.layout.world_size
    with tempfile.TemporaryDirectory(prefix="moesim-execute-") as tmp:
        results = os.path.join(tmp, "timings.pkl")
        if torchrun_world() is not None:  # torchrun: this process is one of the ranks
            if torchrun_world() != world:
                raise SpecError("--nproc", world, f"the torchrun world size ({torchrun_world()})")
            _rank_main(int(os.environ["RANK"]), world, sc, routing, backend, threads, results, None)
        else:
            _spawn(sc, routing, backend, threads, timeout_s, progress, results)
        if not os.path.exists(results):
            if torchrun_world() is not None:
                return None  # another torchrun rank: rank 0 reports
            raise ExecuteError("the ranks ended without sending their timings")
        with open(results, "rb") as fh:
            return _finish(sc, backend, pickle.load(fh))


def torchrun_world() -> int | None:
    """WORLD_SIZE when torchrun (or Slurm with its variables) started this process as one rank, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise SpecError("WORLD_SIZE", os.environ["WORLD_SIZE"], "an integer (set by torchrun)") from None


def _spawn(sc: Scenario, routing: list, backend: str, threads: int, timeout_s: float,
           progress: Callable[[int, int], None] | None, results: str) -> None:
    import torch.multiprocessing as mp  # noqa: PLC0415 - torch only where ranks run

    world = sc.layout.world_size
    ctx = mp.get_context("spawn")
    progress_q = ctx.Queue()
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), **rank_env(backend)}
    saved = {k: os.environ.get(k) for k in rendezvous}
    os.environ.update(rendezvous)  # the children inherit it at their start; this process's is put back below
    try:
        procs = mp.start_processes(_rank_main, args=(world, sc, routing, backend, threads, results, progress_q),
                                   nprocs=world, join=False, start_method="spawn")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    deadline, total = time.monotonic() + timeout_s, sc.simulation.warmup_steps + sc.simulation.steps
    try:
        while True:
            try:
                if procs.join(timeout=0.2):
                    break
            except mp.ProcessRaisedException as exc:  # a rank's exception: its last line, not the traceback
                last = str(exc).strip().splitlines()[-1]
                raise ExecuteError(f"a rank failed: {last}") from None
            except mp.ProcessExitedException as exc:
                raise ExecuteError(f"a rank died: {exc}") from None
            _drain(progress_q, progress, total)
            if time.monotonic() > deadline:
                raise ExecuteError(f"the ranks did not finish within {timeout_s:.0f} s (a hung collective?); "
                                   "pass a larger --timeout if the run is just slow")
        _drain(progress_q, progress, total)
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.kill()


def _drain(progress_q, progress, total: int) -> None:
    while True:
        try:
            done = progress_q.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(done, total)


def _finish(sc: Scenario, backend: str, result) -> ExecutedRun:
    gathered, what = result
    records, step_times = assemble(sc.layout, [g[0] for g in gathered], [g[1] for g in gathered])
    return ExecutedRun(sc, records, step_times, backend, what)
