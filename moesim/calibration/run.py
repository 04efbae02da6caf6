"""`moesim calibrate`: measure this machine (expert kernels here, collectives on spawned ranks), fit, and write
hw_profiles/<name>.yaml with the raw samples beside it in <name>.samples/; or build a profile from the samples
directory the cluster kit (calibrate/run.py under torchrun or Slurm) wrote."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

from moesim.calibration.kernels import (FULL_TOKENS, QUICK_SHAPES, QUICK_TOKENS, KernelShape, measure_kernels,
                                        measure_memory_bandwidth, preset_shapes)
from moesim.calibration.profile_writer import build_profile, to_yaml_ready
from moesim.calibration.samples import COLLECTIVE_COLUMNS, KERNEL_COLUMNS
from moesim.io.results import write_text_atomic
from moesim.io.safe_yaml import dump_yaml
from moesim.io.strict import read_yaml_mapping
from moesim.spec.errors import SpecError

CPU_FULL_SHAPES = (KernelShape(256, 512, 8), KernelShape(1024, 1024, 8))
CPU_FULL_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def _device() -> tuple[str, str, str]:
    """(torch device, training dtype to calibrate, device description)."""
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        return "cuda", "bf16", torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return "cpu", "fp32", f"CPU rank: {cpu}, 1 thread"


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


def samples_dir_for(profile_path: Path) -> Path:
    return profile_path.with_name(profile_path.stem + ".samples")


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise SpecError("--out", str(path), "a profile path that does not exist yet (or pass --force to replace it)")


def calibrate_local(out: Path, *, quick: bool, ranks: tuple[int, ...], force: bool, timeout_s: float,
                    name: str | None = None, log=print) -> Path:
    """Measure kernels in this process and collectives on `ranks` spawned gloo/NCCL ranks of this host; write
    the profile and its samples. Returns the profile path."""
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

    provenance = {"date": date.today().isoformat(), "device": description, "hosts": 1, "ranks": list(ranks),
                  "threads_per_rank": 1 if device == "cpu" else None, "backend": metas[-1].get("backend"),
                  "mode": "quick" if quick else "full", "command": " ".join(["moesim", *sys.argv[1:]]),
                  "env": metas[-1].get("env", {}), **_versions()}
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(ranks) if device == "cpu" else \
        torch.cuda.get_device_properties(0).total_memory
    host = {"provenance": provenance, "dtype": dtype, "ranks_per_node": max(ranks), "memory_bytes": memory,
            "memory_bandwidth_bytes_per_s": bandwidth, "device": description}
    write_text_atomic(samples / "host.json", json.dumps(to_yaml_ready(host), indent=2) + "\n")
    doc = build_profile(name or out.stem, kernels, collectives, provenance, samples.name, dtype=dtype,
                        ranks_per_node=max(ranks), memory_bytes=memory, memory_bandwidth_bytes_per_s=bandwidth,
                        device=description)
    _write_profile(out, doc)
    log(f"wrote {out} and {samples}/ in {time.perf_counter() - t0:.1f} s")
    return out


def profile_from_samples(samples: Path, out: Path, *, force: bool, base: Path | None, name: str | None = None,
                         log=print) -> Path:
    """A profile from a samples directory (collectives.csv, meta.json, optionally kernels.csv). Without
    kernels.csv, `base` (a datasheet profile) supplies the peaks and the compute model."""
    _refuse_overwrite(out, force)
    if not (samples / "collectives.csv").is_file():
        raise SpecError("--from-samples", str(samples), "a directory with collectives.csv (from calibrate/run.py)")
    collectives = pd.read_csv(samples / "collectives.csv")
    missing = [c for c in COLLECTIVE_COLUMNS if c not in collectives.columns]
    if missing:
        raise SpecError(f"{samples / 'collectives.csv'}", missing, f"columns {', '.join(COLLECTIVE_COLUMNS)}")
    kernels = pd.read_csv(samples / "kernels.csv") if (samples / "kernels.csv").is_file() else \
        pd.DataFrame(columns=list(KERNEL_COLUMNS))
    meta = json.loads((samples / "meta.json").read_text()) if (samples / "meta.json").is_file() else {}
    host_path = samples / "host.json"
    if host_path.is_file() and base is None:  # a `moesim calibrate` directory: everything was measured here
        host = json.loads(host_path.read_text())
        doc = build_profile(name or out.stem, kernels, collectives, host["provenance"],
                            os.path.relpath(samples, out.parent), dtype=host["dtype"],
                            ranks_per_node=host["ranks_per_node"], memory_bytes=host["memory_bytes"],
                            memory_bandwidth_bytes_per_s=host["memory_bandwidth_bytes_per_s"], device=host["device"])
        _write_profile(out, doc)
        log(f"wrote {out}")
        return out
    if base is None:
        raise SpecError("--base", None, "a datasheet profile for what the cluster kit does not measure (peaks, "
                                        "memory, compute), e.g. --base hw_profiles/dgx-h100.yaml")
    base_doc = read_yaml_mapping(base, "profile")  # the same rules and limits as every profile read
    if base_doc is not None:
        base_doc.pop("calibration", None)
    provenance = {"date": date.today().isoformat(), "device": meta.get("device", "unknown"),
                  "hosts": len(meta.get("hosts", [])) or None, "ranks": meta.get("world_size"),
                  "backend": meta.get("backend"), "torch": meta.get("torch"), "nccl": meta.get("nccl"),
                  "env": meta.get("env", {}), "measured_utc": meta.get("created_utc"),
                  "base_profile": str(base) if base else None}
    dtype = str(kernels["dtype"].iloc[0]) if not kernels.empty else "bf16"
    hosts = meta.get("hosts") or [[0]]
    doc = build_profile(name or out.stem, kernels, collectives, provenance, os.path.relpath(samples, out.parent),
                        dtype=dtype, ranks_per_node=len(hosts[0]), memory_bytes=0.0,
                        memory_bandwidth_bytes_per_s=0.0, device=str(meta.get("device", "unknown")), base=base_doc)
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
