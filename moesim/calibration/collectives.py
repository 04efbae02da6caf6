"""Time collectives and point-to-point copies on an initialised torch.distributed process group, nccl-tests
style (COLLECTIVE_COLUMNS rows). torch loads lazily, inside the functions.

Every function that talks to the process group (measure_collectives, measure_p2p_matrix, discover_layout) must
be called on EVERY rank, in the same order: they run collectives themselves. Rank 0 gets the samples, the
others get None.

Conventions (moesim.calibration.samples):
- `bytes` is nccl-tests' per-rank "size": the all-reduce buffer, the gathered all-gather / reduce-scatter
  buffer, what one rank sends in total in an all-to-all. It is rounded up to a multiple of
  group size x 4 bytes, so every rank's share is whole float32 elements; the row holds the rounded value.
- Elements are float32 on CPU and GPU alike (nccl-tests' default `-d float`): the data movement per byte does
  not depend on the dtype, and all-reduce / reduce-scatter reduce in float32 as mixed-precision gradient
  reductions often do.
- time = the slowest rank's time of each repeat (an all-reduce MAX over ranks, as `nccl-tests -a 3`), then the
  mean (nccl-tests' time: one timer around its iterations, divided by their number; algbw and busbw come from it)
  and the median / p10 / p90 over repeats. GPU: CUDA events around the call; CPU: perf_counter around the call.
  Every repeat starts after a barrier over all ranks, so all groups of a tier run at once.
- On CPU ranks collectives are timed as a training step calls them: each repeat's call follows the same matmul
  work on every rank (COMPUTE_GAPS_S, cycled over the repeats), not the previous call (on GPUs: back to back).
  On this project's 2-vCPU VMs a gloo all-to-all of 64 KiB takes 0.2-0.3 ms on average back to back but 0.8-1.5
  ms after 1-10 ms of compute (occasional stalls of 2-4 ms); a step's sum of calls follows that mean. The p2p
  matrix (tier discovery) stays back to back.
- Tiers: "intra_node" = one group per host (all its ranks), "inter_node" = one group per local rank with that
  rank of every host (nccl-tests' NCCL_TESTS_SPLIT "DIV g" and "MOD g"). A tier whose groups would have one
  rank is skipped (one host: no inter_node; one rank per host: no intra_node).
- all_to_all_skewed: group rank 0 is the hot receiver: every sender sends it `skew` times the share it sends
  each other rank, and its total stays `bytes`; the hot rank receives bytes x n x skew / (skew + n - 1).
  algbw is still bytes / time, so the slowdown from the skew shows as a lower busbw than all_to_all's.

Hosts: ranks_per_node (argument, else the MOESIM_RANKS_PER_NODE variable) cuts ranks into blocks of that many,
so one machine can pretend to be several nodes; else torchrun's GROUP_RANK (its node rank); else the hostname.

Failures: each step (one warm-up or timed repeat of one case) is named; an exception in it becomes
CalibrationError("rank R: <op> <tier> <bytes> B, repeat I: <reason>"). A collective that never returns cannot be
interrupted from Python, so the backend's own timeout (init_process_group(timeout=...) - gloo raises, NCCL's
watchdog aborts) comes first, and a watchdog thread here ends the process after 1.5 x timeout_s + 2 s with the
same kind of message on stderr (and in $MOESIM_CALIBRATION_ERROR_FILE when set) and exit code 75.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from moesim.calibration.errors import CalibrationError
from moesim.calibration.samples import BUSBW_FACTOR, COLLECTIVE_COLUMNS
from moesim.spec.errors import SpecError

COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_skewed")
TIERS = ("intra_node", "inter_node")
ELEMENT_BYTES = 4  # float32, see the module docstring
QUICK_SIZES_BYTES = (4 << 10, 64 << 10, 1 << 20, 8 << 20)
FULL_SIZES_BYTES = tuple(1 << k for k in range(10, 31))  # 1 KiB .. 1 GiB in x2 steps (nccl-tests -b 1K -e 1G -f 2)
P2P_QUICK_BYTES = 4 << 20
P2P_FULL_BYTES = 64 << 20
ALL_PAIRS_MAX_RANKS = 16  # above this many ranks the p2p matrix is sampled (p2p_pairs)

RANKS_PER_NODE_ENV = "MOESIM_RANKS_PER_NODE"
ERROR_FILE_ENV = "MOESIM_CALIBRATION_ERROR_FILE"
STEP_FILE_ENV = "MOESIM_CALIBRATION_STEP_FILE"  # where a rank says which operation, size and repeat it is in
STALL_EXIT_CODE = 75  # EX_TEMPFAIL: the watchdog ended a stuck collective
# matmul work before each timed collective, cycled over the repeats: the compute a training step runs between
# two collectives (one expert FFN, one attention block: 0.5-4 ms on a CPU rank of the executed shapes)
COMPUTE_GAPS_S = (0.5e-3, 1e-3, 2e-3, 4e-3)
GAP_MATMUL_SIZE = 128  # square fp32 operands: ~50 us a call on one CPU core


# ------------------------------------------------------------------------------------------------ error lines

def report_error(message: str) -> None:
    """Write a one-line failure to stderr and, when $MOESIM_CALIBRATION_ERROR_FILE is set (run_local sets it
    per rank), append it there, so the launching process can name the rank and the step."""
    line = " ".join(message.split())
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _reason(exc: BaseException) -> str:
    """First non-empty line of an exception, bounded: gloo errors carry long source paths."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _exit_on_stall(message: str) -> None:
    report_error(message)
    os._exit(STALL_EXIT_CODE)  # the main thread is blocked inside the backend: nothing else can end it


def _show_step(label: str) -> str:
    """Write what this rank is doing to the file the parent reads when its deadline passes (written by the
    watchdog thread, off the timed path). Best effort: a failed write only loses the message."""
    path = os.environ.get(STEP_FILE_ENV)
    if path:
        try:
            Path(path).write_text(label, encoding="utf-8")
        except OSError:
            pass
    return label


class _Steps:
    """Names what this rank is doing (for error messages) and watches that each step ends in time.

    Use as a context manager around a whole measurement; `step(label)` around each unit of work."""

    def __init__(self, rank: int, timeout_s: float, on_stall: Callable[[str], None] = _exit_on_stall,
                 grace_s: float = 2.0):
        self.rank = rank
        self.stall_after_s = 1.5 * timeout_s + grace_s  # after the backend's own timeout, which says more
        self._on_stall = on_stall
        self._label: str | None = None
        self._since_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"moesim-calibration-watchdog-{rank}",
                                        daemon=True)

    def __enter__(self) -> _Steps:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        with self._lock:
            self._label, self._since_s = label, time.monotonic()
        try:
            yield
        except (CalibrationError, SpecError):
            raise
        except Exception as exc:
            raise CalibrationError(f"rank {self.rank}: {label}: {_reason(exc)}") from exc
        finally:
            with self._lock:
                self._label = None

    def _watch(self) -> None:
        poll_s = min(0.5, self.stall_after_s / 4)
        shown = None
        while not self._stop.wait(poll_s):
            with self._lock:
                label, since_s = self._label, self._since_s
            if label is not None and label != shown:
                shown = _show_step(label)
            if label is not None and time.monotonic() - since_s > self.stall_after_s:
                self._on_stall(f"rank {self.rank}: {label}: no progress for {self.stall_after_s:.0f} s "
                               f"(watchdog: the collective is stuck; a peer likely died or hangs)")
                return


# --------------------------------------------------------------------------------------------- rows and files

class _RowSink:
    """Collects rows (rank 0) and appends each to the progress CSV at once, so a crash keeps what was measured."""

    def __init__(self, progress_path: Path | None):
        self.rows: list[dict] = []
        self.progress_path = Path(progress_path) if progress_path is not None else None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.progress_path is None:
            return
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.progress_path.exists() or self.progress_path.stat().st_size == 0
        with open(self.progress_path, "a", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLLECTIVE_COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())  # survives a node crash too, not only a process crash

    def frame(self) -> pd.DataFrame:
        return samples_frame(self.rows)


def samples_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """COLLECTIVE_COLUMNS DataFrame from row dicts (an empty one when there are none)."""
    return pd.DataFrame(list(rows), columns=list(COLLECTIVE_COLUMNS))


def sample_row(op: str, tier: str, ranks: int, nbytes: int, times_s: np.ndarray, src: int = -1,
               dst: int = -1) -> dict:
    """One COLLECTIVE_COLUMNS row from [repeats] slowest-rank times in seconds. GB/s = 1e9 bytes/s; algbw from
    the mean time, as nccl-tests (its timer spans all iterations: a slow call counts)."""
    median_s, p10_s, p90_s = (float(v) for v in np.quantile(times_s, [0.5, 0.1, 0.9]))
    mean_s = float(np.mean(times_s))
    algbw_GBps = nbytes / max(mean_s, 1e-9) / 1e9  # floor: a zero mean would mean a broken timer
    return {"op": op, "tier": tier, "ranks": int(ranks), "bytes": int(nbytes), "time_mean_s": mean_s,
            "time_median_s": median_s, "time_p10_s": p10_s, "time_p90_s": p90_s, "algbw_GBps": algbw_GBps,
            "busbw_GBps": algbw_GBps * BUSBW_FACTOR[op](ranks), "repeats": int(len(times_s)),
            "src": int(src), "dst": int(dst)}


# ------------------------------------------------------------------------------------------------------ hosts

@dataclass(frozen=True)
class Layout:
    """Which ranks share a host: `hosts` holds one sorted rank tuple per host, every rank exactly once, all
    hosts the same size (checked by layout_from_keys)."""

    hosts: tuple[tuple[int, ...], ...]

    @property
    def world_size(self) -> int:
        return sum(len(h) for h in self.hosts)

    def tier_groups(self, tier: str) -> tuple[tuple[int, ...], ...]:
        """The disjoint rank groups of a tier; () when its groups would have a single rank."""
        if tier == "intra_node":
            return self.hosts if len(self.hosts[0]) > 1 else ()
        if tier == "inter_node":
            if len(self.hosts) < 2:
                return ()
            return tuple(tuple(h[i] for h in self.hosts) for i in range(len(self.hosts[0])))
        raise SpecError("tier", tier, f"one of {', '.join(TIERS)}")


def layout_from_keys(keys: Sequence[object]) -> Layout:
    """Group ranks by a per-rank host key (keys[r] is rank r's host), hosts in order of first appearance."""
    hosts: dict[object, list[int]] = {}
    for rank, key in enumerate(keys):
        hosts.setdefault(key, []).append(rank)
    sizes = sorted({len(h) for h in hosts.values()})
    if len(sizes) > 1:
        raise SpecError("hosts", {str(k): len(v) for k, v in hosts.items()},
                        "the same number of ranks on every host (set MOESIM_RANKS_PER_NODE to override)")
    return Layout(tuple(tuple(h) for h in hosts.values()))


def _ranks_per_node(ranks_per_node: int | None, world_size: int) -> int | None:
    """The explicit host size: the argument, else $MOESIM_RANKS_PER_NODE, else None (discover)."""
    key, value = "ranks_per_node", ranks_per_node
    if value is None and os.environ.get(RANKS_PER_NODE_ENV):
        key, value = RANKS_PER_NODE_ENV, os.environ[RANKS_PER_NODE_ENV]
        try:
            value = int(value)
        except ValueError:
            raise SpecError(key, value, "an integer >= 1 (ranks per pretended node)") from None
    if value is None:
        return None
    if not (isinstance(value, int) and value >= 1 and world_size % value == 0):
        raise SpecError(key, value, f"an integer >= 1 that divides the world size {world_size}")
    return value


def _own_host_key() -> str:
    # torchrun's node rank names the agent (normally one per node) and lets one machine run several agents
    # as pretended nodes; srun alone does not set it, and the hostname is then the node.
    group_rank = os.environ.get("GROUP_RANK")
    return f"node{group_rank}" if group_rank is not None else socket.gethostname()


def discover_layout(ranks_per_node: int | None = None) -> Layout:
    """Which ranks share a host (see the module docstring). Call on every rank."""
    import torch.distributed as dist  # noqa: PLC0415

    world_size = dist.get_world_size()
    per_node = _ranks_per_node(ranks_per_node, world_size)
    if per_node is not None:
        return layout_from_keys([r // per_node for r in range(world_size)])
    keys: list[object] = [None] * world_size
    dist.all_gather_object(keys, _own_host_key())
    return layout_from_keys(keys)


def gather_hostnames() -> list[str] | None:
    """[world_size] hostnames on rank 0, None elsewhere. Call on every rank."""
    import torch.distributed as dist  # noqa: PLC0415

    names: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname())
    return [str(n) for n in names] if dist.get_rank() == 0 else None


# --------------------------------------------------------------------------------------------- the machinery

def _device():
    """cuda:<current device> under NCCL (init_from_env selected it), else cpu."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _barrier(device) -> None:
    import torch.distributed as dist  # noqa: PLC0415

    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])  # else NCCL guesses the device and warns
    else:
        dist.barrier()


def _make_timer(device) -> Callable[[Callable[[], object]], float]:
    """timed(fn) -> seconds of one fn() call, fn's work completed (CUDA events on GPU, perf_counter on CPU)."""
    import torch  # noqa: PLC0415

    if device.type == "cuda":
        def timed(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn: Callable[[], object]) -> float:
            t0 = time.perf_counter()
            fn()  # gloo calls return when the data has arrived
            return time.perf_counter() - t0
    return timed


def _time_case(steps: _Steps, label: str, run: Callable[[], object] | None, repeats: int, warmup: int,
               device, before: Callable[[int], object] | None = None) -> np.ndarray:
    """[repeats] seconds: per repeat, the max over all ranks (ranks with run=None take part with 0 s).
    before(i): untimed work every rank runs after the barrier and before warm-up or repeat i's call."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    timed = _make_timer(device)
    times_s = []
    for i in range(warmup + repeats):
        with steps.step(f"{label}, warm-up {i}" if i < warmup else f"{label}, repeat {i - warmup}"):
            _barrier(device)
            if before is not None:
                before(i)
            elapsed_s = timed(run) if run is not None else 0.0
            if i >= warmup:
                times_s.append(elapsed_s)
    with steps.step(f"{label}, max over ranks"):
        slowest = torch.tensor(times_s, dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        return slowest.cpu().numpy()


@dataclass(frozen=True)
class GapWork:
    """The untimed compute before each timed collective (_time_case's `before`): counts[i % len] matmuls of the
    operands in `args` before call i, the same counts on every rank."""

    counts: tuple[int, ...]
    args: tuple

    def __call__(self, i: int) -> None:
        import torch  # noqa: PLC0415

        a, out = self.args
        for _ in range(self.counts[i % len(self.counts)]):
            torch.mm(a, a, out=out)


def compute_gaps(device, gaps_s: Sequence[float] = COMPUTE_GAPS_S) -> GapWork:
    """About gaps_s[i % len(gaps_s)] seconds of matmuls before call i, on a CPU rank (GPU ranks are timed back to
    back): the number of matmuls is set by the slowest rank's time per matmul, timed here. Call on every rank: it
    runs an all-reduce."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    a = torch.ones(GAP_MATMUL_SIZE, GAP_MATMUL_SIZE, dtype=torch.float32, device=device)
    probe = GapWork((5, 50), (a, torch.empty_like(a)))
    probe(0)  # warm-up
    t0 = time.perf_counter()
    probe(1)
    per_call = torch.tensor([(time.perf_counter() - t0) / probe.counts[1]], dtype=torch.float64, device=device)
    dist.all_reduce(per_call, op=dist.ReduceOp.MAX)
    per_call_s = max(float(per_call.item()), 1e-9)
    return GapWork(tuple(max(1, round(g / per_call_s)) for g in gaps_s), probe.args)


def group_elements(nbytes: int, group_size: int) -> int:
    """float32 elements of a `nbytes` buffer, rounded up to a multiple of group_size (at least group_size)."""
    per_rank = max(1, math.ceil(nbytes / (ELEMENT_BYTES * group_size)))
    return per_rank * group_size


def skewed_splits(total: int, group_size: int, skew: float) -> list[int]:
    """[group_size] elements one sender sends to each group rank: rank 0 gets `skew` times the share of each
    other rank, the sum is exactly `total` (rounding goes to rank 0)."""
    if group_size == 1:
        return [total]
    other = int(total / (skew + group_size - 1))
    return [total - other * (group_size - 1)] + [other] * (group_size - 1)


def _collective_fn(op: str, nelem: int, group, group_size: int, skew: float, device) -> Callable[[], object]:
    """A zero-argument call running `op` once on this rank's buffers (allocated here, zeros: sums stay finite)."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    def zeros(n: int):
        return torch.zeros(n, dtype=torch.float32, device=device)

    # torch 2.13 deprecates the *_tensor names (FutureWarning) for *_single; older torch only has *_tensor
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    share = nelem // group_size
    if op == "all_reduce":
        buf = zeros(nelem)
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        inp, out = zeros(share), zeros(nelem)
        return lambda: all_gather(out, inp, group=group)
    if op == "reduce_scatter":
        inp, out = zeros(nelem), zeros(share)
        return lambda: reduce_scatter(out, inp, group=group)
    if op == "all_to_all":
        inp, out = zeros(nelem), zeros(nelem)
        return lambda: dist.all_to_all_single(out, inp, group=group)
    if op == "all_to_all_skewed":
        # the split-size form: gloo rejects the list form with uneven sizes
        send = skewed_splits(nelem, group_size, skew)
        recv = [send[dist.get_rank(group)]] * group_size
        inp, out = zeros(nelem), zeros(sum(recv))
        return lambda: dist.all_to_all_single(out, inp, output_split_sizes=recv, input_split_sizes=send,
                                              group=group)
    raise SpecError("ops", op, f"one of {', '.join(COLLECTIVE_OPS)}")


def _own_group(groups: Sequence[tuple[int, ...]], rank: int, timeout_s: float):
    """Create every group (all ranks must call new_group for each, in the same order); return this rank's
    (process group, ranks) or (None, ())."""
    import torch.distributed as dist  # noqa: PLC0415

    mine, mine_ranks = None, ()
    for ranks in groups:
        pg = dist.new_group(list(ranks), timeout=timedelta(seconds=timeout_s))
        if rank in ranks:
            mine, mine_ranks = pg, ranks
    return mine, mine_ranks


def _destroy(group) -> None:
    import torch.distributed as dist  # noqa: PLC0415

    if group is not None:
        dist.destroy_process_group(group)  # NCCL communicators hold GPU memory


def _check_plan(sizes_bytes: Sequence[int], repeats: int, warmup: int, ops: Sequence[str], skew: float,
                timeout_s: float) -> None:
    if not len(sizes_bytes) or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes_bytes):
        raise SpecError("sizes_bytes", list(sizes_bytes), "a non-empty list of integers > 0 (bytes)")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise SpecError("repeats", repeats, "an integer >= 1")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise SpecError("warmup", warmup, "an integer >= 0")
    bad = [op for op in ops if op not in COLLECTIVE_OPS]
    if bad or not ops:
        raise SpecError("ops", list(ops), f"a non-empty subset of {', '.join(COLLECTIVE_OPS)}")
    if not (math.isfinite(skew) and skew >= 1.0):
        raise SpecError("skew", skew, "a number >= 1 (hot rank's share / another rank's share)")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise SpecError("timeout_s", timeout_s, "a number of seconds > 0")


# --------------------------------------------------------------------------------------------- measurements

def measure_collectives(sizes_bytes: Sequence[int], repeats: int, warmup: int, *,
                        ops: Sequence[str] = COLLECTIVE_OPS, skew: float = 4.0, timeout_s: float,
                        progress_path: Path | None = None,
                        ranks_per_node: int | None = None) -> pd.DataFrame | None:
    """COLLECTIVE_COLUMNS rows, one per (tier, op, size), on rank 0; None on the other ranks.

    Call on every rank of an initialised process group (gloo on CPU, NCCL on GPU). sizes_bytes: nccl-tests
    per-rank sizes (rounded, see the module docstring); repeats timed runs after `warmup` untimed ones;
    timeout_s: the longest one step may take before the watchdog ends the process (give the process group the
    same timeout); progress_path: rank 0 appends every finished row there as CSV at once."""
    _check_plan(sizes_bytes, repeats, warmup, ops, skew, timeout_s)
    import torch.distributed as dist  # noqa: PLC0415

    rank = dist.get_rank()
    device = _device()
    sink = _RowSink(progress_path if rank == 0 else None)
    with _Steps(rank, timeout_s) as steps:
        with steps.step("host discovery"):
            layout = discover_layout(ranks_per_node)
        # CPU ranks only: the stalls after compute are a gloo-on-VM effect; on GPUs small NCCL calls are ~10 us, and
        # ranks leaving launch-bound matmuls a little apart would add that skew to them (not measured on a GPU yet)
        with steps.step("timing the compute between calls"):
            before = compute_gaps(device) if device.type == "cpu" else None
        for tier in TIERS:
            groups = layout.tier_groups(tier)
            if not groups:
                continue
            with steps.step(f"creating {tier} groups"):
                group, group_ranks = _own_group(groups, rank, timeout_s)
            size = len(groups[0])
            for op in ops:
                for nbytes in sizes_bytes:
                    nelem = group_elements(nbytes, size)
                    label = f"{op} {tier} {nelem * ELEMENT_BYTES} B"
                    with steps.step(f"{label}, allocating"):
                        run = _collective_fn(op, int(nelem), group, size, skew, device) if group_ranks else None
                    times_s = _time_case(steps, label, run, repeats, warmup, device, before)
                    del run  # frees the buffers before the next (larger) size
                    if rank == 0:
                        sink.add(sample_row(op, tier, size, nelem * ELEMENT_BYTES, times_s))
            _destroy(group)
    return sink.frame() if rank == 0 else None


def p2p_pairs(layout: Layout, all_pairs_max_ranks: int = ALL_PAIRS_MAX_RANKS) -> list[tuple[int, int]]:
    """Ordered (src, dst) pairs to time. Up to all_pairs_max_ranks ranks: all of them. Beyond (O(n^2) gets
    long): every pair inside each host, plus for each ordered host pair local rank 0 -> local rank 0 (same
    rail) and local rank 0 -> local rank 1 (cross rail), which still shows every tier."""
    world_size = layout.world_size
    if world_size <= all_pairs_max_ranks:
        return [(s, d) for s in range(world_size) for d in range(world_size) if s != d]
    pairs = [(s, d) for host in layout.hosts for s in host for d in host if s != d]
    for a in layout.hosts:
        for b in layout.hosts:
            if a is not b:
                pairs.append((a[0], b[0]))
                if len(b) > 1:
                    pairs.append((a[0], b[1]))
    return pairs


def measure_p2p_matrix(nbytes: int, repeats: int, warmup: int = 2, *, timeout_s: float,
                       pairs: Sequence[tuple[int, int]] | None = None, progress_path: Path | None = None,
                       ranks_per_node: int | None = None) -> pd.DataFrame | None:
    """COLLECTIVE_COLUMNS rows (op "p2p", tier "pair", ranks 2, busbw = algbw), one per ordered (src, dst)
    pair, timed one pair at a time (blocking send on src, recv on dst) on rank 0; None on the other ranks.

    Call on every rank. pairs: default p2p_pairs(discover_layout(ranks_per_node)). nbytes is rounded up to
    whole float32 elements."""
    _check_plan([nbytes], repeats, warmup, COLLECTIVE_OPS, 1.0, timeout_s)
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    rank = dist.get_rank()
    device = _device()
    sink = _RowSink(progress_path if rank == 0 else None)
    nelem = group_elements(nbytes, 1)
    buf = torch.zeros(nelem, dtype=torch.float32, device=device)
    with _Steps(rank, timeout_s) as steps:
        if pairs is None:
            with steps.step("host discovery"):
                pairs = p2p_pairs(discover_layout(ranks_per_node))
        for src, dst in pairs:
            if rank == src:
                run = lambda dst=dst: dist.send(buf, dst)  # noqa: E731
            elif rank == dst:
                run = lambda src=src: dist.recv(buf, src)  # noqa: E731
            else:
                run = None
            label = f"p2p {src}->{dst} {nelem * ELEMENT_BYTES} B"
            times_s = _time_case(steps, label, run, repeats, warmup, device)
            if rank == 0:
                sink.add(sample_row("p2p", "pair", 2, nelem * ELEMENT_BYTES, times_s, src, dst))
    return sink.frame() if rank == 0 else None


# --------------------------------------------------------------------------------------------------- tiers

def discover_tiers(p2p: pd.DataFrame, rel_gap: float = 0.3) -> dict:
    """Cluster pair bandwidths into tiers, fastest first.

    p2p: rows with src, dst, busbw_GBps (p2p rows: busbw = algbw). Bandwidths sorted from high to low are cut
    where one is more than rel_gap below the previous one (relative to the previous). Returns
    {"tiers": [{"name": "tier0", "bandwidth_GBps": median of the tier, "pairs": count}, ...],
     "rank_groups": [[ranks], ...]}: the connected components of the fastest tier's pairs (direction ignored),
    every rank in p2p once, groups and their ranks sorted."""
    if not (math.isfinite(rel_gap) and 0 < rel_gap < 1):
        raise SpecError("rel_gap", rel_gap, "a fraction in (0, 1)")
    if p2p.empty:
        return {"tiers": [], "rank_groups": []}
    ordered = p2p.sort_values("busbw_GBps", ascending=False, kind="stable")
    bandwidths = ordered["busbw_GBps"].to_numpy(dtype=float)
    tier_of = np.zeros(len(bandwidths), dtype=int)
    for i in range(1, len(bandwidths)):
        gap = (bandwidths[i - 1] - bandwidths[i]) / bandwidths[i - 1] if bandwidths[i - 1] > 0 else 0.0
        tier_of[i] = tier_of[i - 1] + (gap > rel_gap)
    tiers = [{"name": f"tier{t}", "bandwidth_GBps": float(np.median(bandwidths[tier_of == t])),
              "pairs": int((tier_of == t).sum())} for t in range(tier_of[-1] + 1)]
    fastest = ordered[tier_of == 0]
    ranks = sorted(set(ordered["src"].astype(int)) | set(ordered["dst"].astype(int)))
    edges = list(zip(fastest["src"].astype(int), fastest["dst"].astype(int)))
    return {"tiers": tiers, "rank_groups": _components(ranks, edges)}


def _components(nodes: Sequence[int], edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (union-find), each sorted, ordered by their smallest node."""
    parent = {n: n for n in nodes}

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for n in nodes:
        groups.setdefault(root(n), []).append(n)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])
