"""Cluster hardware: GPU, node (NVLink domain), scale-out fabric, compute efficiency, provenance.
SI inside; each field says how hw_profiles/*.yaml writes it (`{value: X, source: "..."}` in human units)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from moesim import units
from moesim.spec.base import LISTS_AS_TUPLES, NOT_BOOL, Count, NonEmptyStr, SpecModel, spec_field
from moesim.spec.bounds import (MAX_DEVICES, MAX_FLOP_PER_S, MAX_MEMORY_BYTES, MAX_NODES,
                                MAX_OVERSUBSCRIPTION, MAX_SMS, MAX_TILE_ROWS, MIN_FLOP_PER_S,
                                MIN_MEMORY_BYTES, BANDWIDTH, FRACTION, LATENCY)
from moesim.spec.attention_efficiency import AttentionEfficiencyTable
from moesim.spec.calibration import Calibration
from moesim.spec.dtype import Dtype
from moesim.spec.errors import SpecError, require


class GpuSpec(SpecModel):
    name: NonEmptyStr = spec_field(help="the GPU model, as reports show it")
    peak_flop_per_s: dict[Dtype, Annotated[float, Field(ge=MIN_FLOP_PER_S, le=MAX_FLOP_PER_S)]] = spec_field(
        help="dense peak (no 2:4 sparsity) per dtype", yaml="peak_dense_TFLOPs", unit="TFLOP/s",
        scale=units.TFLOP, sourced=True, min_length=1,
        expected=f"a peak for at least one dtype ({', '.join(d.value for d in Dtype)}) in TFLOP/s")
    hbm_bytes: float = spec_field(help="HBM capacity", yaml="hbm_GB", unit="GB", scale=units.GB, sourced=True,
                                  ge=MIN_MEMORY_BYTES, le=MAX_MEMORY_BYTES)
    hbm_bandwidth_bytes_per_s: float = spec_field(help="HBM bandwidth", yaml="hbm_bandwidth_GBps", unit="GB/s",
                                                  scale=units.GB_PER_S, sourced=True, **BANDWIDTH)
    sm_count: Count = spec_field(help="streaming multiprocessors (CPU: cores): the GEMM tiles one wave runs",
                                 unit="SMs", sourced=True, ge=1, le=MAX_SMS)

    def peak(self, dtype: Dtype) -> float:
        if dtype not in self.peak_flop_per_s:
            have = ", ".join(d.value for d in self.peak_flop_per_s)
            raise SpecError("training.dtype", dtype.value, f"a dtype the GPU {self.name} has a peak for: {have}")
        return self.peak_flop_per_s[dtype]


class NodeSpec(SpecModel):
    """One NVLink/NVSwitch domain. Bandwidths are per GPU, one direction."""

    gpus_per_node: Count = spec_field(help="GPUs in one NVLink domain", unit="GPUs", sourced=True, ge=1,
                                      le=MAX_DEVICES)
    nvlink_bandwidth_bytes_per_s: float = spec_field(
        help="NVLink bandwidth per GPU, one direction", yaml="nvlink_GBps", unit="GB/s per GPU, one direction",
        scale=units.GB_PER_S, sourced=True, **BANDWIDTH)
    nvlink_latency_s: float = spec_field(help="per-hop NVLink latency", yaml="nvlink_latency_us", unit="us",
                                         scale=units.US, sourced=True, **LATENCY)
    nvlink_efficiency: float = spec_field(help="achievable fraction of the link rate for collectives",
                                          unit="(fraction)", sourced=True, **FRACTION)
    nvlink_peer_overhead_s: float = spec_field(
        0.0, help="issue cost per intra-node peer of an all-to-all (LogGP's o)", yaml="nvlink_peer_overhead_us",
        unit="us", scale=units.US, sourced=True, **LATENCY)


class FabricSpec(SpecModel):
    """Scale-out network. Bandwidth is per NIC, one direction."""

    nics_per_node: Count = spec_field(help="NICs per node", unit="NICs", sourced=True, ge=1, le=MAX_DEVICES)
    nic_bandwidth_bytes_per_s: float = spec_field(help="line rate per NIC, one direction", yaml="nic_Gbps",
                                                  unit="Gb/s per NIC, one direction", scale=units.GBIT_PER_S,
                                                  sourced=True, **BANDWIDTH)
    nic_latency_s: float = spec_field(help="network latency", yaml="nic_latency_us", unit="us", scale=units.US,
                                      sourced=True, **LATENCY)
    nic_efficiency: float = spec_field(help="achievable fraction of the line rate", unit="(fraction)",
                                       sourced=True, **FRACTION)
    rail_optimized: bool = spec_field(help="rail-optimised fabric: GPU i of every node shares leaf switch i",
                                      sourced=True)
    oversubscription: float = spec_field(help="leaf-to-spine oversubscription; 1 = full bisection",
                                         unit="(ratio)", sourced=True, ge=1.0, le=MAX_OVERSUBSCRIPTION)
    nic_peer_overhead_s: float = spec_field(
        0.0, help="issue cost per inter-node peer of an all-to-all (LogGP's o)", yaml="nic_peer_overhead_us",
        unit="us", scale=units.US, sourced=True, **LATENCY)


class ComputeEfficiency(SpecModel):
    gemm: float = spec_field(help="fraction of peak a GEMM's main loop holds on full waves of long-K tiles "
                                  "(projections, FFNs, experts, router, LM head; cost/gemm.py adds tile and wave "
                                  "quantisation, each tile's output write and the HBM roofline)",
                             yaml="gemm_efficiency", unit="(fraction of peak)", sourced=True, **FRACTION)
    gemm_tiles: Annotated[tuple[tuple[Count, Count], ...], LISTS_AS_TUPLES] = spec_field(
        help="output tiles (rows, columns) the GEMM library chooses among; each GEMM takes its fastest",
        yaml="gemm_tiles", unit="(rows, columns)", sourced=True, min_length=1,
        expected=f"a list of [rows, columns] tiles, each in [1, {MAX_TILE_ROWS}]")
    attention: AttentionEfficiencyTable = spec_field(
        help="the fused attention core (QK^T, softmax, AV; FlashAttention's FLOP convention), causal, by sequence "
             "length and head dimension, forward and backward; or one constant", yaml="attention_efficiency",
        unit="(fraction of peak)", sourced=True)
    tile_rows: Count = spec_field(help="expert GEMM row tile: each expert's rows are padded up to a multiple",
                                  yaml="expert_tile_rows", unit="rows", sourced=True, ge=1, le=MAX_TILE_ROWS)
    hbm: float = spec_field(0.9, help="fraction of the HBM bandwidth memory-bound kernels achieve (norms, RoPE, "
                                      "softmax, permute, activations, cross-entropy, fp8 casts)",
                            yaml="hbm_efficiency", unit="(fraction)", sourced=True, **FRACTION)
    kernel_launch_s: float = spec_field(0.0, help="time one kernel launch adds (launch latency, gaps between "
                                                  "kernels); 0 = ignored", yaml="kernel_launch_us", unit="us",
                                        scale=units.US, sourced=True, **LATENCY)
    overlap_slowdown: float = spec_field(0.0, help="compute time added per second of communication hidden under "
                                                   "it (the SMs and HBM bandwidth the communication kernels take)",
                                         unit="(s per s)", sourced=True, ge=0.0, le=1.0)
    fp8_matmul_ratio: float = spec_field(1.0, help="fp8 GEMM efficiency relative to bf16's at the same FLOPs "
                                                   "(of the fp8 peak)", unit="(ratio)", sourced=True, **FRACTION)

    @field_validator("gemm_tiles")
    @classmethod
    def _tiles_in_range(cls, tiles: tuple) -> tuple:
        ok = all(1 <= t <= MAX_TILE_ROWS for tile in tiles for t in tile)
        require(ok, "", tiles, f"[rows, columns] tiles, each in [1, {MAX_TILE_ROWS}]")
        return tiles

    @field_validator("tile_rows")
    @classmethod
    def _power_of_two(cls, tile_rows: int) -> int:
        require(tile_rows & (tile_rows - 1) == 0, "", tile_rows, "a power of two >= 1 rows")
        return tile_rows


class ClusterProfile(SpecModel):
    """A kind of machine, as data (hw_profiles/*.yaml). `provenance` maps each key path to its source."""

    schema_version: Annotated[Literal[1], NOT_BOOL] = spec_field(1, help="version of the profile format")
    name: NonEmptyStr = spec_field(help="profile name; hw_profiles/<name>.yaml")
    status: NonEmptyStr = spec_field(help='"datasheet, not calibrated" or a calibration description')
    description: str = spec_field("", help="free text")
    gpu: GpuSpec = spec_field(help="one GPU")
    node: NodeSpec = spec_field(help="one NVLink domain")
    fabric: FabricSpec = spec_field(help="the scale-out network")
    efficiency: ComputeEfficiency = spec_field(help="achieved fraction of peak", yaml="compute")
    provenance: dict[str, str] = spec_field(default_factory=dict, in_file=False,
                                            help="key path -> where its number comes from")
    calibration: Calibration | None = spec_field(None, help="what `moesim calibrate` measured: fitted kernels "
                                                            "and collectives, preferred to the datasheet numbers")

    @property
    def nic_bandwidth_per_gpu_bytes_per_s(self) -> float:
        return self.fabric.nics_per_node * self.fabric.nic_bandwidth_bytes_per_s / self.node.gpus_per_node


class ClusterSpec(SpecModel):
    """A profile times a number of nodes: the machine a scenario runs on."""

    profile: ClusterProfile = spec_field(help="the kind of machine (the file names it: cluster.profile)",
                                         in_file=False)
    nodes: Count = spec_field(help="nodes of the profile's kind", unit="nodes", ge=1, le=MAX_NODES)

    @property
    def num_nodes(self) -> int:
        return self.nodes

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.profile.node.gpus_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.profile.node.gpus_per_node
