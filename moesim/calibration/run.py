"""`moesim calibrate`: measure this machine (expert kernels, the compute model's GEMM sweep, element-wise bandwidth,
launch overhead and attention core here, collectives on spawned ranks), fit, and write hw_profiles/<name>.yaml
with the raw samples beside it in <name>.samples/; or build a profile from a samples directory without measuring:
one `moesim calibrate` wrote (host.json), or the cluster kit's (calibrate/run.py under torchrun or Slurm, with
--base).

On a GPU that a datasheet profile in hw_profiles/ names (H100, H200, H800, A100), that profile is the base: its
peaks, fabric and candidate GEMM tiles stay and the measured numbers replace the rest (as --base does).

A samples directory without the compute CSVs (gemm.csv, elementwise.csv, launch.csv, attention.csv; written
before they existed, or by the cluster kit): with a base profile, the base's compute keys stay (only its attention
table where attention.csv alone is missing), their sources saying they were not measured, and one line says which
files were missing; without one, one error line names the missing files and the two ways on (re-measure, or
--base)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pandas as pd

from moesim.calibration.compute_fit import ComputeSamples
from moesim.calibration.kernels import (CPU_FFN_MAX_FORWARD_FLOP, CPU_FFN_SHAPES, CPU_FFN_TOKENS, FULL_TOKENS,
                                        QUICK_SHAPES, QUICK_TOKENS, KernelShape, measure_expert_ffn, measure_kernels,
                                        measure_memory_bandwidth, preset_shapes)
from moesim.calibration.profile_writer import build_profile, to_yaml_ready
from moesim.calibration.samples import (ATTENTION_COLUMNS, ATTENTION_FILE, COLLECTIVE_COLUMNS, COMPUTE_FILES,
                                        ELEMENTWISE_COLUMNS, ELEMENTWISE_FILE, EXPERT_FFN_COLUMNS, EXPERT_FFN_FILE,
                                        GEMM_COLUMNS, GEMM_FILE, KERNEL_COLUMNS, LAUNCH_COLUMNS, LAUNCH_FILE)
from moesim.io.profile import PROFILE_DIR
from moesim.io.results import write_text_atomic
from moesim.io.safe_yaml import dump_yaml
from moesim.io.host import cpu_rank_description
from moesim.io.strict import read_yaml_mapping
from moesim.spec.errors import SpecError, Verbatim

CPU_FULL_SHAPES = (KernelShape(256, 512, 8), KernelShape(1024, 1024, 8))
CPU_FULL_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def _device() -> tuple[str, str, str]:
    """(torch device, training dtype to calibrate, device description)."""
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        return "cuda", "bf16", torch.cuda.get_device_name()
    return "cpu", "fp32", cpu_rank_description()


def _versions() -> dict:
    import numpy  # noqa: PLC0415
    import torch  # noqa: PLC0415

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "cuda": torch.version.cuda, "platform": platform.platform()}
    try:
        import triton  # noqa: PLC0415

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if torch.cuda.is_available():
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        out["driver"] = _nvidia_driver()
    return out


def _nvidia_driver() -> str | None:
    try:
        return Path("/proc/driver/nvidia/version").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None


@contextmanager
def _threads(device: str, threads: int):
    """A CPU measures with `threads` torch threads (what each calibrated rank gets); restored afterwards."""
    import torch  # noqa: PLC0415

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def samples_dir_for(profile_path: Path) -> Path:
    return profile_path.with_name(profile_path.stem + ".samples")


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise SpecError("--out", str(path), "a profile path that does not exist yet (or pass --force to replace it)")


def datasheet_base(device_name: str) -> Path | None:
    """The datasheet profile in hw_profiles/ whose GPU model (the first word of its gpu.name: H100, H200, ...)
    the device name contains, or None."""
    words = device_name.upper().replace("-", " ").split()
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        doc = read_yaml_mapping(path, "profile") or {}
        model = str(doc.get("gpu", {}).get("name", "")).split(" ", 1)[0].upper()
        if str(doc.get("status", "")).startswith("datasheet") and model and model in words:
            return path
    return None


def measure_compute_into(samples: Path, *, quick: bool, device: str | None = None, dtype: str | None = None,
                         description: str | None = None, threads: int = 1, cache_bytes: int | None = None,
                         log=print) -> dict:
    """Measure the compute model's samples on this process's device (a CPU: `threads` threads) and write
    gemm.csv, elementwise.csv, launch.csv and attention.csv into `samples`. cache_bytes: the device's largest
    cache (default: compute.device_cache_bytes). Returns what host.json records under "compute" (the attention
    measurement's own seconds and SDPA backend under "attention", what operands rotated through as
    "cache_bytes")."""
    from moesim.calibration import compute as cm  # noqa: PLC0415 - torch: loaded only to calibrate

    if device is None:
        device, dtype, description = _device()
    samples.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _threads(device, threads):
        cache_bytes = cache_bytes if cache_bytes is not None else cm.device_cache_bytes(device)
        plan = cm.compute_plan(device, quick, cache_bytes)
        gemm = cm.measure_gemms(plan, dtype, device)
        elementwise = cm.measure_elementwise(plan, dtype, device)
        launch = cm.measure_launch(plan, dtype, device)
    for frame, file in ((gemm, GEMM_FILE), (elementwise, ELEMENTWISE_FILE), (launch, LAUNCH_FILE)):
        _write_csv(frame, samples / file)
    seconds = time.perf_counter() - t0
    log(f"compute: {len(gemm)} GEMM shapes, {len(elementwise)} element-wise and {len(launch)} launch samples in "
        f"{seconds:.1f} s")
    attention = measure_attention_into(samples, quick=quick, device=device, dtype=dtype, description=description,
                                       threads=threads, cache_bytes=cache_bytes, log=log)
    return {"date": date.today().isoformat(), "device": description, "device_kind": device,
            "sm_count": cm.sm_count(device, threads), "threads_per_rank": threads if device == "cpu" else None,
            "mode": "quick" if quick else "full", "seconds": round(seconds + attention["seconds"], 1),
            "cache_bytes": plan.cache_bytes, "attention": attention}


def measure_attention_into(samples: Path, *, quick: bool, device: str | None = None, dtype: str | None = None,
                           description: str | None = None, threads: int = 1, cache_bytes: int | None = None,
                           log=print) -> dict:
    """Measure the attention core (causal SDPA, forward and forward+backward over the plan's seq_len x head_dim
    grid) on this process's device (a CPU: `threads` threads) and write attention.csv into `samples`. Returns what
    host.json records under "compute" -> "attention": date, device, mode, seconds, the SDPA backend(s) and the
    grid."""
    from moesim.calibration import compute as cm  # noqa: PLC0415 - torch: loaded only to calibrate

    if device is None:
        device, dtype, description = _device()
    samples.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _threads(device, threads):
        plan = cm.attention_plan(device, quick, cache_bytes if cache_bytes is not None else
                                 cm.device_cache_bytes(device))
        attention = cm.measure_attention(plan, dtype, device)
    _write_csv(attention, samples / ATTENTION_FILE)
    seconds = time.perf_counter() - t0
    backends = sorted(set(attention["backend"]))
    log(f"attention: causal SDPA ({', '.join(backends)}) forward and forward+backward at {len(plan.seq_lens)} "
        f"seq_lens x {len(plan.head_dims)} head_dims in {seconds:.1f} s")
    return {"date": date.today().isoformat(), "device": description, "mode": "quick" if quick else "full",
            "seconds": round(seconds, 1), "sdpa_backend": backends, "seq_lens": list(plan.seq_lens),
            "head_dims": list(plan.head_dims), "tokens": plan.tokens, "hidden": plan.hidden}


def calibrate_local(out: Path, *, quick: bool, ranks: tuple[int, ...], force: bool, timeout_s: float,
                    name: str | None = None, log=print) -> Path:
    """Measure kernels and the compute model in this process and collectives on `ranks` spawned gloo/NCCL ranks
    of this host; write the profile and its samples. Returns the profile path."""
    import torch  # noqa: PLC0415

    from moesim.calibration.collectives import FULL_SIZES_BYTES, P2P_FULL_BYTES, P2P_QUICK_BYTES, QUICK_SIZES_BYTES  # noqa: PLC0415 - spawns ranks: loaded only to calibrate
    from moesim.calibration.launch import SamplePlan, calibration_worker, run_local  # noqa: PLC0415 - spawns ranks: loaded only to calibrate

    _refuse_overwrite(out, force)
    if not ranks or any(r < 2 for r in ranks):
        raise SpecError("--ranks", list(ranks), "one or more rank counts >= 2")
    samples = samples_dir_for(out)
    samples.mkdir(parents=True, exist_ok=True)
    device, dtype, description = _device()
    t0 = time.perf_counter()
    if device == "cpu":
        torch.set_num_threads(1)  # what each calibrated rank gets
        shapes, tokens = (QUICK_SHAPES, QUICK_TOKENS) if quick else (CPU_FULL_SHAPES, CPU_FULL_TOKENS)
    else:
        shapes = preset_shapes()[:1] if quick else preset_shapes()
        tokens = (1, 16, 256, 4096) if quick else FULL_TOKENS
    kernels = measure_kernels(shapes, tokens, dtype, device, repeats=5 if quick else 20, warmup=2 if quick else 5)
    _write_csv(kernels, samples / "kernels.csv")
    bandwidth = measure_memory_bandwidth(device)
    log(f"kernels: {len(kernels)} samples in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    ffn_bytes = float("inf")
    if device == "cpu":
        ffn_shapes, ffn_tokens = (QUICK_SHAPES, (1, 16, 64)) if quick else (CPU_FFN_SHAPES, CPU_FFN_TOKENS)
        ffn_flop = CPU_FFN_MAX_FORWARD_FLOP
    else:
        ffn_shapes, ffn_tokens, ffn_flop = shapes, tokens, float("inf")
        ffn_bytes = 0.5 * torch.cuda.mem_get_info()[0]  # the presets' shapes up to what half the free memory holds
    from moesim.calibration import compute as cm  # noqa: PLC0415 - torch: loaded only to calibrate

    cache = cm.device_cache_bytes(device)  # read once: the FFN flushes what the compute sweep rotates through
    ffn = measure_expert_ffn(ffn_shapes, ffn_tokens, dtype, device, repeats=5 if quick else 10,
                             warmup=2 if quick else 3, max_forward_flop=ffn_flop, max_bytes=ffn_bytes,
                             flush_bytes=cm.compute_plan(device, quick, cache).cache_bytes, log=log)
    _write_csv(ffn, samples / EXPERT_FFN_FILE)
    log(f"expert FFN: {len(ffn)} samples in {time.perf_counter() - t1:.1f} s")
    compute_meta = measure_compute_into(samples, quick=quick, device=device, dtype=dtype, description=description,
                                        cache_bytes=cache, log=log)

    frames, metas = [], []
    for n in ranks:
        t1 = time.perf_counter()
        run_dir = samples / f"ranks{n}"
        plan = SamplePlan(out_dir=str(run_dir), sizes_bytes=QUICK_SIZES_BYTES if quick else FULL_SIZES_BYTES,
                          repeats=5 if quick else 20, warmup=2 if quick else 5,
                          p2p_bytes=P2P_QUICK_BYTES if quick else P2P_FULL_BYTES, op_timeout_s=min(60.0, timeout_s),
                          ranks_per_node=n, extra_meta={"mode": "quick" if quick else "full"})
        run_local(n, calibration_worker, (plan,), ranks_per_node=n, timeout_s=timeout_s,
                  progress_path=plan.progress)
        frames.append(pd.read_csv(run_dir / "collectives.csv"))
        metas.append(json.loads((run_dir / "meta.json").read_text()))
        log(f"collectives on {n} ranks: {len(frames[-1])} samples in {time.perf_counter() - t1:.1f} s")
    collectives = pd.concat(frames, ignore_index=True)[list(COLLECTIVE_COLUMNS)]
    _write_csv(collectives, samples / "collectives.csv")

    base = datasheet_base(description) if device != "cpu" else None
    provenance = {"date": date.today().isoformat(), "device": description, "hosts": 1, "ranks": list(ranks),
                  "threads_per_rank": 1 if device == "cpu" else None, "backend": metas[-1].get("backend"),
                  "mode": "quick" if quick else "full", "command": " ".join(["moesim", *sys.argv[1:]]),
                  "env": metas[-1].get("env", {}), **_versions()}
    if base is not None:
        provenance["base_profile"] = base.stem
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(ranks) if device == "cpu" else \
        torch.cuda.get_device_properties(0).total_memory
    host = {"provenance": provenance, "dtype": dtype, "ranks_per_node": max(ranks), "memory_bytes": memory,
            "memory_bandwidth_bytes_per_s": bandwidth, "device": description, "compute": compute_meta}
    write_text_atomic(samples / "host.json", json.dumps(to_yaml_ready(host), indent=2) + "\n")
    if base is not None:
        log(f"{description}: {base} is the datasheet base (peaks, fabric, GEMM tiles)")
    # fit from the samples as written (9 significant digits), so that --from-samples rebuilds this profile exactly
    kernels, collectives = (pd.read_csv(samples / f) for f in ("kernels.csv", "collectives.csv"))
    _write_profile(out, _profile_from_host(host, samples, out, name, kernels, collectives, base, log))
    log(f"wrote {out} and {samples}/ in {time.perf_counter() - t0:.1f} s")
    return out


def _read_base(base: Path) -> dict:
    doc = read_yaml_mapping(base, "profile") or {}  # the same rules and limits as every profile read
    doc.pop("calibration", None)
    return doc


def _gpu_tiles_fallback(device: str) -> tuple[tuple, str]:
    """Candidate tiles for a GPU no datasheet profile names: the H100 profile's, said to be assumed."""
    ref = PROFILE_DIR / "dgx-h100.yaml"
    leaf = (read_yaml_mapping(ref, "profile") or {})["compute"]["gemm_tiles"]
    return ((tuple(tuple(t) for t in leaf["value"]),),
            f"assumption: no datasheet profile in hw_profiles/ names {device}; the candidates of {ref.name} "
            f"({leaf.get('source', '')})")


def _profile_from_host(host: dict, samples: Path, out: Path, name: str | None, kernels: pd.DataFrame,
                       collectives: pd.DataFrame, base: Path | None, log=print) -> dict:
    """The profile of a `moesim calibrate` samples directory (its host.json), on a datasheet base or not."""
    compute = read_compute_samples(samples, host=host, required=base is None, log=log)
    ffn_path = samples / EXPERT_FFN_FILE
    extra: dict = {"expert_ffn": _read_csv(ffn_path, EXPERT_FFN_COLUMNS) if ffn_path.is_file() else None}
    if base is None and str((host.get("compute") or {}).get("device_kind", "cpu")) != "cpu":
        extra.update(zip(("tile_candidates", "tiles_source"), _gpu_tiles_fallback(host["device"])))
    return build_profile(name or out.stem, kernels, collectives, host["provenance"],
                         os.path.relpath(samples, out.parent), dtype=host["dtype"],
                         ranks_per_node=host["ranks_per_node"], memory_bytes=host["memory_bytes"],
                         memory_bandwidth_bytes_per_s=host["memory_bandwidth_bytes_per_s"], device=host["device"],
                         base=_read_base(base) if base is not None else None, compute=compute, **extra)


def _read_csv(path: Path, columns) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SpecError(str(path), Verbatim(" ".join(str(err).split())[:200]), "a CSV file of samples") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SpecError(str(path), missing, f"columns {', '.join(columns)}")
    return frame


def _read_collectives(path: Path, log=print) -> pd.DataFrame:
    """collectives.csv; one written before the mean time was recorded (time_mean_s) is fitted to its medians,
    which one line says (those collectives were also timed back to back, not after compute)."""
    frame = _read_csv(path, [c for c in COLLECTIVE_COLUMNS if c != "time_mean_s"])
    if "time_mean_s" in frame.columns:
        return frame
    log(f"{path}: no time_mean_s column (samples from before collectives were timed after compute): "
        "fitted to time_median_s; recalibrate for the mean a training step sees")
    return frame.assign(time_mean_s=frame["time_median_s"])[list(COLLECTIVE_COLUMNS)]


def read_compute_samples(samples: Path, *, host: dict | None, required: bool, base_sm_count: int | None = None,
                         log=print) -> ComputeSamples | None:
    """The compute CSVs of a samples directory, or None when gemm.csv, elementwise.csv or launch.csv is missing
    (`required`: a SpecError naming the missing files instead, attention.csv too; otherwise one line saying which
    ones, and that the base's compute model stays). Without attention.csv alone, the rest is read and the base's
    attention table stays (ComputeSamples.attention None), which one line says."""
    missing = [f for f in COMPUTE_FILES if not (samples / f).is_file()]
    if missing:
        names = ", ".join(missing)
        if required:
            raise SpecError(names, Verbatim("no such file"),
                            f"the compute model's samples, {', '.join(COMPUTE_FILES)} (`moesim calibrate` writes "
                            "them since it measures the compute model and the attention core): re-measure, or pass "
                            "--base PROFILE to keep a datasheet profile's compute model", source=str(samples))
        if missing != [ATTENTION_FILE]:
            log(f"{samples}: no {names}: the compute model (gemm_efficiency, hbm_efficiency, kernel_launch_us, "
                "attention_efficiency) stays the base profile's, marked not measured")
            return None
        log(f"{samples}: no {ATTENTION_FILE}: the attention table (attention_efficiency) stays the base profile's, "
            "marked not measured")
    frames = [_read_csv(samples / f, cols) for f, cols in
              ((GEMM_FILE, GEMM_COLUMNS), (ELEMENTWISE_FILE, ELEMENTWISE_COLUMNS), (LAUNCH_FILE, LAUNCH_COLUMNS))]
    attention = _read_csv(samples / ATTENTION_FILE, ATTENTION_COLUMNS) if ATTENTION_FILE not in missing else None
    host = host or {}
    meta = dict(host.get("compute") or {})
    device = str(meta.get("device") or host.get("device") or "unknown device")
    meta.setdefault("device", device)
    meta.setdefault("date", host.get("provenance", {}).get("date", "?"))
    meta.setdefault("device_kind", "cpu" if "cpu" in device.lower() else "cuda")
    if "sm_count" not in meta:
        meta["sm_count"] = base_sm_count or host.get("provenance", {}).get("threads_per_rank") or 1
    return ComputeSamples(*frames, meta=meta, attention=attention)


def profile_from_samples(samples: Path, out: Path, *, force: bool, base: Path | None, name: str | None = None,
                         log=print) -> Path:
    """A profile from a samples directory (collectives.csv; a `moesim calibrate` directory also has host.json,
    kernels.csv and the compute CSVs; the cluster kit's has meta.json). Without host.json, `base` (a datasheet
    profile) supplies the peaks and the compute model; a `moesim calibrate` directory uses the base its host.json
    names, or --base."""
    _refuse_overwrite(out, force)
    if not (samples / "collectives.csv").is_file():
        raise SpecError("--from-samples", str(samples), "a directory with collectives.csv (from calibrate/run.py)")
    collectives = _read_collectives(samples / "collectives.csv", log)
    kernels = _read_csv(samples / "kernels.csv", KERNEL_COLUMNS) if (samples / "kernels.csv").is_file() else \
        pd.DataFrame(columns=list(KERNEL_COLUMNS))
    meta = json.loads((samples / "meta.json").read_text()) if (samples / "meta.json").is_file() else {}
    host_path = samples / "host.json"
    if host_path.is_file():  # a `moesim calibrate` directory: everything was measured here
        host = json.loads(host_path.read_text())
        named = host.get("provenance", {}).get("base_profile")
        _write_profile(out, _profile_from_host(host, samples, out, name, kernels, collectives,
                                               base if base is not None else
                                               (PROFILE_DIR / f"{named}.yaml" if named else None), log))
        log(f"wrote {out}")
        return out
    if base is None:
        raise SpecError("--base", None, "a datasheet profile for what the cluster kit does not measure (peaks, "
                                        "memory, compute), e.g. --base hw_profiles/dgx-h100.yaml")
    base_doc = _read_base(base)
    provenance = {"date": date.today().isoformat(), "device": meta.get("device", "unknown"),
                  "hosts": len(meta.get("hosts", [])) or None, "ranks": meta.get("world_size"),
                  "backend": meta.get("backend"), "torch": meta.get("torch"), "nccl": meta.get("nccl"),
                  "env": meta.get("env", {}), "measured_utc": meta.get("created_utc"),
                  "base_profile": str(base) if base else None}
    dtype = str(kernels["dtype"].iloc[0]) if not kernels.empty else "bf16"
    hosts = meta.get("hosts") or [[0]]
    base_sms = (base_doc.get("gpu", {}).get("sm_count") or {}).get("value")
    compute = read_compute_samples(samples, host={"device": meta.get("device"), "provenance": provenance},
                                   required=False, base_sm_count=base_sms, log=log)
    doc = build_profile(name or out.stem, kernels, collectives, provenance, os.path.relpath(samples, out.parent),
                        dtype=dtype, ranks_per_node=len(hosts[0]), memory_bytes=0.0,
                        memory_bandwidth_bytes_per_s=0.0, device=str(meta.get("device", "unknown")), base=base_doc,
                        compute=compute)
    _write_profile(out, doc)
    log(f"wrote {out}")
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, frame.to_csv(index=False, float_format="%.9g"))


def _write_profile(path: Path, doc: dict) -> None:
    from moesim.io.profile import load_profile  # noqa: PLC0415

    header = ("# Written by `moesim calibrate`; every number's source is beside it and the raw samples are in the\n"
              "# samples directory named under calibration.samples.\n")
    text = header + dump_yaml(to_yaml_ready(doc))
    tmp = path.with_name(path.name + ".check.yaml")
    tmp.write_text(text)
    try:
        load_profile(tmp)  # never leave a profile behind that moesim cannot read
    except SpecError as err:
        raise SpecError(err.key, err.value, err.expected, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    write_text_atomic(path, text)
