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
from moesim.spec.comm import CommSpec, TokenDispatcher
from moesim.spec.plan import PlanSpec
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
    comm: CommSpec = spec_field(CommSpec(), help="token dispatcher and communication overlap (Megatron-LM's flags)")
    plan: PlanSpec | None = spec_field(None, help="what `moesim plan` searches and how it ranks (ignored by "
                                       "`moesim run`)")
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
        _check_pipeline_split(lay, mod.num_layers)
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
        m = self.num_micro_batches
        require(lay.vpp == 1 or m % lay.pp == 0, "training.global_batch_size", tr.global_batch_size,
                f"micro-batches per pipeline (global_batch_size / (layout.dp x micro_batch_size) = {m}) a multiple "
                f"of layout.pp ({lay.pp}) with layout.vpp = {lay.vpp}: Megatron's interleaved schedule runs "
                f"micro-batches in groups of pp")
        self.cluster.profile.gpu.peak(tr.dtype)  # the GPU must have a peak for the training dtype
        comm = self.comm
        require(not comm.overlap_param_gather or tr.optimizer.distributed, "comm.overlap_param_gather", True,
                "only with training.optimizer.distributed: true (Megatron-LM: --overlap-param-gather needs "
                "--use-distributed-optimizer)")
        require(not comm.tp_comm_overlap or lay.tp > 1, "comm.tp_comm_overlap", True,
                "only with layout.tp > 1 (Megatron-LM: --tp-comm-overlap needs tensor and sequence parallelism)")
        require(not comm.moe_a2a_overlap or lay.ep > 1, "comm.moe_a2a_overlap", True,
                "only with layout.ep > 1 (Megatron-LM: --overlap-moe-expert-parallel-comm needs expert parallelism)")
        require(not comm.shared_expert_overlap or (mod.num_shared_experts > 0
                                                   and comm.dispatcher is not TokenDispatcher.ALLGATHER),
                "comm.shared_expert_overlap", True, "only with shared experts (model.num_shared_experts > 0) and the "
                "alltoall or flex dispatcher (Megatron-LM --moe-shared-expert-overlap)")
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

    # Layer-to-stage mapping. Stage s holds model chunks c = 0 .. vpp - 1; chunk c is virtual stage c·pp + s, and
    # the virtual stages hold consecutive runs of layers in that order (Megatron's interleaved layout: with pp = 2,
    # vpp = 2 and 8 layers, stage 0 holds layers 0-1 and 4-5, stage 1 layers 2-3 and 6-7). Stage s's chunks hold
    # stage_layer_counts[s] / vpp layers each.

    @property
    def stage_layer_counts(self) -> tuple[int, ...]:
        """Transformer layers on each pipeline stage: layout.first_stage_layers / last_stage_layers where set
        (Megatron --decoder-first/last-pipeline-num-layers), the rest split evenly over the other stages."""
        lay = self.layout
        return _stage_layer_counts(self.model.num_layers, lay.pp, lay.first_stage_layers, lay.last_stage_layers)

    def chunk_layers(self, stage: int, chunk: int = 0) -> range:
        """The layers of model chunk `chunk` (0 .. vpp - 1) of pipeline stage `stage`, in model order."""
        lay, counts = self.layout, self.stage_layer_counts
        if not (0 <= stage < lay.pp and 0 <= chunk < lay.vpp):
            raise ValueError(f"(stage {stage}, chunk {chunk}) out of range: pp = {lay.pp}, vpp = {lay.vpp}")
        start = chunk * (self.model.num_layers // lay.vpp) + sum(counts[:stage]) // lay.vpp
        return range(start, start + counts[stage] // lay.vpp)

    def stage_layers(self, stage: int) -> tuple[int, ...]:
        """Every layer pipeline stage `stage` holds (all its model chunks), in model order."""
        return tuple(layer for chunk in range(self.layout.vpp) for layer in self.chunk_layers(stage, chunk))

    def stage_of_layer(self, layer: int) -> int:
        """The pipeline stage holding `layer`: its place in its round of virtual stages (num_layers / vpp layers
        each), where stage 0 takes the first stage's share, each middle stage an equal one, the last the rest."""
        lay, counts = self.layout, self.stage_layer_counts
        if not 0 <= layer < self.model.num_layers:
            raise ValueError(f"layer {layer} out of range: the model has {self.model.num_layers} layers")
        offset = layer % (self.model.num_layers // lay.vpp)
        first = counts[0] // lay.vpp
        if lay.pp == 1 or offset < first:
            return 0
        if lay.pp == 2:
            return 1
        return min(1 + (offset - first) // (counts[1] // lay.vpp), lay.pp - 1)

    @property
    def mean_chunk_layers(self) -> float:
        """Layers per model chunk, averaged over the pp x vpp chunks (exact when the stages are even)."""
        return self.model.num_layers / (self.layout.pp * self.layout.vpp)


def _stage_layer_counts(num_layers: int, pp: int, first: int | None, last: int | None) -> tuple[int, ...]:
    middle = pp - (first is not None) - (last is not None)
    rest = num_layers - (first or 0) - (last or 0)
    each = rest // middle if middle else 0
    counts = [each] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    return tuple(counts)


def _check_pipeline_split(lay: ParallelLayout, num_layers: int) -> None:
    """Megatron's checks of the layer split (TransformerConfig, validate_args): even stages divide the layers;
    uneven ones leave the middle stages an even share; every stage's layers divide into vpp equal model chunks."""
    first, last = lay.first_stage_layers, lay.last_stage_layers
    if first is None and last is None:
        _divides("layout.pp", lay.pp, "model.num_layers", num_layers)
    else:
        middle = lay.pp - (first is not None) - (last is not None)
        rest = num_layers - (first or 0) - (last or 0)
        key, value = ("layout.first_stage_layers", first) if first is not None else ("layout.last_stage_layers", last)
        given = " + ".join(f"{k} ({v})" for k, v in (("first_stage_layers", first), ("last_stage_layers", last))
                           if v is not None)
        if middle == 0:
            require(rest == 0, key, value, f"{given} equal to model.num_layers ({num_layers}): with pp = {lay.pp} "
                                           f"there is no middle stage to take the other layers")
        else:
            require(rest >= middle and rest % middle == 0, key, value,
                    f"{given} leaving model.num_layers - those ({num_layers} - {num_layers - rest} = {rest}) layers "
                    f"divisible evenly over the {middle} middle stages, at least one each (Megatron "
                    f"--decoder-first/last-pipeline-num-layers)")
    counts = _stage_layer_counts(num_layers, lay.pp, first, last)
    if len(set(counts)) == 1:
        held = f"{counts[0]} layers on each stage"
    else:
        middle_text = f", {counts[1]} on each middle stage" if lay.pp > 2 else ""
        held = f"{counts[0]} layers on the first stage{middle_text}, {counts[-1]} on the last"
    require(all(n % lay.vpp == 0 for n in counts), "layout.vpp", lay.vpp,
            f"a divisor of every pipeline stage's layer count ({held}): a stage's vpp model chunks hold equal "
            f"numbers of layers (Megatron)")


def _divides(key: str, value: int, target_key: str, target: int) -> None:
    require(target % value == 0, key, value, f"a divisor of {target_key} ({target})")
