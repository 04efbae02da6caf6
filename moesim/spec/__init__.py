"""Frozen, validated specs: one pydantic model per concept, each field declared once; SI units inside, no I/O."""

from moesim.spec.errors import SpecError
from moesim.spec.dtype import Dtype
from moesim.spec.dtype import Fp8Recipe
from moesim.spec.hardware import ClusterProfile, ClusterSpec, ComputeEfficiency, FabricSpec, GpuSpec, NodeSpec
from moesim.spec.layout import ParallelLayout
from moesim.spec.model import Activation, MoeModelSpec
from moesim.spec.routing import RoutingDistribution, RoutingSpec
from moesim.spec.scenario import Scenario
from moesim.spec.simulation import SimulationSpec
from moesim.spec.training import Optimizer, OptimizerSpec, Recompute, TrainingSpec

__all__ = [
    "Activation", "ClusterProfile", "ClusterSpec", "ComputeEfficiency", "Dtype", "Fp8Recipe",
    "FabricSpec", "GpuSpec", "MoeModelSpec", "NodeSpec", "Optimizer", "OptimizerSpec", "ParallelLayout",
    "Recompute", "RoutingDistribution", "RoutingSpec", "Scenario", "SimulationSpec", "SpecError",
    "TrainingSpec",
]
