"""Cluster hardware: GPU, node (NVLink domain), scale-out fabric, compute efficiency, provenance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from moesim.spec.errors import SpecError, require


class Dtype(Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"

    @property
    def bytes(self) -> int:
        return _DTYPE_BYTES[self]


_DTYPE_BYTES = {Dtype.FP32: 4, Dtype.BF16: 2, Dtype.FP16: 2, Dtype.FP8: 1}


@dataclass(frozen=True)
class EfficiencyCurve:
    """Fraction of peak achieved by one operation as a function of its FLOP count.
    Points are (flop, efficiency); interpolated linearly in log10(flop), clamped at the ends.
    A single point is a constant."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        require(len(self.points) >= 1, "points", self.points, "at least one (flop, efficiency) point")
        flops = [p[0] for p in self.points]
        require(all(f > 0 for f in flops), "points", self.points, "flop > 0 in every point")
        require(all(b > a for a, b in zip(flops, flops[1:])), "points", flops, "strictly increasing flop")
        for _, eff in self.points:
            require(0 < eff <= 1, "points", eff, "efficiency in (0, 1]")

    @staticmethod
    def constant(efficiency: float) -> "EfficiencyCurve":
        return EfficiencyCurve(((1.0, float(efficiency)),))

    def at(self, flop: float) -> float:
        pts = self.points
        if len(pts) == 1 or flop <= pts[0][0]:
            return pts[0][1]
        if flop >= pts[-1][0]:
            return pts[-1][1]
        x = math.log10(flop)
        for (f0, e0), (f1, e1) in zip(pts, pts[1:]):
            if flop <= f1:
                x0, x1 = math.log10(f0), math.log10(f1)
                return e0 + (e1 - e0) * (x - x0) / (x1 - x0)
        raise AssertionError("unreachable: flop inside the table")


@dataclass(frozen=True)
class GpuSpec:
    name: str
    peak_flop_per_s: dict[Dtype, float]  # dense (no 2:4 sparsity)
    hbm_bytes: float
    hbm_bandwidth_bytes_per_s: float

    def __post_init__(self) -> None:
        require(bool(self.peak_flop_per_s), "peak_flop_per_s", self.peak_flop_per_s, "at least one dtype")
        for dtype, peak in self.peak_flop_per_s.items():
            require(peak > 0, f"peak_flop_per_s.{dtype.value}", peak, "> 0 FLOP/s")
        require(self.hbm_bytes > 0, "hbm_bytes", self.hbm_bytes, "> 0 bytes")
        require(self.hbm_bandwidth_bytes_per_s > 0, "hbm_bandwidth_bytes_per_s",
                self.hbm_bandwidth_bytes_per_s, "> 0 bytes/s")

    def peak(self, dtype: Dtype) -> float:
        if dtype not in self.peak_flop_per_s:
            have = ", ".join(d.value for d in self.peak_flop_per_s)
            raise SpecError("training.dtype", dtype.value, f"a dtype the GPU {self.name} has a peak for: {have}")
        return self.peak_flop_per_s[dtype]


@dataclass(frozen=True)
class NodeSpec:
    """One NVLink/NVSwitch domain. Bandwidths are per GPU, one direction."""

    gpus_per_node: int
    nvlink_bandwidth_bytes_per_s: float
    nvlink_latency_s: float
    nvlink_efficiency: float  # achievable fraction of the link rate for collectives
    nvlink_peer_overhead_s: float = 0.0  # issue cost per intra-node peer of an all-to-all (LogGP's o)

    def __post_init__(self) -> None:
        require(self.gpus_per_node >= 1, "gpus_per_node", self.gpus_per_node, "an integer >= 1")
        require(self.nvlink_bandwidth_bytes_per_s > 0, "nvlink_bandwidth_bytes_per_s",
                self.nvlink_bandwidth_bytes_per_s, "> 0 bytes/s")
        require(self.nvlink_latency_s >= 0, "nvlink_latency_s", self.nvlink_latency_s, ">= 0 s")
        require(0 < self.nvlink_efficiency <= 1, "nvlink_efficiency", self.nvlink_efficiency, "a fraction in (0, 1]")
        require(self.nvlink_peer_overhead_s >= 0, "nvlink_peer_overhead_s", self.nvlink_peer_overhead_s, ">= 0 s")


@dataclass(frozen=True)
class FabricSpec:
    """Scale-out network. Bandwidth is per NIC, one direction."""

    nics_per_node: int
    nic_bandwidth_bytes_per_s: float
    nic_latency_s: float
    nic_efficiency: float
    rail_optimized: bool
    oversubscription: float  # leaf-to-spine; 1.0 = full bisection
    nic_peer_overhead_s: float = 0.0  # issue cost per inter-node peer of an all-to-all (LogGP's o)

    def __post_init__(self) -> None:
        require(self.nics_per_node >= 1, "nics_per_node", self.nics_per_node, "an integer >= 1")
        require(self.nic_bandwidth_bytes_per_s > 0, "nic_bandwidth_bytes_per_s",
                self.nic_bandwidth_bytes_per_s, "> 0 bytes/s")
        require(self.nic_latency_s >= 0, "nic_latency_s", self.nic_latency_s, ">= 0 s")
        require(0 < self.nic_efficiency <= 1, "nic_efficiency", self.nic_efficiency, "a fraction in (0, 1]")
        require(self.oversubscription >= 1, "oversubscription", self.oversubscription, ">= 1 (1 = full bisection)")
        require(self.nic_peer_overhead_s >= 0, "nic_peer_overhead_s", self.nic_peer_overhead_s, ">= 0 s")


@dataclass(frozen=True)
class ComputeEfficiency:
    matmul: EfficiencyCurve  # GEMMs: projections, FFNs, experts, router, LM head
    attention: EfficiencyCurve  # the fused attention core (QK^T, softmax, AV)
    tile_rows: int  # expert GEMM row tile: each expert's rows are padded up to a multiple

    def __post_init__(self) -> None:
        ok = self.tile_rows >= 1 and (self.tile_rows & (self.tile_rows - 1)) == 0
        require(ok, "tile_rows", self.tile_rows, "a power of two >= 1 (rows)")


@dataclass(frozen=True)
class ClusterProfile:
    """A kind of machine, as data (hw_profiles/*.yaml). `provenance` maps each key path to its source."""

    name: str
    status: str  # "datasheet, not calibrated" or a calibration description
    gpu: GpuSpec
    node: NodeSpec
    fabric: FabricSpec
    efficiency: ComputeEfficiency
    provenance: dict[str, str] = field(default_factory=dict)
    calibration: "Calibration | None" = None  # moesim.spec.calibration: fitted kernels and collectives

    @property
    def nic_bandwidth_per_gpu_bytes_per_s(self) -> float:
        return self.fabric.nics_per_node * self.fabric.nic_bandwidth_bytes_per_s / self.node.gpus_per_node


@dataclass(frozen=True)
class ClusterSpec:
    """A profile times a number of nodes: the machine a scenario runs on."""

    profile: ClusterProfile
    num_nodes: int

    def __post_init__(self) -> None:
        require(self.num_nodes >= 1, "nodes", self.num_nodes, "an integer >= 1")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.profile.node.gpus_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.profile.node.gpus_per_node
