"""Hardware profiles (hw_profiles/*.yaml): every shipped one loads, every number says where it came from, and
a broken profile is a one-line SpecError naming the file and the key path (DESIGN.md rules 4 and 14)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest

from moesim.spec.errors import show_value
import yaml

from moesim import units
from moesim.io.profile import PROFILE_DIR, available_profiles, load_profile
from moesim.spec.errors import SpecError
from moesim.spec.hardware import Dtype

PROFILES = sorted(PROFILE_DIR.glob("*.yaml"))
H100 = PROFILE_DIR / "dgx-h100.yaml"
_H100_DOC = yaml.safe_load(H100.read_text(encoding="utf-8"))


def _sourced_leaves(node: Any, path: str = "") -> Iterator[str]:
    """Key paths of every `{value: ...}` / `{table_GFLOP: ...}` / attention table leaf, i.e. every number in the
    file."""
    if isinstance(node, dict):
        if "value" in node or "table_GFLOP" in node or "seq_lens" in node:
            yield path
            return
        for key, child in node.items():
            yield from _sourced_leaves(child, f"{path}.{key}" if path else key)


def test_every_profile_is_listed():
    assert PROFILES and sorted(p.stem for p in PROFILES) == available_profiles()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile_loads_with_a_source_for_every_number(path: Path):
    profile = load_profile(path)
    assert profile.name == path.stem
    calibrated = profile.calibration is not None
    # a profile is either honest datasheet numbers or says it was calibrated and carries the measurements
    assert ("datasheet, not calibrated" in profile.status) != calibrated
    assert not calibrated or (profile.status.startswith("calibrated") and profile.calibration.provenance["date"])
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    leaves = list(_sourced_leaves({k: v for k, v in doc.items() if k in ("gpu", "node", "fabric", "compute")}))
    assert len(leaves) >= 15
    assert set(leaves) == set(profile.provenance)  # nothing unsourced, nothing invented
    for key in leaves:
        assert profile.provenance[key].strip(), f"{path.name}: {key} has an empty source"
    peak = "gpu.peak_dense_TFLOPs.fp32" if calibrated else "gpu.peak_dense_TFLOPs.bf16"  # a CPU measures fp32
    for key in (peak, "gpu.hbm_GB", "gpu.hbm_bandwidth_GBps", "node.gpus_per_node",
                "node.nvlink_GBps", "fabric.nic_Gbps", "fabric.rail_optimized", "gpu.sm_count",
                "compute.gemm_efficiency", "compute.gemm_tiles",
                "compute.attention_efficiency", "compute.expert_tile_rows"):
        assert profile.provenance.get(key, "").strip(), key


def test_h100_numbers_are_converted_to_si():
    profile = load_profile(H100)
    assert profile.gpu.peak_flop_per_s[Dtype.BF16] == pytest.approx(989.4 * units.TFLOP)
    assert profile.gpu.hbm_bytes == pytest.approx(80 * units.GB)
    assert profile.node.gpus_per_node == 8
    assert profile.fabric.nic_bandwidth_bytes_per_s == pytest.approx(400 * units.GBIT_PER_S)
    assert profile.node.nvlink_latency_s == pytest.approx(3.4 * units.US)
    assert profile.efficiency.tile_rows == 128
    assert profile.gpu.sm_count == 132
    assert profile.efficiency.gemm == pytest.approx(0.845)
    assert profile.efficiency.gemm_tiles[0] == (128, 256)
    assert profile.efficiency.attention.at(16384, 128, backward=False) == pytest.approx(616 / 989.4, abs=1e-6)


def _set(dotted: str, value: Any):
    def apply(doc: dict) -> None:
        *head, last = dotted.split(".")
        node = doc
        for key in head:
            node = node[key]
        node[last] = value
    return apply


def _delete(dotted: str):
    def apply(doc: dict) -> None:
        *head, last = dotted.split(".")
        node = doc
        for key in head:
            node = node[key]
        del node[last]
    return apply


MUTATIONS = [
    pytest.param(_set("gpu.hbm_GB", 80), "gpu.hbm_GB", 80, "{value: <number> GB, source:", id="bare-number"),
    pytest.param(_set("fabric.rail_optimized", True), "fabric.rail_optimized", True, "{value: true or false",
                 id="bare-bool"),
    pytest.param(_set("compute.attention_efficiency", 0.45), "compute.attention_efficiency", 0.45, "seq_lens",
                 id="bare-efficiency"),
    pytest.param(_delete("fabric.nic_Gbps.source"), "fabric.nic_Gbps.source", None, "required", id="missing-source"),
    pytest.param(_set("fabric.nic_Gbps.source", ""), "fabric.nic_Gbps.source", "", "a non-empty string",
                 id="empty-source"),
    pytest.param(_delete("gpu.hbm_GB.value"), "gpu.hbm_GB.value", None, "required", id="missing-value"),
    pytest.param(_set("node.nvlink_efficiency.value", 1.2), "node.nvlink_efficiency.value", 1.2, "(fraction)",
                 id="efficiency-above-one"),
    pytest.param(_set("compute.attention_efficiency", {"value": 1.5, "source": "s"}),
                 "compute.attention_efficiency.value", 1.5,
                 "fraction of peak", id="attention-efficiency-above-one"),
    pytest.param(_set("fabric.nic_efficiency.value", 0), "fabric.nic_efficiency.value", 0, "(fraction)",
                 id="zero-efficiency"),
    pytest.param(_set("compute.gemm_tiles.value", [[128, 0]]), "compute.gemm_tiles.value", [[128, 0]],
                 "tiles, each in [1, 65536]", id="tile-of-zero-columns"),
    pytest.param(_set("compute.gemm_tiles.value", [[128, 256, 64]]), "compute.gemm_tiles.value", [128, 256, 64],
                 "[rows, columns]", id="tile-of-three"),
    pytest.param(_set("compute.gemm_tiles.value", []), "compute.gemm_tiles.value", [], "[rows, columns]",
                 id="no-tiles"),
    pytest.param(_set("compute.gemm_efficiency.value", 1.3), "compute.gemm_efficiency.value", 1.3,
                 "(fraction of peak)", id="gemm-efficiency-above-one"),
    pytest.param(_delete("gpu.sm_count"), "gpu.sm_count.value", None, "required", id="no-sm-count"),
    pytest.param(_set("compute.attention_efficiency.seq_lens", [2048, 512, 8192, 16384]),
                 "compute.attention_efficiency.seq_lens", [2048, 512, 8192, 16384], "increasing",
                 id="attention-seq-lens-not-increasing"),
    pytest.param(_set("compute.attention_efficiency.forward_causal", [[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7]]),
                 "compute.attention_efficiency.forward_causal", [[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7]], "one per",
                 id="attention-ragged-rows"),
    pytest.param(_set("compute.attention_efficiency.backward_causal", [[1.3, 0.6, 0.7, 0.8]] * 3),
                 "compute.attention_efficiency.backward_causal", [1.3, 0.6, 0.7, 0.8], "[0.001, 1]",
                 id="attention-above-one"),
    pytest.param(_set("compute.expert_tile_rows.value", 96), "compute.expert_tile_rows.value", 96,
                 "a power of two >= 1 rows", id="tile-rows-not-power-of-two"),
    pytest.param(_set("compute.expert_tile_rows.value", 128.0), "compute.expert_tile_rows.value", 128.0,
                 "an integer in [1, 65536] rows", id="tile-rows-float"),
    pytest.param(_set("node.gpus_per_node.value", 0), "node.gpus_per_node.value", 0, "in [1, 4096] GPUs",
                 id="zero-gpus-per-node"),
    pytest.param(_set("fabric.nic_Gbps.value", -400), "fabric.nic_Gbps.value", -400, "Gb/s per NIC",
                 id="negative-bandwidth"),
    pytest.param(_set("fabric.nic_Gbps.value", "400G"), "fabric.nic_Gbps.value", "400G", "a finite number",
                 id="string-bandwidth"),
    pytest.param(_set("node.nvlink_latency_us.value", float("inf")), "node.nvlink_latency_us.value", float("inf"),
                 "a finite number", id="infinite-latency"),
    pytest.param(_set("fabric.oversubscription.value", 0.5), "fabric.oversubscription.value", 0.5, "in [1.0, 100.0]",
                 id="oversubscription-below-one"),
    pytest.param(_set("gpu.peak_dense_TFLOPs", {}), "gpu.peak_dense_TFLOPs", {}, "at least one dtype",
                 id="no-peaks"),
    pytest.param(_set("gpu.peak_dense_TFLOPs.fp64", {"value": 67, "source": "x"}), "gpu.peak_dense_TFLOPs.fp64",
                 {"value": 67, "source": "x"}, "no such key", id="unknown-dtype"),
    pytest.param(_set("gpu.colour", "green"), "gpu.colour", "green", "no such key", id="unknown-key"),
    pytest.param(_set("fabric.nic_Gbps.units", "Gb/s"), "fabric.nic_Gbps.units", "Gb/s", "no such key",
                 id="unknown-leaf-key"),
    pytest.param(_set("schema_version", 2), "schema_version", 2, "1", id="wrong-schema-version"),
    pytest.param(_delete("status"), "status", None, "required", id="missing-status"),
    pytest.param(_set("node", [8, 450]), "node", [8, 450], "a mapping", id="list-for-section"),
    # physical bounds, said in the unit the key is written in (moesim.spec.bounds)
    pytest.param(_set("gpu.peak_dense_TFLOPs.bf16.value", 1e-300), "gpu.peak_dense_TFLOPs.bf16.value", 1e-300,
                 "a number in [0.001, 1e+09] TFLOP/s", id="peak-1e-300"),
    pytest.param(_set("gpu.peak_dense_TFLOPs.bf16.value", 2e9), "gpu.peak_dense_TFLOPs.bf16.value", 2e9,
                 "a number in [0.001, 1e+09] TFLOP/s", id="peak-above-1e21-flops"),
    pytest.param(_set("gpu.hbm_GB.value", 1e-300), "gpu.hbm_GB.value", 1e-300, "a number in [0.001, 1e+06] GB",
                 id="hbm-1e-300"),
    pytest.param(_set("gpu.hbm_bandwidth_GBps.value", 1e-4), "gpu.hbm_bandwidth_GBps.value", 1e-4,
                 "a number in [0.001, 1e+06] GB/s", id="hbm-bandwidth-below-1MBps"),
    pytest.param(_set("fabric.nic_Gbps.value", 1e-300), "fabric.nic_Gbps.value", 1e-300,
                 "a number in [0.008, 8e+06] Gb/s per NIC", id="nic-1e-300"),
    pytest.param(_set("node.nvlink_GBps.value", 1e7), "node.nvlink_GBps.value", 1e7,
                 "a number in [0.001, 1e+06] GB/s per GPU", id="nvlink-above-1PBps"),
    pytest.param(_set("node.nvlink_latency_us.value", 1e300), "node.nvlink_latency_us.value", 1e300,
                 "a number in [0, 1e+06] us", id="nvlink-latency-1e300"),
    pytest.param(_set("fabric.nic_peer_overhead_us.value", 2e6), "fabric.nic_peer_overhead_us.value", 2e6,
                 "a number in [0, 1e+06] us", id="peer-overhead-above-1s"),
    pytest.param(_set("node.nvlink_efficiency.value", 1e-300), "node.nvlink_efficiency.value", 1e-300,
                 "a number in [0.001, 1.0]", id="efficiency-1e-300"),
    pytest.param(_set("compute.attention_efficiency", {"value": 1e-300, "source": "s"}),
                 "compute.attention_efficiency.value", 1e-300,
                 "a number in [0.001, 1.0] (fraction of peak)", id="constant-curve-1e-300"),
    pytest.param(_set("compute.attention_efficiency", {"value": None, "source": "s"}),
                 "compute.attention_efficiency.value", None,
                 "number in [0.001, 1.0] (fraction of peak)", id="constant-curve-null"),
    pytest.param(_set("node.gpus_per_node.value", 10**6), "node.gpus_per_node.value", 10**6, "in [1, 4096] GPUs",
                 id="gpus-per-node-huge"),
    pytest.param(_set("fabric.nics_per_node.value", 5000), "fabric.nics_per_node.value", 5000, "in [1, 4096] NICs",
                 id="nics-per-node-huge"),
    pytest.param(_set("fabric.oversubscription.value", 1e300), "fabric.oversubscription.value", 1e300,
                 "in [1.0, 100.0]", id="oversubscription-huge"),
    pytest.param(_set("compute.expert_tile_rows.value", 2**20), "compute.expert_tile_rows.value", 2**20,
                 "in [1, 65536] rows", id="tile-rows-huge"),
]


@pytest.mark.parametrize("mutate, key, value, expected", MUTATIONS)
def test_broken_profile_is_one_line_naming_file_and_key(tmp_path, mutate, key, value, expected):
    doc = copy.deepcopy(_H100_DOC)
    mutate(doc)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_profile(path)
    err = info.value
    line = err.one_line()
    assert "\n" not in line
    assert err.source == str(path) and err.key == key
    shown = show_value(value)
    assert line.startswith(f"{path}: {key}: got {shown}; expected "), line
    assert expected in line, line


@pytest.mark.parametrize("old, new, hint", [
    ("hbm_GB", "hbm_gb", "did you mean 'hbm_GB'"),
    ("nic_Gbps", "nic_GBps", "did you mean 'nic_Gbps'"),
])
def test_misspelt_profile_key_gets_a_hint(tmp_path, old, new, hint):
    text = H100.read_text(encoding="utf-8").replace(f"  {old}:", f"  {new}:")
    path = tmp_path / "typo.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_profile(path)
    assert info.value.source == str(path) and info.value.key.endswith(new) and hint in info.value.one_line()


def test_missing_profile_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_profile(path)
    assert info.value.source == str(path) and "an existing hardware profile file" in info.value.one_line()


CPU = PROFILE_DIR / "cpu-gloo-2c.yaml"


@pytest.mark.parametrize("path, value, key, expected", [
    (("collectives", "intra_node", "all_gather", "alpha_us"), 1e300,
     "calibration.collectives.intra_node.all_gather.alpha_us", "a number in [0, 1e+06] us"),
    (("collectives", "intra_node", "all_gather", "bandwidth_GBps"), 1e-300,
     "calibration.collectives.intra_node.all_gather.bandwidth_GBps", "a number in [0.001, 1e+06] GB/s"),
    (("collectives", "intra_node", "all_gather", "table"), [[1024, 1e-300]],
     "calibration.collectives.intra_node.all_gather.table", "busbw in [1e-06, 1e+06] GB/s"),
    (("collectives", "intra_node", "all_gather", "ranks"), 2**40,
     "calibration.collectives.intra_node.all_gather.ranks", "an integer in [2, 1048576]"),
    (("expert_kernels", 0, "eff_max"), 1e-300, "calibration.expert_kernels[0].eff_max", "a number in [0.001, 1.0]"),
    (("expert_kernels", 0, "t0_us"), 1e300, "calibration.expert_kernels[0].t0_us", "a number in [0, 1e+06] us"),
    (("expert_kernels", 0, "hidden"), 2**40, "calibration.expert_kernels[0].hidden", "an integer in [1, 1048576]"),
])
def test_calibration_numbers_have_physical_bounds(tmp_path, path, value, key, expected):
    doc = yaml.safe_load(CPU.read_text(encoding="utf-8"))
    node = doc["calibration"]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    out = tmp_path / "cpu.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_profile(out)
    line = info.value.one_line()
    assert info.value.key == key and f"{key}: got " in line and expected in line, line
