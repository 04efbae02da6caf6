"""Profiles: what a hardware profile (hw_profiles/*.yaml) means for the simulator. Its compute keys as achieved
GEMM, attention and element-wise rates, its collective bandwidth over message size per tier (nccl-tests' algbw and
busbw), where each number comes from; a second profile overlaid (e.g. a datasheet one against a calibrated one).
Every curve is computed by moesim's cost and network models (moesim.cost.profile_rates, moesim.network.bandwidth)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app.common import MOESIM_ERRORS, PROFILES_DIR, profile_names, show_error
from app.charts import curves
from moesim import units
from moesim.cost.profile_rates import (attention_flop_per_s, elementwise_bytes_per_s, elementwise_bytes_per_s_limit,
                                       gemm_flop_per_s, gemm_flop_per_s_limit)
from moesim.io.profile import load_profile
from moesim.network.bandwidth import CURVE_OPS, collective_curve, tier_limit_bytes_per_s
from moesim.spec.dtype import Dtype
from moesim.spec.hardware import ClusterProfile
from moesim.spec.network import NetworkModelKind, NetworkSpec

NONE = "(none)"
GEMM_ROWS = 2 ** np.arange(0, 17)  # 1 .. 65,536 rows (tokens)
ELEMENTWISE_BYTES = 2.0 ** np.arange(10, 34)  # 1 KiB .. 8 GiB moved per kernel
MESSAGE_BYTES = 2.0 ** np.arange(10, 33)  # 1 KiB .. 4 GiB, nccl-tests -b 1K -e 4G -f 2
ATTENTION_SEQ_LENS = 2 ** np.arange(7, 16)  # 128 .. 32,768 tokens
TIER_LABELS = {"intra_node": "NVLink: the ranks of one node", "inter_node": "NIC: one rank per node"}


@st.cache_resource(show_spinner=False, max_entries=16)
def _profile(name: str) -> ClusterProfile:
    return load_profile(PROFILES_DIR / f"{name}.yaml")


def _size_label(nbytes: float) -> str:
    for unit, scale in (("GiB", units.GiB), ("MiB", units.MiB), ("KiB", units.KiB)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def _facts(profiles: dict[str, ClusterProfile]) -> pd.DataFrame:
    """The headline numbers of each profile, in the units its YAML writes them."""
    rows = {}
    for name, p in profiles.items():
        peaks = ", ".join(f"{d.value} {v / units.TFLOP:g}" for d, v in p.gpu.peak_flop_per_s.items())
        rows[name] = {"status": p.status, "GPU": f"{p.node.gpus_per_node} x {p.gpu.name}",
                      "dense peak (TFLOP/s)": peaks, "HBM (GB)": f"{p.gpu.hbm_bytes / units.GB:g}",
                      "HBM bandwidth (GB/s)": f"{p.gpu.hbm_bandwidth_bytes_per_s / units.GB_PER_S:g}",
                      "NVLink per GPU, one direction (GB/s)":
                          f"{p.node.nvlink_bandwidth_bytes_per_s / units.GB_PER_S:g}",
                      "NICs x line rate (Gb/s)":
                          f"{p.fabric.nics_per_node} x {p.fabric.nic_bandwidth_bytes_per_s / units.GBIT_PER_S:g}",
                      "calibrated collectives": ", ".join(
                          f"{tier}: {', '.join(ops)}" for tier, ops in p.calibration.collectives.items())
                      if p.calibration is not None else "none (datasheet numbers)"}
    return pd.DataFrame(rows)


def _gemm(profiles: dict[str, ClusterProfile], dtype: Dtype) -> None:
    st.caption("Achieved FLOP/s of one GEMM [M, K] x [K, N] by cost/gemm.py's shape model (tile and wave "
               "quantisation, each tile's output write, the HBM roofline) with the profile's gemm_efficiency, "
               "gemm_tiles and sm_count. Dashed: the model's ceiling, full waves of long-K tiles.")
    c = st.columns(4)
    square = c[0].toggle("square (M = N = K)", key="gemm_square")
    n = c[1].number_input("N (columns)", 1, 2**20, 4096, key="gemm_n", disabled=square)
    k = c[2].number_input("K (reduction)", 1, 2**20, 4096, key="gemm_k", disabled=square)
    launch = c[3].checkbox("one kernel launch per GEMM", True, key="gemm_launch",
                           help="as a benchmark timing calls back to back sees it (the simulator books launches "
                                "in their own bucket)")
    rows, limits = [], []
    for name, p in profiles.items():
        rate = gemm_flop_per_s(p, dtype, GEMM_ROWS, GEMM_ROWS if square else n, GEMM_ROWS if square else k, launch)
        rows.append(pd.DataFrame({"profile": name, "M": GEMM_ROWS, "TFLOP/s": rate / units.TFLOP}))
        limits.append({"profile": name, "TFLOP/s": gemm_flop_per_s_limit(p, dtype) / units.TFLOP})
    frame = pd.concat(rows, ignore_index=True)
    st.altair_chart(curves(frame, "M", "TFLOP/s", "profile", "M (rows, e.g. tokens)", f"achieved {dtype.value} "
                           "TFLOP/s", log_y=True, limits=pd.DataFrame(limits)), width="stretch")
    with st.expander("values"):
        st.dataframe(frame.pivot(index="M", columns="profile", values="TFLOP/s"), width="stretch")


def _attention(profiles: dict[str, ClusterProfile], dtype: Dtype) -> None:
    st.caption("The fused attention core's efficiency table (fraction of peak, causal, FlashAttention's FLOP "
               "convention; looked up bilinearly in log2 seq_len and head_dim, clamped at the ends) and the FLOP/s "
               "it gives at the peak the core runs at (bf16 under an fp8 recipe).")
    c = st.columns(2)
    head_dim = c[0].select_slider("head dimension", [32, 64, 96, 128, 192, 256], 128, key="attn_head_dim")
    backward = c[1].radio("pass", ["forward", "backward"], horizontal=True, key="attn_pass") == "backward"
    frame = pd.concat([pd.DataFrame({"profile": name, "seq_len": ATTENTION_SEQ_LENS, "TFLOP/s": attention_flop_per_s(
        p, dtype, ATTENTION_SEQ_LENS, head_dim, backward) / units.TFLOP}) for name, p in profiles.items()],
        ignore_index=True)
    st.altair_chart(curves(frame, "seq_len", "TFLOP/s", "profile", "sequence length (tokens)",
                           f"achieved TFLOP/s ({'backward' if backward else 'forward'}, head dim {head_dim})"),
                    width="stretch")
    for name, p in profiles.items():
        table = p.efficiency.attention
        rows = table.backward_causal if backward else table.forward_causal
        st.markdown(f"**{name}**: {'backward' if backward else 'forward'} efficiency as measured or transcribed "
                    f"({p.provenance.get('compute.attention_efficiency', 'no source recorded')})")
        st.dataframe(pd.DataFrame(rows, index=[f"head_dim {h}" for h in table.head_dims],
                                  columns=[f"seq {s}" for s in table.seq_lens]), width="stretch")


def _elementwise(profiles: dict[str, ClusterProfile]) -> None:
    st.caption("Memory-bound kernels (norms, activations, casts, permutes): bytes read and written over the HBM "
               "bandwidth x hbm_efficiency, behind one kernel launch. Dashed: without the launch.")
    launch = st.checkbox("one kernel launch per kernel", True, key="elementwise_launch")
    frame = pd.concat([pd.DataFrame({"profile": name, "bytes moved": ELEMENTWISE_BYTES,
                                     "GB/s": elementwise_bytes_per_s(p, ELEMENTWISE_BYTES, launch) / units.GB_PER_S})
                       for name, p in profiles.items()], ignore_index=True)
    limits = pd.DataFrame([{"profile": name, "GB/s": elementwise_bytes_per_s_limit(p) / units.GB_PER_S}
                           for name, p in profiles.items()])
    st.altair_chart(curves(frame, "bytes moved", "GB/s", "profile", "bytes read + written per kernel",
                           "achieved bandwidth (GB/s)", log_y=True, limits=limits), width="stretch")


def _collective_controls() -> tuple[str, str, int, NetworkSpec]:
    c = st.columns(4)
    op = c[0].selectbox("collective", CURVE_OPS, key="coll_op")
    tier = c[1].radio("tier", list(TIER_LABELS), format_func=TIER_LABELS.get, key="coll_tier")
    nodes = c[2].number_input("nodes (NIC tier)", 2, 1024, 2, key="coll_nodes", disabled=tier != "inter_node")
    model = c[3].selectbox("network model", [m.value for m in NetworkModelKind], index=1, key="coll_model",
                           help="flow: flows over the topology's links (the default); alpha_beta: per tier")
    return op, tier, int(nodes), NetworkSpec(model=NetworkModelKind(model))


def _collectives(profiles: dict[str, ClusterProfile]) -> None:
    st.caption("The network model's time for one collective at each message size, in nccl-tests' terms: size per "
               "rank, algbw = size / time, busbw = algbw x factor(n) (all-reduce 2(n-1)/n, the others (n-1)/n). "
               "Diamonds: the calibration's measured busbw; dashed: the tier's link x efficiency per GPU.")
    op, tier, nodes, network = _collective_controls()
    frames, measured, limits = [], [], []
    for name, p in profiles.items():
        curve = collective_curve(p, op, tier, MESSAGE_BYTES, nodes if tier == "inter_node" else None, network)
        frames.append(pd.DataFrame({"profile": name, "ranks": len(curve.ranks), "size (B)": curve.size_bytes,
                                    "time (us)": curve.time_s / units.US,
                                    "algbw (GB/s)": curve.algbw_bytes_per_s / units.GB_PER_S,
                                    "busbw (GB/s)": curve.busbw_bytes_per_s / units.GB_PER_S}))
        limits.append({"profile": name, "busbw (GB/s)": tier_limit_bytes_per_s(p, tier) / units.GB_PER_S})
        table = p.calibration.collective(op, tier) if p.calibration is not None else None
        if table is not None:
            measured.append(pd.DataFrame({"profile": f"{name} (measured, {table.ranks} ranks)",
                                          "size (B)": [b for b, _ in table.table],
                                          "busbw (GB/s)": [v / units.GB_PER_S for _, v in table.table]}))
    frame = pd.concat(frames, ignore_index=True)
    points = pd.concat(measured, ignore_index=True) if measured else None
    st.altair_chart(curves(frame, "size (B)", "busbw (GB/s)", "profile", "message size per rank (bytes)",
                           "busbw (GB/s)", log_y=True, points=points, limits=pd.DataFrame(limits),
                           tooltip=["profile", "size (B)", "time (us)", "algbw (GB/s)", "busbw (GB/s)"]),
                    width="stretch")
    size = st.select_slider("message size", MESSAGE_BYTES.tolist(), 2.0**20, format_func=_size_label,
                            key="coll_size")
    cols = st.columns(len(profiles))
    for col, (name, rows) in zip(cols, frame.groupby("profile", sort=False)):
        row = rows[rows["size (B)"] == size].iloc[0]
        col.metric(f"{name}: busbw at {_size_label(size)}", f"{row['busbw (GB/s)']:.4g} GB/s",
                   help=f"algbw {row['algbw (GB/s)']:.4g} GB/s, time {row['time (us)']:.4g} us, "
                        f"{row['ranks']} ranks")
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
        "time (us)": st.column_config.NumberColumn(help="nccl-tests time; moesim CollectiveCurve.time_s"),
        "algbw (GB/s)": st.column_config.NumberColumn(help="nccl-tests algbw; moesim algbw_bytes_per_s"),
        "busbw (GB/s)": st.column_config.NumberColumn(help="nccl-tests busbw; moesim busbw_bytes_per_s")})


def _provenance(profiles: dict[str, ClusterProfile]) -> None:
    for col, (name, p) in zip(st.columns(len(profiles)), profiles.items()):
        with col:
            st.markdown(f"**{name}**: {p.status}")
            if p.description:
                st.caption(p.description)
            if p.calibration is not None:
                st.json(p.calibration.provenance, expanded=False)
            st.dataframe(pd.DataFrame(sorted(p.provenance.items()), columns=["key", "source"]), hide_index=True,
                         width="stretch")


def _chosen() -> tuple[dict[str, ClusterProfile], Dtype, dict[str, ClusterProfile]]:
    """The profiles to show (one, or two compared), the dtype to draw compute rates in (one any of them has a
    peak for) and the profiles that have that peak."""
    names = profile_names()
    c = st.columns(3)
    first = c[0].selectbox("profile", names, index=names.index("dgx-h100") if "dgx-h100" in names else 0,
                           key="profile")
    second = c[1].selectbox("compare with", [NONE, *(n for n in names if n != first)], key="compare")
    profiles = {name: _profile(name) for name in (first, second) if name != NONE}
    have = [d for d in Dtype if any(d in p.gpu.peak_flop_per_s for p in profiles.values())]
    default = Dtype.BF16 if Dtype.BF16 in have else have[0]
    dtype = Dtype(c[2].selectbox("dtype (compute rates)", [d.value for d in have], index=have.index(default),
                                 key="dtype"))
    with_peak = {n: p for n, p in profiles.items() if dtype in p.gpu.peak_flop_per_s}
    for name in profiles.keys() - with_peak.keys():
        st.info(f"{name} has no {dtype.value} peak: its GEMM and attention rates are left out.")
    return profiles, dtype, with_peak


def page() -> None:
    st.title("Profiles")
    try:
        profiles, dtype, with_peak = _chosen()
    except MOESIM_ERRORS as err:
        show_error(err)
        return
    st.dataframe(_facts(profiles), width="stretch")
    tabs = st.tabs(["Collectives", "GEMM", "Attention", "Element-wise", "Provenance"])
    try:
        with tabs[0]:
            _collectives(profiles)
        with tabs[1]:
            _gemm(with_peak, dtype)
        with tabs[2]:
            _attention(with_peak, dtype)
        with tabs[3]:
            _elementwise(profiles)
        with tabs[4]:
            _provenance(profiles)
    except MOESIM_ERRORS as err:
        show_error(err)


page()
