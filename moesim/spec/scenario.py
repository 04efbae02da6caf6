"""A scenario composes the specs and checks the constraints that span several of them."""

from __future__ import annotations

from pydantic import model_validator

from moesim.spec.base import NonEmptyStr, SpecModel, spec_field
from moesim.spec.bounds import INT32_MAX
from moesim.spec.errors import require
from moesim.spec.hardware import ClusterSpec
from moesim.spec.layout import ParallelLayout
from moesim.spec.model import MoeModelSpec
from moesim.spec.network import NetworkSpec
from moesim.spec.placement import PlacementSpec
from moesim.spec.routing import GateSpec, RoutingSpec
from moesim.spec.simulation import SimulationSpec
from moesim.spec.training import TrainingSpec


class Scenario(SpecModel):
    name: NonEmptyStr = spec_field(help="the scenario's name (default: the file name without .yaml)")
    cluster: ClusterSpec = spec_field(help="the machine: a hardware profile and a number of nodes")
    model: MoeModelSpec = spec_field(help="the MoE transformer: a preset (plus overrides) or every field")
    training: TrainingSpec = spec_field(help="batch, sequence, precision, optimizer, recomputation")
    layout: ParallelLayout = spec_field(help="parallel sizes (Megatron semantics)")
    routing: RoutingSpec = spec_field(RoutingSpec(), help="how the router spreads tokens over experts")
    simulation: SimulationSpec = spec_field(SimulationSpec(), help="steps and master seed")
    gate: GateSpec = spec_field(GateSpec(), help="capacity and drops")
    network: NetworkSpec = spec_field(NetworkSpec(), help="how collectives are timed")
    placement: PlacementSpec = spec_field(PlacementSpec(), help="expert placement policy and memory budget")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        lay, mod, tr = self.layout, self.model, self.training
        gpus = self.cluster.num_gpus
        require(lay.world_size == gpus, "layout",
                f"tp*cp*dp*pp = {lay.tp}*{lay.cp}*{lay.dp}*{lay.pp} = {lay.world_size}",
                f"tp*cp*dp*pp equal to the cluster's GPUs ({self.cluster.num_nodes} nodes x "
                f"{self.cluster.profile.node.gpus_per_node} = {gpus})")
        _divides("layout.pp", lay.pp, "model.num_layers", mod.num_layers)
        _divides("layout.tp", lay.tp, "model.num_attention_heads", mod.num_attention_heads)
        _divides("layout.tp", lay.tp, "model.num_kv_heads", mod.num_kv_heads)
        if mod.dense_ffn_size:
            _divides("layout.tp", lay.tp, "model.dense_ffn_size", mod.dense_ffn_size)
        if lay.cp > 1:  # Megatron splits each sequence into 2 x cp chunks (load-balanced causal attention)
            require(tr.seq_len % (2 * lay.cp) == 0, "layout.cp", lay.cp,
                    f"a cp with 2 x cp dividing training.seq_len ({tr.seq_len})")
        share = f"training.seq_len / layout.cp ({tr.seq_len} / {lay.cp})" if lay.cp > 1 \
            else f"training.seq_len ({tr.seq_len})"
        require((tr.seq_len // lay.cp) % lay.tp == 0, "layout.tp", lay.tp, f"a divisor of {share}")
        _divides("layout.ep", lay.ep, "model.num_experts", mod.num_experts)
        _divides("layout.etp", lay.etp, "model.expert_ffn_size", mod.expert_ffn_size)
        sequences_per_round = lay.dp * tr.micro_batch_size
        require(tr.global_batch_size % sequences_per_round == 0, "training.global_batch_size",
                tr.global_batch_size, f"a multiple of layout.dp x training.micro_batch_size "
                f"({lay.dp} x {tr.micro_batch_size} = {sequences_per_round}) sequences")
        assignments = self.tokens_routed_per_rank * mod.top_k  # per (micro-batch, source rank): int32 loads
        require(assignments <= INT32_MAX, "training.seq_len", tr.seq_len,
                f"micro_batch_size x seq_len / layout.tp x model.top_k ({tr.micro_batch_size} x {tr.seq_len} / "
                f"{lay.tp} x {mod.top_k} = {assignments}) at most {INT32_MAX} assignments routed per rank and "
                f"micro-batch")
        self.cluster.profile.gpu.peak(tr.dtype)  # the GPU must have a peak for the training dtype
        slots = self.placement.slots_per_gpu
        require(slots is None or slots >= mod.num_experts // lay.ep, "placement.slots_per_gpu", slots,
                f">= model.num_experts / layout.ep ({mod.num_experts // lay.ep}): every expert needs a slot")
        trace = self.routing.trace
        if trace is not None and trace.num_experts:  # the replay rule maps experts by whole multiples
            ok = mod.num_experts % trace.num_experts == 0 or trace.num_experts % mod.num_experts == 0
            require(ok, "routing.trace", f"{trace.num_experts} experts in the trace",
                    f"a trace whose experts divide or are divided by model.num_experts ({mod.num_experts})")
        return self

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches each data-parallel rank runs per step."""
        return self.training.global_batch_size // (self.layout.dp * self.training.micro_batch_size)

    @property
    def tokens_per_micro_batch(self) -> int:
        """Tokens one tensor-parallel group processes in one micro-batch: its 1/cp of each sequence."""
        return self.training.micro_batch_size * self.training.seq_len // self.layout.cp

    @property
    def tokens_routed_per_rank(self) -> int:
        """Tokens one rank routes per micro-batch (sequence parallel splits them over tp)."""
        return self.tokens_per_micro_batch // self.layout.tp

    @property
    def layers_per_stage(self) -> int:
        return self.model.num_layers // self.layout.pp


def _divides(key: str, value: int, target_key: str, target: int) -> None:
    require(target % value == 0, key, value, f"a divisor of {target_key} ({target})")
