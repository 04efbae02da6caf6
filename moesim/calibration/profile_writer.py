"""Turn calibration samples into a hardware profile (the YAML `moesim.io.profile` reads), every number with its
source. Pure pandas/numpy: the measuring happened elsewhere (moesim/calibration/kernels.py, collectives.py)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from moesim.calibration.compute_fit import (CPU_TILE_CANDIDATES, AttentionFit, ComputeSamples, fit_attention,
                                            fit_gemm, fit_hbm_efficiency, fit_launch)
from moesim.calibration.fit import collective_tables, fit_expert_ffn, fit_expert_kernel
from moesim.spec.bounds import MIN_EFFICIENCY
from moesim.spec.errors import SpecError

ROWS_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def _leaf(value, source: str) -> dict:
    return {"value": value, "source": source}


def kernel_peak_flop_per_s(kernels: pd.DataFrame, dtype: str) -> float:
    """The fastest dense matmul measured (the ceiling a grouped GEMM can reach on this device)."""
    dense = kernels[(kernels["impl"] == "torch_matmul") & (kernels["dtype"] == dtype)]
    if dense.empty:
        raise SpecError("kernels.torch_matmul", dtype, "torch_matmul samples of the calibrated dtype")
    return float((dense["flop"] / dense["time_median_s"]).max())


def build_profile(name: str, kernels: pd.DataFrame, collectives: pd.DataFrame, provenance: dict,
                  samples_dir: str, *, dtype: str, ranks_per_node: int, memory_bytes: float,
                  memory_bandwidth_bytes_per_s: float, device: str, base: dict | None = None,
                  compute: ComputeSamples | None = None,
                  tile_candidates=CPU_TILE_CANDIDATES, tiles_source: str | None = None,
                  expert_ffn: pd.DataFrame | None = None) -> dict:
    """A profile document. Without `base` (a datasheet profile's document) every hardware number comes from
    the samples: the peak is the fastest measured dense matmul, the node tier the intra-node all-to-all, the
    compute keys are fitted to `compute` (required then, attention.csv included: the attention table) with the
    tiles chosen among `tile_candidates` (one candidate and `tiles_source`: kept as given). With `base`, its
    datasheet peaks, fabric and GEMM tiles stay, and only the measured parts are replaced; without `compute` its
    compute keys stay, marked not measured (its attention table too, also where `compute` has no attention
    samples). `expert_ffn` (expert_ffn.csv, optional): the expert FFN's forward and backward fits."""
    when = f"moesim calibrate, {provenance.get('date', '?')}, {device}"
    if kernels.empty and base is None:
        raise SpecError("kernels.csv", "no kernel samples", "kernel samples, or a datasheet base profile (--base)")
    if (compute is None or compute.attention is None) and base is None:
        raise SpecError("compute samples", None, "gemm.csv, elementwise.csv, launch.csv and attention.csv (moesim "
                                                 "calibrate), or a datasheet base profile (--base) for the compute "
                                                 "model")
    peak = kernel_peak_flop_per_s(kernels, dtype) if not kernels.empty else 0.0
    fits = collective_tables(collectives) if not collectives.empty else {}
    intra = fits.get(("all_to_all", "intra_node"))
    inter = fits.get(("all_to_all", "inter_node"))

    # the simulator divides by the PROFILE's peak: with a datasheet base, efficiencies measured against the
    # fastest matmul here are rescaled to that peak (measured peak / datasheet peak)
    profile_peak = peak
    if base is not None and not kernels.empty:
        leaf = base.get("gpu", {}).get("peak_dense_TFLOPs", {}).get(dtype)
        if not isinstance(leaf, dict) or not leaf.get("value"):
            raise SpecError("--base", f"no gpu.peak_dense_TFLOPs.{dtype}", f"a base profile with a {dtype} peak")
        profile_peak = float(leaf["value"]) * 1e12
    scale = peak / profile_peak if profile_peak else 1.0

    kernel_entries, tile = [], 1
    measured = kernels[kernels["impl"] != "torch_matmul"] if not kernels.empty else kernels
    for (impl, kdtype, hidden, ffn), rows in (measured.groupby(["impl", "dtype", "hidden", "ffn"], sort=True)
                                             if not measured.empty else []):
        if (kernels["impl"] == "triton").any() and impl != "triton":
            continue  # on a GPU the simulator models the Triton kernel; the torch loop is only the reference
        tile_rows = _tile_rows(impl)
        fit = fit_expert_kernel(rows, peak, tile_rows)
        tile = tile_rows
        kernel_entries.append({
            "impl": str(impl), "dtype": str(kdtype), "hidden": int(hidden), "ffn": int(ffn),
            "t0_us": round(fit.t0_s * 1e6, 4), "eff_max": round(min(fit.eff_max * scale, 1.0), 6),
            "tile_rows": tile_rows, "fit_rel_error": round(fit.rel_error, 4),
            "table_rows": [[m, round(min(e * scale, 1.0), 6)] for m, e in fit.efficiency_table(ROWS_GRID)]})
    ffn_entries = _expert_ffn_entries(expert_ffn, peak, scale) if expert_ffn is not None and peak else []

    doc: dict = copy.deepcopy(base) if base else {}
    doc.update({"schema_version": 1, "name": name, "status": f"calibrated: {when}",
                "description": f"measured by moesim calibrate on {device}"})
    if base is not None and fits:  # measured all-to-all latencies already hold the per-peer issue cost
        for section, key in (("node", "nvlink_peer_overhead_us"), ("fabric", "nic_peer_overhead_us")):
            doc.setdefault(section, {})[key] = _leaf(0.0, "contained in the measured all-to-all latency")
    if base is None:
        nvl_GBps = intra.bus_bandwidth_bytes_per_s / 1e9 if intra else None
        if nvl_GBps is None:
            raise SpecError("collectives", "no intra-node all-to-all", "a calibration with >= 2 ranks on one host")
        doc["gpu"] = {"name": device,
                      "peak_dense_TFLOPs": {dtype: _leaf(round(peak / 1e12, 9), f"{when}: fastest torch matmul")},
                      "hbm_GB": _leaf(round(memory_bytes / 1e9, 3), f"{when}: host memory / ranks per host"),
                      "hbm_bandwidth_GBps": _leaf(round(memory_bandwidth_bytes_per_s / 1e9, 3),
                                                  f"{when}: tensor copy bandwidth (read + write)")}
        src_intra = f"{when}: intra-node all_to_all, {intra.ranks} ranks (alpha-beta fit, busbw)"
        doc["node"] = {"gpus_per_node": _leaf(ranks_per_node, f"{when}: ranks per host"),
                       "nvlink_GBps": _leaf(round(nvl_GBps, 6), src_intra),
                       "nvlink_latency_us": _leaf(round(intra.alpha_beta.alpha_s * 1e6, 3), src_intra),
                       "nvlink_efficiency": _leaf(1.0, "measured bandwidth is already effective"),
                       "nvlink_peer_overhead_us": _leaf(0.0, "contained in the measured all-to-all latency")}
        if inter is not None:
            src_inter = f"{when}: inter-node all_to_all, {inter.ranks} ranks (alpha-beta fit, busbw)"
            # every local rank's rail group ran at once: the node's one modelled NIC carries all of them
            fabric = (round(inter.bus_bandwidth_bytes_per_s * ranks_per_node * 8 / 1e9, 6),
                      round(inter.alpha_beta.alpha_s * 1e6, 3), src_inter)
        else:
            src_inter = ("single host: no inter-node tier was measured; the intra-node numbers are repeated so the "
                         "profile loads. Do not simulate several nodes with this profile")
            fabric = (round(nvl_GBps * 8, 6), round(intra.alpha_beta.alpha_s * 1e6, 3), src_inter)
        doc["fabric"] = {"nics_per_node": _leaf(1, src_inter if inter is None else "one measured path per host"),
                         "nic_Gbps": _leaf(fabric[0], fabric[2]), "nic_latency_us": _leaf(fabric[1], fabric[2]),
                         "nic_efficiency": _leaf(1.0, "measured bandwidth is already effective"),
                         "rail_optimized": _leaf(False, "not measured: one path per host assumed"),
                         "oversubscription": _leaf(1.0, "not measured"),
                         "nic_peer_overhead_us": _leaf(0.0, "contained in the measured all-to-all latency")}
        doc["compute"] = {
            "attention_efficiency": {},  # measured: attention.csv, in _compute_section
            "expert_tile_rows": _leaf(int(tile), "the calibrated expert kernel's row tile")}
    _compute_section(doc, compute, dtype=dtype, peak=peak, memory_bandwidth_bytes_per_s=memory_bandwidth_bytes_per_s,
                     base=base, tile_candidates=tile_candidates, tiles_source=tiles_source)
    doc["calibration"] = {
        "provenance": provenance, "samples": samples_dir, "expert_kernels": kernel_entries,
        "expert_ffns": ffn_entries,
        "collectives": _collectives_doc(fits)}
    return doc


def _tile_rows(impl: str) -> int:
    """Rows each expert is padded to: Triton's BLOCK_M on a GPU (64, moesim.kernels' launch options); the torch
    loop pads nothing."""
    return 64 if impl == "triton" else 1


def _expert_ffn_entries(samples: pd.DataFrame, peak: float, scale: float) -> list[dict]:
    """calibration.expert_ffns: one entry per measured (impl, dtype, hidden, ffn), its efficiencies against the
    profile's peak (`scale`: measured peak / profile peak)."""
    entries = []
    for (impl, kdtype, hidden, ffn), rows in samples.groupby(["impl", "dtype", "hidden", "ffn"], sort=True):
        tile_rows = _tile_rows(impl)
        fit = fit_expert_ffn(rows, peak, tile_rows)
        entries.append({
            "impl": str(impl), "dtype": str(kdtype), "hidden": int(hidden), "ffn": int(ffn), "tile_rows": tile_rows,
            "forward_t0_us": round(fit.forward.t0_s * 1e6, 4),
            "forward_eff_max": round(min(fit.forward.eff_max * scale, 1.0), 6),
            "backward_t0_us": round(fit.backward.t0_s * 1e6, 4),
            "backward_eff_max": round(min(fit.backward.eff_max * scale, 1.0), 6),
            "fit_rel_error": round((fit.forward.rel_error + fit.backward.rel_error) / 2, 4)})
    return entries


COMPUTE_KEYS = ("gemm_efficiency", "hbm_efficiency", "kernel_launch_us")  # what the compute samples measure
ATTENTION_KEY = "attention_efficiency"  # what attention.csv measures
NOT_MEASURED = "not measured by this calibration"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _tiles_text(tiles) -> str:
    return "[" + ", ".join(f"[{r}, {c}]" for r, c in tiles) + "]"


def _compute_section(doc: dict, compute: ComputeSamples | None, *, dtype: str, peak: float,
                     memory_bandwidth_bytes_per_s: float, base: dict | None, tile_candidates,
                     tiles_source: str | None) -> None:
    """gpu.sm_count and compute.{gemm_efficiency, gemm_tiles, hbm_efficiency, kernel_launch_us,
    attention_efficiency} of `doc`, fitted to the compute samples against the profile's own peak and HBM bandwidth
    (the base's when there is one); a base's keys that no samples measure keep their values, their sources saying
    so."""
    section = doc.setdefault("compute", {})
    if compute is None or compute.attention is None:  # a datasheet base's attention table stays, said so
        leaf = section.get(ATTENTION_KEY)
        if isinstance(leaf, dict):
            section[ATTENTION_KEY] = {**leaf, "source": f"{NOT_MEASURED} (no attention.csv); the base profile's: "
                                                        f"{leaf.get('source', '?')}"}
    if compute is None:  # a datasheet base without compute samples: its numbers stay, said to be unmeasured
        for key in COMPUTE_KEYS:
            if isinstance(section.get(key), dict):
                section[key] = _leaf(section[key].get("value"), f"{NOT_MEASURED} (no compute "
                                     f"samples); the base profile's: {section[key].get('source', '?')}")
        return
    meta = compute.meta
    when = f"moesim calibrate, {meta.get('date', '?')}, {meta.get('device', '?')}"
    gpu = doc.setdefault("gpu", {})
    if base is not None:  # the datasheet's peak, HBM bandwidth and candidate tiles
        leaf = gpu.get("peak_dense_TFLOPs", {}).get(dtype)
        if not isinstance(leaf, dict) or not leaf.get("value"):
            raise SpecError("--base", f"no gpu.peak_dense_TFLOPs.{dtype}", f"a base profile with a {dtype} peak")
        peak = float(leaf["value"]) * 1e12
        hbm_bytes_per_s = float(gpu["hbm_bandwidth_GBps"]["value"]) * 1e9
        tile_candidates = (tuple(tuple(int(x) for x in t) for t in section["gemm_tiles"]["value"]),)
    else:
        hbm_bytes_per_s = memory_bandwidth_bytes_per_s
    launch = fit_launch(compute.launch)
    hbm = fit_hbm_efficiency(compute.elementwise, hbm_bytes_per_s=hbm_bytes_per_s, launch_s=launch.launch_s)
    sms = int(meta["sm_count"])
    gemm = fit_gemm(compute.gemm, dtype=dtype, peak_flop_per_s=peak, sm_count=sms, hbm_bytes_per_s=hbm_bytes_per_s,
                    hbm_efficiency=hbm.efficiency, launch_s=launch.launch_s, tile_candidates=tile_candidates)
    on_gpu = str(meta.get("device_kind", "cpu")).startswith("cuda")
    gpu["sm_count"] = _leaf(sms, f"{when}: torch.cuda.get_device_properties(0).multi_processor_count" if on_gpu
                            else f"{when}: CPU threads per rank (torch.set_num_threads): one GEMM tile at a time each")
    section["gemm_efficiency"] = _leaf(round(gemm.efficiency, 6), _gemm_source(
        when, compute.gemm[compute.gemm["dtype"] == dtype], gemm, dtype, sms, hbm.efficiency, peak))
    if base is None:
        tried = ", ".join(f"{_tiles_text(t)} (MAPE {_pct(err)})" for t, _, err in gemm.candidates)
        source = tiles_source if tiles_source and len(tile_candidates) == 1 else \
            f"{when}: of the candidates {tried}, the one with the least error over gemm.csv"
        section["gemm_tiles"] = _leaf([list(t) for t in gemm.tiles], source)
    section["hbm_efficiency"] = _leaf(round(hbm.efficiency, 6), _hbm_source(
        when, compute.elementwise, hbm, hbm_bytes_per_s, measured_here=base is None))
    section["kernel_launch_us"] = _leaf(round(launch.launch_s * 1e6, 4), (
        f"{when}: median per-call time of {launch.calls} back-to-back x.add_(1) on a one-element tensor, "
        f"{launch.repeats} timings (launch.csv; p10-p90 {launch.p10_s * 1e6:.3g}-{launch.p90_s * 1e6:.3g} us)"))
    if compute.attention is not None:
        fit = fit_attention(compute.attention, dtype=dtype, peak_flop_per_s=peak)
        section[ATTENTION_KEY] = {
            "seq_lens": list(fit.seq_lens), "head_dims": list(fit.head_dims),
            "forward_causal": [[round(v, 6) for v in row] for row in fit.forward],
            "backward_causal": [[round(v, 6) for v in row] for row in fit.backward],
            "source": _attention_source(compute, fit, dtype, peak, on_gpu)}


def _attention_source(compute: ComputeSamples, fit: AttentionFit, dtype: str, peak: float, on_gpu: bool) -> str:
    meta = {**compute.meta, **(compute.meta.get("attention") or {})}  # its own date where measured apart
    when = f"moesim calibrate, {meta.get('date', '?')}, {meta.get('device', '?')}"
    a = compute.attention
    a = a[a["dtype"] == dtype]  # type: ignore[index]
    tokens = sorted({int(b * s) for b, s in zip(a["batch"], a["seq_len"])})
    width = sorted({int(h * d) for h, d in zip(a["heads"], a["head_dim"])})
    fwd = np.asarray(fit.forward_flop_per_s) / 1e12
    bwd = np.asarray(fit.backward_flop_per_s) / 1e12
    unit, scale = ("TFLOP/s", 1.0) if on_gpu else ("GFLOP/s", 1e3)
    backend = ", ".join(fit.backends)
    how = ("torch._fused_sdp_choice, the dispatch SDPA itself uses" if "unknown" not in fit.backends else
           "as far as this torch says")
    text = (f"{when}: causal torch.nn.functional.scaled_dot_product_attention (is_causal=True), {dtype}, "
            f"SDPA backend {backend} ({how}); forward and forward+backward (torch.autograd.grad for q, k, v) timed "
            f"at {len(fit.seq_lens)} seq_lens x {len(fit.head_dims)} head_dims (attention.csv, {fit.samples} rows: "
            f"{'/'.join(map(str, tokens))} tokens per call, batch = tokens / seq_len; heads x head_dim = "
            f"{'/'.join(map(str, width))}), the backward's time = forward+backward's minus forward's; efficiency = "
            f"FlashAttention-convention FLOPs (cost/attention.py: causal forward 4*batch*heads*head_dim*seq^2/2, "
            f"backward 2.5x the forward's) / (median time x the {dtype} peak {peak / 1e12:.6g} TFLOP/s). Achieved "
            f"forward {_range(fwd * scale)} {unit}, backward {_range(bwd * scale)} {unit}")
    clamped = fit.clamped
    if clamped:
        shown = "; ".join(f"{p} head_dim {d} seq_len {s}: "
                          f"{f'{r:.4g}' if np.isfinite(r) else 'no time left (forward+backward <= forward)'}"
                          for p, d, s, r in clamped[:6])
        more = f"; and {len(clamped) - 6} more" if len(clamped) > 6 else ""
        text += (f". {len(clamped)} of {2 * len(fit.seq_lens) * len(fit.head_dims)} values clamped into "
                 f"[{MIN_EFFICIENCY:g}, 1] (raw: {shown}{more})")
    return text


def _range(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return "-"
    return f"{finite.min():.3g}-{finite.max():.3g}"


def _clipped(fit) -> str:
    return f" (the unclipped optimum, {fit.raw:.3f}, lies outside [{MIN_EFFICIENCY:g}, 1])" if fit.clipped else ""


def _gemm_source(when: str, g: pd.DataFrame, gemm, dtype: str, sms: int, hbm_efficiency: float, peak: float) -> str:
    return (f"{when}: fitted to {gemm.samples} dense {dtype} GEMMs (gemm.csv: m {_span(g['m'])}, n {_span(g['n'])}, "
            f"k {_span(g['k'])}) with cost/gemm.py's shape model (sm_count {sms}, tiles {_tiles_text(gemm.tiles)}, "
            f"hbm_efficiency {hbm_efficiency:.3f}) plus one measured launch per GEMM, against the peak "
            f"{peak / 1e12:.6g} TFLOP/s: MAPE {_pct(gemm.mape)}{_clipped(gemm)}")


def _hbm_source(when: str, e: pd.DataFrame, hbm, hbm_bytes_per_s: float, measured_here: bool) -> str:
    what = ("itself a measured copy bandwidth (see its source; no datasheet number, as on a CPU: this is the "
            "element-wise kernels' share of it)") if measured_here else "the datasheet HBM bandwidth"
    return (f"{when}: {hbm_bytes_per_s * hbm.efficiency / 1e9:.4g} GB/s fitted to {hbm.samples} element-wise "
            f"{' and '.join(sorted(set(e['op'])))} kernels (elementwise.csv: {_span(e['bytes'] / (1 << 20))} MiB "
            f"moved per call, one measured launch each) over hbm_bandwidth_GBps {hbm_bytes_per_s / 1e9:.6g}, "
            f"{what}: MAPE {_pct(hbm.mape)}{_clipped(hbm)}")


def _collectives_doc(fits: dict) -> dict:
    out: dict = {}
    for (op, tier), fit in sorted(fits.items()):
        if tier not in ("intra_node", "inter_node"):
            continue
        out.setdefault(tier, {})[op] = {
            "ranks": fit.ranks, "alpha_us": round(fit.alpha_beta.alpha_s * 1e6, 4),
            "bandwidth_GBps": round(fit.alpha_beta.bandwidth_bytes_per_s / 1e9, 6),  # asymptotic algbw
            "fit_rel_error": round(fit.alpha_beta.rel_error, 4),
            "table": [[int(b), round(float(v), 6)] for b, v in fit.table]}
    return out


def to_yaml_ready(doc: dict) -> dict:
    """numpy scalars -> Python, so yaml.safe_dump writes plain numbers."""
    if isinstance(doc, dict):
        return {k: to_yaml_ready(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [to_yaml_ready(v) for v in doc]
    if isinstance(doc, np.generic):
        return doc.item()
    if isinstance(doc, str):
        return str(doc)  # str subclasses such as torch's TorchVersion
    return doc
