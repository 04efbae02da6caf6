"""Hardware profiles (hw_profiles/*.yaml) -> ClusterProfile. Every number is `{value: X, source: "..."}`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from moesim import units
from moesim.io.strict import Section, build, finite_float, read_yaml_mapping
from moesim.spec.calibration import Calibration, CollectiveCalibration, ExpertKernelCalibration
from moesim.spec.errors import SpecError
from moesim.spec.hardware import (ClusterProfile, ComputeEfficiency, Dtype, EfficiencyCurve, FabricSpec,
                                  GpuSpec, NodeSpec)

SCHEMA_VERSION = 1
PROFILE_DIR = Path(__file__).resolve().parents[2] / "hw_profiles"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile(ref: str, relative_to: Path | None = None) -> Path:
    """A profile reference is a path (ends in .yaml/.yml, relative to the scenario file) or a name in
    hw_profiles/."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
        return path if path.is_absolute() or relative_to is None else relative_to / path
    return PROFILE_DIR / f"{ref}.yaml"


def load_profile(path: Path) -> ClusterProfile:
    data = read_yaml_mapping(path, "hardware profile")
    try:
        return _parse(Section(data))
    except SpecError as err:
        raise err.with_source(str(path)) from None


class _Sourced:
    """Reads `{value, source}` leaves and remembers each source by key path."""

    def __init__(self) -> None:
        self.provenance: dict[str, str] = {}

    def leaf(self, sec: Section, key: str, *, unit: str, scale: float = 1.0, min_value: float = 0.0,
             max_value: float | None = None, integer: bool = False):
        leaf = _leaf_section(sec, key, f"<number> {unit}")
        value = leaf.int_("value", min_value=int(min_value), unit=unit) if integer else \
            leaf.float_("value", min_value=min_value, max_value=max_value, unit=unit)
        self.provenance[leaf.path] = leaf.str_("source")
        leaf.finish()
        return value if integer else value * scale

    def flag(self, sec: Section, key: str) -> bool:
        leaf = _leaf_section(sec, key, "true or false")
        value = leaf.bool_("value")
        self.provenance[leaf.path] = leaf.str_("source")
        leaf.finish()
        return value

    def curve(self, sec: Section, key: str) -> EfficiencyCurve:
        leaf = _leaf_section(sec, key, "<fraction of peak>", "or {table_GFLOP: [[GFLOP, efficiency], ...], "
                                                             "source: ...}")
        self.provenance[leaf.path] = leaf.str_("source")
        if leaf.has("value"):
            curve = EfficiencyCurve.constant(leaf.float_("value", min_value=1e-6, max_value=1.0,
                                                         unit="(fraction of peak)"))
        else:
            curve = _table(leaf)
        leaf.finish()
        return curve


def _leaf_section(sec: Section, key: str, value: str, alternative: str = "") -> Section:
    """A sourced leaf must be a mapping; a bare number is the likeliest mistake, so say what to write."""
    data = sec.raw(key)
    if not isinstance(data, Mapping):
        raise SpecError(sec.key_path(key), data, f"{{value: {value}, source: \"where the number comes from\"}} "
                                                 f"{alternative}")
    return sec.section(key)


def _table(leaf: Section) -> EfficiencyCurve:
    rows = leaf.raw("table_GFLOP")
    key = leaf.key_path("table_GFLOP")
    expected = "a list of [GFLOP, efficiency] pairs with GFLOP increasing and efficiency in (0, 1]"
    if not isinstance(rows, list) or not rows:
        raise SpecError(key, rows, expected)
    points = []
    for row in rows:
        ok = isinstance(row, list) and len(row) == 2 and all(finite_float(x) is not None for x in row)
        if not ok:
            raise SpecError(key, row, expected)
        points.append((float(row[0]) * units.GFLOP, float(row[1])))
    try:
        return EfficiencyCurve(tuple(points))
    except SpecError:  # its values are in FLOP; show the rows as written, in GFLOP
        raise SpecError(key, rows, expected) from None


def _parse(root: Section) -> ClusterProfile:
    version = root.int_("schema_version")
    if version != SCHEMA_VERSION:
        raise SpecError("schema_version", version, f"{SCHEMA_VERSION}")
    src = _Sourced()
    name = root.str_("name")
    status = root.str_("status")
    root.str_("description", "")

    g = root.section("gpu")
    peaks_sec = g.section("peak_dense_TFLOPs")
    peaks = {}
    for dtype in Dtype:
        if peaks_sec.has(dtype.value):
            peaks[dtype] = src.leaf(peaks_sec, dtype.value, unit="TFLOP/s", scale=units.TFLOP, min_value=1e-6)
    peaks_sec.finish()
    if not peaks:
        raise SpecError(peaks_sec.path, {}, f"a peak for at least one dtype ({', '.join(d.value for d in Dtype)}) "
                                            "in TFLOP/s")
    gpu = build("gpu", GpuSpec, name=g.str_("name"), peak_flop_per_s=peaks,
                  hbm_bytes=src.leaf(g, "hbm_GB", unit="GB", scale=units.GB, min_value=1e-6),
                  hbm_bandwidth_bytes_per_s=src.leaf(g, "hbm_bandwidth_GBps", unit="GB/s",
                                                     scale=units.GB_PER_S, min_value=1e-6))
    g.finish()

    n = root.section("node")
    node = build("node", NodeSpec, gpus_per_node=src.leaf(n, "gpus_per_node", unit="GPUs", min_value=1, integer=True),
                    nvlink_bandwidth_bytes_per_s=src.leaf(n, "nvlink_GBps", unit="GB/s per GPU, one direction",
                                                          scale=units.GB_PER_S, min_value=1e-6),
                    nvlink_latency_s=src.leaf(n, "nvlink_latency_us", unit="us", scale=units.US),
                    nvlink_efficiency=src.leaf(n, "nvlink_efficiency", unit="(fraction)", min_value=1e-6,
                                               max_value=1.0),
                    nvlink_peer_overhead_s=src.leaf(n, "nvlink_peer_overhead_us", unit="us", scale=units.US)
                    if n.has("nvlink_peer_overhead_us") else 0.0)
    n.finish()

    f = root.section("fabric")
    fabric = build("fabric", FabricSpec, nics_per_node=src.leaf(f, "nics_per_node", unit="NICs", min_value=1, integer=True),
                        nic_bandwidth_bytes_per_s=src.leaf(f, "nic_Gbps", unit="Gb/s per NIC, one direction",
                                                           scale=units.GBIT_PER_S, min_value=1e-6),
                        nic_latency_s=src.leaf(f, "nic_latency_us", unit="us", scale=units.US),
                        nic_efficiency=src.leaf(f, "nic_efficiency", unit="(fraction)", min_value=1e-6,
                                                max_value=1.0),
                        rail_optimized=src.flag(f, "rail_optimized"),
                        oversubscription=src.leaf(f, "oversubscription", unit="(ratio, >= 1)", min_value=1.0),
                        nic_peer_overhead_s=src.leaf(f, "nic_peer_overhead_us", unit="us", scale=units.US)
                        if f.has("nic_peer_overhead_us") else 0.0)
    f.finish()

    c = root.section("compute")
    tile_rows = src.leaf(c, "expert_tile_rows", unit="rows", min_value=1, integer=True)
    if tile_rows & (tile_rows - 1):  # checked here so that the error names the YAML key, not the field
        raise SpecError(c.key_path("expert_tile_rows.value"), tile_rows, "a power of two >= 1 rows")
    efficiency = build("compute", ComputeEfficiency, matmul=src.curve(c, "matmul_efficiency"),
                       attention=src.curve(c, "attention_efficiency"), tile_rows=tile_rows)
    c.finish()
    calibration = _calibration(root.section("calibration")) if root.has("calibration") else None
    root.finish()
    return ClusterProfile(name=name, status=status, gpu=gpu, node=node, fabric=fabric, efficiency=efficiency,
                          provenance=src.provenance, calibration=calibration)


_CALIBRATED_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_skewed")
_TIERS = ("intra_node", "inter_node")


def _calibration(sec: Section) -> Calibration:
    """The `calibration` section `moesim calibrate` writes: provenance, expert-kernel fits, collective fits and
    size tables. Tables must be non-empty, sizes strictly increasing, every value finite and positive."""
    prov = sec.raw("provenance")
    if not isinstance(prov, Mapping) or not prov:
        raise SpecError(sec.key_path("provenance"), prov, "a mapping: date, device, versions, hosts, ranks")
    samples = sec.str_("samples", "")
    kernels = []
    raw_kernels = sec.raw("expert_kernels", [])
    if not isinstance(raw_kernels, list):
        raise SpecError(sec.key_path("expert_kernels"), raw_kernels, "a list of fitted expert GEMM shapes")
    for i, item in enumerate(raw_kernels):
        k = Section(item, sec.key_path(f"expert_kernels[{i}]"))
        fields = dict(impl=k.str_("impl"), dtype=k.enum_("dtype", Dtype), hidden=k.int_("hidden", min_value=1),
                      ffn=k.int_("ffn", min_value=1), t0_s=k.float_("t0_us", min_value=0.0, unit="us") * units.US,
                      eff_max=k.float_("eff_max", min_value=1e-9, max_value=1.0, unit="(fraction)"),
                      tile_rows=k.int_("tile_rows", min_value=1))
        fields["table"] = _table_pairs(k, "table_rows", "[[rows per expert, efficiency], ...] with rows strictly "
                                                        "increasing and efficiency in (0, 1]", max_second=1.0)
        kernels.append(build(k.path, ExpertKernelCalibration, **fields))
        k.float_("fit_rel_error", 0.0, min_value=0.0)  # a report of the fit's quality, not used by the model
        k.finish()
    collectives = []
    coll = sec.section("collectives", None)
    for tier in _TIERS:
        if not coll.has(tier):
            continue
        tsec = coll.section(tier)
        for op in _CALIBRATED_OPS:
            if not tsec.has(op):
                continue
            o = tsec.section(op)
            table = _table_pairs(o, "table", "[[bytes per rank, busbw GB/s], ...] with bytes strictly increasing "
                                             "and busbw > 0", scale_second=units.GB_PER_S)
            collectives.append(CollectiveCalibration(
                op=op, tier=tier, ranks=o.int_("ranks", min_value=2),
                alpha_s=o.float_("alpha_us", min_value=0.0, unit="us") * units.US,
                bandwidth_bytes_per_s=o.float_("bandwidth_GBps", min_value=1e-9, unit="GB/s") * units.GB_PER_S,
                table=table))
            o.float_("fit_rel_error", 0.0, min_value=0.0)
            o.finish()
        tsec.finish()
    coll.finish()
    sec.finish()
    return Calibration(provenance=dict(prov), samples=samples, expert_kernels=tuple(kernels),
                       collectives=tuple(collectives))


def _table_pairs(sec: Section, key: str, expected: str, scale_second: float = 1.0,
                 max_second: float | None = None) -> tuple[tuple[float, float], ...]:
    rows = sec.raw(key)
    ok = isinstance(rows, list) and len(rows) > 0
    pairs = []
    for row in rows if ok else []:
        good = isinstance(row, list) and len(row) == 2 and all(finite_float(x) is not None for x in row)
        if not good or float(row[0]) <= 0 or float(row[1]) <= 0 or (max_second is not None and float(row[1]) > max_second):
            ok = False
            break
        pairs.append((float(row[0]), float(row[1]) * scale_second))
    if ok and any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
        ok = False  # sizes must increase: a shuffled or duplicated table means a broken calibration file
    if not ok:
        raise SpecError(sec.key_path(key), rows, expected)
    return tuple(pairs)
