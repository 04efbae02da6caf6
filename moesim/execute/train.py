"""One rank of an executed plan: a small MoE transformer trained for real on torch.distributed, every op timed.

The model (one stage: data + expert parallelism): embedding -> layers (attention; then a dense SwiGLU FFN or
an MoE block: router (+ shared expert) -> dispatch -> experts -> combine -> un-permute) -> LM head and loss.
Each op is a *segment*: its inputs are detached leaves, so the backward runs segment by segment in reverse and
every op is timed in both directions, as the simulator's records are: the same op kinds (moesim.sim.records),
the same micro-batch and model-chunk order (moesim.sim.engine.pipeline_schedule), then the gradient reductions
over dp and edp (all-reduce, or reduce-scatter and all-gather around the distributed optimizer's step:
moesim.execute.grad_buffer) and the optimizer step. Timing is the wall clock on CPUs and CUDA events on GPUs,
both on the host's clock (Timeline.resolve), which the processes of one host share, so a collective's wait for
the group's last member comes out exactly (moesim.execute.records).

The router's choices and the gate's drops follow the simulator's routing of the same scenario and seed
(moesim.execute.routing_plan), so the measured run moves the rows the simulated one does.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from moesim.execute.grad_buffer import ALL_GATHER, REDUCE_SCATTER, GradBuffer
from moesim.execute.moe_layer import all_to_all
from moesim.execute.routing_plan import (
    GroupSlots,
    RankRouting,
    flex_routing,
    group_slots,
    kept_to,
    rank_routing,
)
from moesim.kernels.reference import swiglu_ffn
from moesim.sim.engine import pipeline_schedule
from moesim.sim.records import OpKind, Phase
from moesim.spec.comm import TokenDispatcher
from moesim.spec.scenario import Scenario


@dataclass
class Groups:
    """This rank's process groups (handles) and their members (global ranks)."""

    handles: dict[str, object]
    members: dict[str, list[int]]


def make_groups(sc: Scenario, rank: int) -> Groups:
    """Every group of the layout, created on every rank in the same order (torch.distributed requires it)."""
    lay = sc.layout
    grids = {"ep": lay.ep_groups(), "edp": lay.edp_groups(), "dp": lay.dp_groups(), "tp": lay.tp_groups(),
             "etp": lay.etp_groups()}
    handles, members = {}, {}
    for name, grid in grids.items():
        for group in grid.reshape(-1, grid.shape[-1]).tolist():
            handle = dist.new_group(group)
            if rank in group:
                handles[name], members[name] = handle, group
    return Groups(handles, members)


def copy_sets(sc: Scenario, slots: dict[tuple[int, int], GroupSlots]) -> list[tuple[int, ...]]:
    """Every set of global ranks that exchanges an expert's copies in some step, sorted: the owners of a
    replicated expert (their gradients all-reduced) and an owner with its shadows (weights broadcast, gradients
    reduced). slots: (step, layer) -> the placement every EP group of the layer's stage holds."""
    lay, E = sc.layout, sc.model.num_experts
    sets: set[tuple[int, ...]] = set()
    for group_slots_, stage in {(id(g), sc.stage_of_layer(layer)): (g, sc.stage_of_layer(layer))
                                for (_, layer), g in slots.items()}.values():
        for members in lay.ep_groups()[stage].reshape(-1, lay.ep):
            for e in range(E):
                owners, shadows = group_slots_.owners(e), group_slots_.shadows(e)
                for ep_ranks in ([owners] if len(owners) > 1 else []) + ([owners[:1] + shadows] if shadows else []):
                    sets.add(tuple(sorted(int(members[g]) for g in ep_ranks)))
    return sorted(sets)


def make_copy_groups(sc: Scenario, slots: dict[tuple[int, int], GroupSlots], rank: int
                     ) -> dict[tuple[int, ...], object]:
    """A process group for each of copy_sets, created on every rank in the same order; this rank's handles."""
    handles = {}
    for members in copy_sets(sc, slots):
        handle = dist.new_group(list(members))
        if rank in members:
            handles[members] = handle
    return handles


@dataclass
class Segment:
    op: OpKind
    layer: int
    outputs: tuple[torch.Tensor, ...]
    leaves: tuple[torch.Tensor, ...]
    nbytes: float = 0.0
    rows: int = 0
    collective: bool = False
    group: str = ""  # the process group of a collective when it is not its op's usual one (records.GROUP_OF)


@dataclass
class Timeline:
    """This rank's records as flat lists, in program order (identical on every rank)."""

    # (step, mb, layer, phase, op, start, end, bytes, rows, group): group "" = the op's usual one
    rows: list[tuple] = field(default_factory=list)

    def add(self, step: int, mb: int, layer: int, phase: Phase, op: OpKind, start, end,
            nbytes: float = 0.0, rows: int = 0, group: str = "") -> None:
        """start, end: seconds on the host's clock, or GPU events (marks) that resolve() turns into seconds."""
        self.rows.append((step, mb, layer, phase.value, op.value, start, end, nbytes, rows, group))

    def resolve(self, first: int, anchor, anchor_s: float) -> None:
        """Rows from index `first` on: each event mark -> anchor_s + its time after the `anchor` event (CUDA
        events' elapsed_time, in ms), so that the GPU's own timings land on the host clock the ranks share.
        The events must have completed (synchronise first)."""
        def seconds(mark) -> float:
            return mark if isinstance(mark, float) else anchor_s + anchor.elapsed_time(mark) / 1e3

        self.rows[first:] = [(*row[:5], seconds(row[5]), seconds(row[6]), *row[7:]) for row in self.rows[first:]]


def stable_seed(*key) -> int:
    """A seed from a key, the same in every process (Python's hash() of a str differs between processes)."""
    return zlib.crc32(repr(key).encode())


def tp_slices(m, tp: int, t: int) -> dict[str, tuple[int, torch.Tensor]]:
    """Megatron's tensor-parallel split of one layer's dense weights for TP rank t of tp: suffix -> (dim, indices).
    QKV and the FFN's gate/up are split by columns (each rank its heads: its query heads and key/value groups), the
    attention output and the FFN's down projection by rows."""
    hd, H, KV = m.head_dim, m.num_attention_heads, m.num_kv_heads
    hq, hkv = H // tp * hd, KV // tp * hd

    def block(offset: int, width: int) -> torch.Tensor:
        return torch.arange(offset + t * width, offset + (t + 1) * width)

    qkv = torch.cat([block(0, hq), block(H * hd, hkv), block((H + KV) * hd, hkv)])
    ffn = block(0, m.dense_ffn_size // tp)
    return {"wqkv": (1, qkv), "wo": (0, block(0, hq)), "dense.w_gate": (1, ffn), "dense.w_up": (1, ffn),
            "dense.w_down": (0, ffn)}


def init_params(sc: Scenario, local_experts: dict[int, list[int]], device: torch.device, dtype: torch.dtype,
                layers: tuple[int, ...] | None = None, first: bool = True, last: bool = True,
                tp: tuple[int, int] = (0, 1), etp: tuple[int, int] = (0, 1)
                ) -> tuple[dict, list[torch.Tensor], list[torch.Tensor]]:
    """(params by name, dense tensors, expert tensors). Each weight is drawn from a generator seeded by (seed,
    layer, name, expert), so every rank's copy of a weight is the same, and a single process holding every layer and
    expert (moesim.execute.reference) draws the same weights as the ranks. `layers`: this pipeline stage's (default
    all); the embedding lives on the first stage, the final norm and LM head on the last. `tp` = (TP rank, TP
    size): the attention's and dense FFN's weights are this rank's slices of the full ones (tp_slices), every other
    weight is whole; `etp` alike for the experts (expert_shards). params["shards"]: name -> (dim, indices) of each
    sliced weight in the full one."""
    m = sc.model
    h, hd = m.hidden_size, m.head_dim
    seed = sc.simulation.seed

    slices = tp_slices(m, tp[1], tp[0]) if tp[1] > 1 else {}

    def weight(shape, key: tuple, scale: float | None = None, name: str = "") -> torch.Tensor:
        g = torch.Generator().manual_seed(stable_seed(seed, *key))
        w = torch.randn(shape, generator=g) * (scale if scale is not None else shape[0] ** -0.5)
        cut = slices.get(name.split(".", 1)[-1]) if name else None
        if cut is not None:  # drawn whole, so that every TP size slices the same weights
            p["shards"][name] = cut
            w = w.index_select(*cut)
        return w.contiguous().to(device, dtype).requires_grad_(True)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, device=device, dtype=dtype, requires_grad=True)

    def ffn(prefix: str, f: int, key: tuple) -> list[str]:
        for name, shape in (("w_gate", (h, f)), ("w_up", (h, f)), ("w_down", (f, h))):
            p[f"{prefix}.{name}"] = weight(shape, key + (name,), name=f"{prefix}.{name}")
        return [f"{prefix}.{name}" for name in ("w_gate", "w_up", "w_down")]

    p: dict = {"shards": {}}
    if first:
        p["embed"] = weight((m.vocab_size, h), ("embed",), 1.0)
    if last:  # a tied head is the embedding: scale_plan unties them when the two are on different stages
        p["ln_f"] = ones(h)
        p["head"] = p["embed"] if m.tie_word_embeddings else weight((h, m.vocab_size), ("head",))
    expert_names = []
    for layer in (range(m.num_layers) if layers is None else layers):
        p[f"{layer}.ln1"], p[f"{layer}.ln2"] = ones(h), ones(h)
        p[f"{layer}.wqkv"] = weight((h, (m.num_attention_heads + 2 * m.num_kv_heads) * hd), (layer, "wqkv"),
                                    name=f"{layer}.wqkv")
        p[f"{layer}.wo"] = weight((m.num_attention_heads * hd, h), (layer, "wo"), name=f"{layer}.wo")
        if m.is_moe_layer(layer):
            p[f"{layer}.router"] = weight((h, m.num_experts), (layer, "router"))
            if m.num_shared_experts:
                ffn(f"{layer}.shared", m.expert_ffn_size * m.num_shared_experts, (layer, "shared"))
            for e in local_experts[layer]:
                expert_names += expert_weights(sc, layer, e, p, device, dtype, etp)
        else:
            ffn(f"{layer}.dense", m.dense_ffn_size, (layer, "dense"))
    tensors = {k: v for k, v in p.items() if isinstance(v, torch.Tensor)}
    unique = list({id(v): v for v in tensors.values()}.values())  # a tied head is the embedding
    experts = {id(tensors[k]) for k in expert_names}
    return p, [v for v in unique if id(v) not in experts], [tensors[k] for k in expert_names]


EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


def expert_shards(f: int, etp: tuple[int, int]) -> dict[str, tuple[int, torch.Tensor]]:
    """Expert tensor parallelism: ETP rank t of size holds 1/size of an expert's FFN columns (gate and up by
    columns, down by rows; Megatron's --expert-tensor-parallel-size). Name -> (dim, indices) in the full weight."""
    t, size = etp
    cols = torch.arange(t * f // size, (t + 1) * f // size)
    return {"w_gate": (1, cols), "w_up": (1, cols), "w_down": (0, cols)}


def expert_weights(sc: Scenario, layer: int, expert: int, p: dict, device: torch.device, dtype: torch.dtype,
                   etp: tuple[int, int] = (0, 1)) -> list[str]:
    """Draw expert `expert`'s SwiGLU weights of `layer` into p (the same on every rank: seeded by the expert;
    drawn whole, then this ETP rank's shard); their names."""
    h, f = sc.model.hidden_size, sc.model.expert_ffn_size
    cuts = expert_shards(f, etp) if etp[1] > 1 else {}
    names = []
    for name, shape in zip(EXPERT_WEIGHTS, ((h, f), (h, f), (f, h))):
        g = torch.Generator().manual_seed(stable_seed(sc.simulation.seed, layer, "expert", int(expert), name))
        w = torch.randn(shape, generator=g) * shape[0] ** -0.5
        key = f"{layer}.expert{expert}.{name}"
        if name in cuts:
            p["shards"][key] = cuts[name]
            w = w.index_select(*cuts[name]).contiguous()
        p[key] = w.to(device, dtype).requires_grad_(True)
        names.append(key)
    return names


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def ffn(x: torch.Tensor, p: dict, prefix: str) -> torch.Tensor:
    """The SwiGLU FFN whose weights are p[prefix + ".w_gate" / ".w_up" / ".w_down"]."""
    return swiglu_ffn(x, p[f"{prefix}.w_gate"], p[f"{prefix}.w_up"], p[f"{prefix}.w_down"])


def attention_core(n: torch.Tensor, p: dict, layer: int, m, seq: int, tp: int = 1) -> torch.Tensor:
    """Causal grouped-query self-attention of the normed input n [B * seq, h] through this TP rank's heads (1/tp of
    the query heads and key/value groups): the output projection's partial sum, [B * seq, h]."""
    H, KV, hd = m.num_attention_heads // tp, m.num_kv_heads // tp, m.head_dim
    q, k, v = (n @ p[f"{layer}.wqkv"]).split([H * hd, KV * hd, KV * hd], dim=-1)
    B = n.shape[0] // seq

    def heads(t: torch.Tensor, count: int) -> torch.Tensor:
        return t.view(B, seq, count, hd).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q, H), heads(k, KV), heads(v, KV), is_causal=True, enable_gqa=KV != H)
    return out.transpose(1, 2).reshape(n.shape[0], H * hd) @ p[f"{layer}.wo"]


def attention(x: torch.Tensor, p: dict, layer: int, m, seq: int) -> torch.Tensor:
    """x + causal grouped-query self-attention of rms_norm(x); x [B * seq, h]."""
    return x + attention_core(rms_norm(x, p[f"{layer}.ln1"]), p, layer, m, seq)


def dense_ffn(a: torch.Tensor, p: dict, layer: int) -> torch.Tensor:
    return a + ffn(rms_norm(a, p[f"{layer}.ln2"]), p, f"{layer}.dense")


def lm_head(x: torch.Tensor, targets: torch.Tensor, p: dict, m, scale: float) -> torch.Tensor:
    """Cross-entropy of the next tokens, times `scale` (1 / micro-batches: the step's mean loss)."""
    head = p["head"].t() if m.tie_word_embeddings else p["head"]
    return F.cross_entropy((rms_norm(x, p["ln_f"]) @ head).float(), targets) * scale




class _SequenceGather(torch.autograd.Function):
    """Megatron's sequence-parallel all-gather along dim 0; its backward reduce-scatters the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, size: int):
        ctx.group, ctx.size = group, size
        out = x.new_empty((x.shape[0] * size, *x.shape[1:]))
        ALL_GATHER(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _reduce_scatter(grad, ctx.group, ctx.size), None, None


class _SequenceScatter(torch.autograd.Function):
    """Megatron's sequence-parallel reduce-scatter along dim 0; its backward all-gathers the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, size: int):
        ctx.group, ctx.size = group, size
        return _reduce_scatter(x, group, size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty((grad.shape[0] * ctx.size, *grad.shape[1:]))
        ALL_GATHER(out, grad.contiguous(), group=ctx.group)
        return out, None, None


def _reduce_scatter(x: torch.Tensor, group, size: int) -> torch.Tensor:
    out = x.new_empty((x.shape[0] // size, *x.shape[1:]))
    REDUCE_SCATTER(out, x.contiguous(), group=group)
    return out


def _local(x: torch.Tensor, output_splits, input_splits, group) -> torch.Tensor:
    """The exchange of an EP group of one rank: nothing leaves (a view, so the backward passes straight through)."""
    return x.view_as(x)


def tokens_of(sc: Scenario, step: int, mb: int, rank: int, seq: int) -> torch.Tensor:
    """seq + 1 token ids of a rank's micro-batch (inputs and next-token targets), the same in every process."""
    g = torch.Generator().manual_seed(stable_seed(sc.simulation.seed, "tokens", step, mb, rank))
    return torch.randint(0, sc.model.vocab_size, (seq + 1,), generator=g)


class Trainer:
    def __init__(self, sc: Scenario, routing: list, rank: int, device: torch.device, dtype: torch.dtype,
                 triton_experts: bool | None = None):
        """`triton_experts`: run the routed experts with moesim's Triton kernels (moesim.kernels.expert_ffn);
        default on GPUs, torch matmuls on CPUs (the kernels run there only under TRITON_INTERPRET=1)."""
        self.sc, self.rank, self.device, self.dtype = sc, rank, device, dtype
        self.triton_experts = device.type == "cuda" if triton_experts is None else triton_experts
        m, lay = sc.model, sc.layout
        self.groups = make_groups(sc, rank)
        self.ep_index = self.groups.members["ep"].index(rank)
        self.sources = np.asarray(self.groups.members["ep"]) % lay.ranks_per_stage  # local ranks, EP order
        self.stage = lay.stage_of(rank)  # scale_plan keeps Megatron's default order: stages are rank blocks
        self.first, self.last = self.stage == 0, self.stage == lay.pp - 1
        self.layers = sc.stage_layers(self.stage)
        self.moe_layers = [i for i in self.layers if m.is_moe_layer(i)]
        self.tp_rank = rank % lay.tp  # tp is the innermost dimension of Megatron's default order
        self.data_rank = rank % lay.ranks_per_stage // lay.tp  # the data-parallel replica: its stages share it
        self.routing = {(r.step, r.layer): r for r in routing}
        # the stage's EP groups are rows [edp * etp] of ep_groups(); the simulator's computed rows are per row
        ep_rows = lay.ep_groups()[self.stage].reshape(-1, lay.ep)
        self.group_index = int(np.flatnonzero((ep_rows == rank).any(1))[0])
        self.etp_rank = self.group_index % lay.etp
        # the EP groups of my ETP group's members (same EP rank, each ETP index): (group index, local ranks)
        first = self.group_index - self.etp_rank
        self.etp_peers = [(first + t, ep_rows[first + t] % lay.ranks_per_stage) for t in range(lay.etp)]
        self.expert_f = m.expert_ffn_size // lay.etp  # an expert's FFN columns held here (its ETP shard)
        # where each expert lives, step by step (one GroupSlots per distinct placement)
        by_placement: dict[int, GroupSlots] = {}
        for r in self.routing.values():
            if id(r.placement) not in by_placement:
                by_placement[id(r.placement)] = group_slots(r.placement, m.num_experts, lay.ep)
        self.slots = {key: by_placement[id(r.placement)] for key, r in self.routing.items()}
        self.copy_groups = make_copy_groups(sc, self.slots, rank)
        if device.type == "cuda":  # NCCL connects a group at its first collective: here, not in a measured step
            for members in sorted(self.copy_groups):
                dist.all_reduce(torch.zeros(1, device=device), group=self.copy_groups[members])
        self.seq = sc.training.seq_len * sc.training.micro_batch_size
        self.shard = slice(self.tp_rank * self.seq // lay.tp, (self.tp_rank + 1) * self.seq // lay.tp)  # my tokens
        # the experts whose weights, gradients and optimizer state live here (shadows come and go each step)
        self.held = {layer: self._owned(0, layer) for layer in self.moe_layers}
        self.params, self.dense, self.expert = init_params(sc, self.held, device, dtype, self.layers, self.first,
                                                           self.last, (self.tp_rank, lay.tp),
                                                           (self.etp_rank, lay.etp))
        self.shadowed: dict[tuple[int, int], int] = {}  # (layer, expert) -> its owner's global rank, this step
        self.placed_step = -1  # the step whose placement the held experts follow
        shards = self.params["shards"]
        expert_ids = {id(t) for t in self.expert}
        # whole on every TP rank, each fed its own tokens: their gradients are summed over the TP group
        self.tp_replicated = [t for name, t in self.params.items() if isinstance(t, torch.Tensor)
                              and name not in shards and id(t) not in expert_ids] if lay.tp > 1 else []
        self.tp_replicated = list({id(t): t for t in self.tp_replicated}.values())
        self.allgather = sc.comm.dispatcher is TokenDispatcher.ALLGATHER
        self.flex = sc.comm.dispatcher is TokenDispatcher.FLEX
        if lay.etp > 1 and sc.comm.dispatcher is not TokenDispatcher.ALLTOALL:  # scale_plan sets etp 1 for them
            raise ValueError(f"expert tensor parallelism (etp {lay.etp}) runs with the alltoall dispatcher only, "
                             f"not {sc.comm.dispatcher.value}")
        self.elem_bytes = torch.finfo(dtype).bits // 8
        self.row_bytes = m.hidden_size * self.elem_bytes  # one token's activations
        self.sends: list = []  # this step's pipeline sends in flight (tensor, work), waited before the all-reduces
        # per (micro-batch, model chunk): the activation received from upstream, the leaf sent downstream
        self.stage_inputs: dict[tuple[int, int], torch.Tensor] = {}
        self.stage_outputs: dict[tuple[int, int], torch.Tensor] = {}
        # Megatron's gradient buffers (and distributed optimizer): experts stay unsharded when they migrate,
        # since their optimizer state then moves with them
        self.distributed = sc.training.optimizer.distributed
        moving = any(not np.array_equal(self._owned_all(key[0], key[1]), self._owned_all(0, key[1]))
                     for key in self.slots if key[1] in self.moe_layers)
        self.dense_buffer = self._buffer(self.dense, "dp", self.distributed)
        self.expert_buffer = self._buffer(self.expert, "edp", self.distributed and not moving)
        self.optimizer = self._make_optimizer()
        self.optimizer_steps = 0
        self.timeline = Timeline()
        self.step_starts: list[float] = []
        self.losses: list[float] = []  # each micro-batch's loss (its share of the step's mean)

    # ---- timing ----
    def _now(self):
        """A time mark: on GPUs a CUDA event recorded on the current stream (the op's own GPU time, without a
        synchronise per op; Timeline.resolve converts it at the step's end), on CPUs the host's clock."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start_clock(self) -> None:
        """The step's start on the host clock (after the barrier); on GPUs also the event the step's marks are
        measured from, recorded on an idle device so that it marks the same instant."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.anchor = torch.cuda.Event(enable_timing=True)
            self.anchor.record()
        self.step_starts.append(time.perf_counter())
        self.step_first_row = len(self.timeline.rows)

    def _stop_clock(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.timeline.resolve(self.step_first_row, self.anchor, self.step_starts[-1])

    def _segment(self, tape: list, step: int, mb: int, op: OpKind, layer: int, fn, *inputs, nbytes=0.0, rows=0,
                 collective=False, group=""):
        t0 = self._now()
        outputs = fn(*inputs)
        t1 = self._now()
        self.timeline.add(step, mb, layer, Phase.FORWARD, op, t0, t1, nbytes, rows, group)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        leaves = tuple(o.detach().requires_grad_(o.requires_grad) for o in outputs)
        tape.append(Segment(op, layer, outputs, leaves, nbytes, rows, collective, group))
        return leaves if len(leaves) > 1 else leaves[0]

    def _backward(self, tape: list, step: int, mb: int) -> None:
        for seg in reversed(tape):
            if seg.op is OpKind.LM_HEAD:  # the loss: the backward starts here
                pairs = [(seg.outputs[0], torch.ones_like(seg.outputs[0]))]
            else:  # a collective's backward runs on every member, with zeros where nothing flowed back
                pairs = [(o, leaf.grad if leaf.grad is not None else torch.zeros_like(o))
                         for o, leaf in zip(seg.outputs, seg.leaves)
                         if o.requires_grad and (leaf.grad is not None or seg.collective)]
            t0 = self._now()
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            t1 = self._now()
            self.timeline.add(step, mb, seg.layer, Phase.BACKWARD, seg.op, t0, t1, seg.nbytes, seg.rows, seg.group)
        tape.clear()

    # ---- the model's ops ----
    def _attention(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        return attention(x, self.params, layer, self.sc.model, self.seq)

    def _dense_ffn(self, a: torch.Tensor, layer: int) -> torch.Tensor:
        return dense_ffn(a, self.params, layer)

    def _gates(self, a: torch.Tensor, layer: int, ids: torch.Tensor) -> tuple:
        """What every dispatcher's router does first: (the pre-MLP norm of a, the gates of the routed choices
        ids [T, k], and the shared experts' output as a 1-tuple, or an empty one)."""
        p = self.params
        n = rms_norm(a, p[f"{layer}.ln2"])
        gate = torch.softmax(n @ p[f"{layer}.router"], dim=-1).gather(1, ids)
        return n, gate, (ffn(n, p, f"{layer}.shared"),) if self.sc.model.num_shared_experts else ()

    def _router(self, a: torch.Tensor, layer: int, rr: RankRouting, ids: torch.Tensor, send_tokens: torch.Tensor):
        n, gate, shared = self._gates(a, layer, ids)
        padded = torch.cat([n, n.new_zeros(1, n.shape[1])])  # row T: a padding row
        return padded[send_tokens], gate, *shared

    def _run_experts(self, layer: int, inputs: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        """Each (expert, its rows) through the expert's SwiGLU: one grouped Triton call for all of them, or a
        torch FFN per expert."""
        if not self.triton_experts:
            return [ffn(x, self.params, f"{layer}.expert{e}") for e, x in inputs]
        from moesim.kernels.expert_ffn import expert_ffn, launch_options  # noqa: PLC0415 - triton where it runs

        x = torch.cat([x for _, x in inputs])
        ids = torch.cat([torch.full((x.shape[0],), j, dtype=torch.int64, device=x.device)
                         for j, (_, x) in enumerate(inputs)])
        weights = [[self.params[f"{layer}.expert{e}.{name}"] for e, _ in inputs] for name in EXPERT_WEIGHTS]
        y = expert_ffn(x, ids, *weights, **launch_options(x))
        return list(y.split([x.shape[0] for _, x in inputs]))

    def _expert_outputs(self, src: torch.Tensor, layer: int, per_slot: list, gates: torch.Tensor | None = None):
        """The local experts on their rows of src: per_slot holds, per local slot, (expert, its rows of src, the
        index of each row's gate in gates flattened or None, the padding rows it computes at the expert). Every
        local expert runs, rows or not (a rank without rows must still reach the dispatch's backward); each
        output row, weighted by its gate where gates are given, is added into its row of a zero [rows, h]."""
        inputs = []
        for e, idx, _, pad in per_slot:
            x = src[idx]
            inputs.append((e, torch.cat([x, x.new_zeros(pad, x.shape[1])]) if pad else x))
        out = src.new_zeros(src.shape)
        flat = gates.reshape(-1) if gates is not None else None
        for (_, idx, gidx, _), y in zip(per_slot, self._run_experts(layer, inputs)):
            y = y[:idx.shape[0]]
            out = out.index_add(0, idx, y if flat is None else y * flat[gidx].unsqueeze(1))
        return out

    def _experts(self, received: torch.Tensor, layer: int, rr: RankRouting, rows: list[torch.Tensor]):
        return self._expert_outputs(received, layer, [(e, idx, None, pad) for e, idx, pad in
                                                      zip(rr.local_experts, rows, rr.expert_padding)])

    def _unpermute(self, a: torch.Tensor, returned: torch.Tensor, gate: torch.Tensor, slots: torch.Tensor,
                   real: torch.Tensor, *shared: torch.Tensor) -> torch.Tensor:
        k = gate.shape[1]
        weights = gate.reshape(-1)[slots[real]].unsqueeze(1)
        y = a.index_add(0, slots[real] // k, returned[real] * weights)
        return y + shared[0] if shared else y

    def _lm_head(self, x: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
        return lm_head(x, targets, self.params, self.sc.model, scale)

    # ---- passes and steps ----
    def _prepare(self, step: int) -> dict:
        """The step's tokens and routing as tensors, built before the step's clock starts: index work that a real
        trainer does on the GPU inside its permute kernels, and that is not one of the simulator's ops."""
        m = self.sc.model
        ready: dict = {}
        for mb in range(self.sc.num_micro_batches):
            ready[mb] = tokens_of(self.sc, step, mb, self.data_rank, self.seq).to(self.device)
            for layer in self.moe_layers:
                r = self.routing[(step, layer)]
                rr = rank_routing(r.loads[mb], r.sent[mb], r.computed[mb, self.group_index], self.sources,
                                  self.ep_index, m.top_k, self.slots[(step, layer)])
                slots = torch.as_tensor(rr.send_slots, device=self.device)
                if self.allgather:
                    ready[("allgather", layer, mb)] = self._gathered_rows(r, mb, self.slots[(step, layer)], rr)
                if self.flex:
                    ready[("flex", layer, mb)] = self._flex_rows(r, mb, self.slots[(step, layer)], rr)
                if self.sc.layout.etp > 1:
                    ready[("etp", layer, mb)] = self._etp_rows(r, mb, self.slots[(step, layer)], rr)
                ready[(layer, mb)] = (rr, torch.as_tensor(rr.expert_ids, device=self.device), slots,
                                      (slots >= 0).nonzero(as_tuple=True)[0],
                                      torch.where(slots >= 0, slots // m.top_k,
                                                  torch.full_like(slots, self.seq // self.sc.layout.tp)),
                                      [torch.as_tensor(idx, device=self.device) for idx in rr.expert_rows])
        return ready

    def _etp_rows(self, r, mb: int, slots: GroupSlots, own: RankRouting) -> tuple[int, list]:
        """Expert tensor parallelism: my ETP group's members (same EP rank, one per EP group of the ETP group)
        gather what their dispatches received, padded to the longest (rmax rows each). Per member, in ETP order:
        per local slot, the member's received rows it computes (offset to the gathered buffer) and the padding
        rows its EP group computes at the expert."""
        m = self.sc.model
        peers = []
        for t, (index, sources) in enumerate(self.etp_peers):
            rr = own if t == self.etp_rank else rank_routing(r.loads[mb], r.sent[mb], r.computed[mb, index], sources,
                                                             self.ep_index, m.top_k, slots)
            peers.append(rr)
        rmax = max(sum(rr.recv_splits) for rr in peers)
        out = []
        for j, e in enumerate(own.local_experts):
            idx = np.concatenate([t * rmax + rr.expert_rows[j] for t, rr in enumerate(peers)])
            out.append((e, torch.as_tensor(idx, device=self.device), None, sum(rr.expert_padding[j] for rr in peers)))
        return rmax, out

    def _etp_gather(self, received: torch.Tensor, rmax: int) -> torch.Tensor:
        x = torch.cat([received, received.new_zeros(rmax - received.shape[0], received.shape[1])])
        return _SequenceGather.apply(x, self.groups.handles["etp"], self.sc.layout.etp)

    def _etp_scatter(self, partial: torch.Tensor, rows: int) -> torch.Tensor:
        return _SequenceScatter.apply(partial, self.groups.handles["etp"], self.sc.layout.etp)[:rows]

    def _source_routings(self, r, mb: int, slots: GroupSlots, own: RankRouting) -> list[RankRouting]:
        """Every EP source's routing of this micro-batch, as it routes it itself (mine is `own`)."""
        return [own if j == self.ep_index else rank_routing(r.loads[mb], r.sent[mb], r.computed[mb, self.group_index],
                                                            self.sources, j, self.sc.model.top_k, slots)
                for j in range(len(self.sources))]

    def _gathered_rows(self, r, mb: int, slots: GroupSlots, own: RankRouting
                       ) -> list[tuple[int, torch.Tensor, torch.Tensor, int]]:
        """The allgather dispatcher: per local expert (slot order), the expert, the rows of the EP group's gathered
        tokens this copy computes (source j's token t is row j * T + t), the index of each row's gate in the
        gathered gates ([ep * T, k] flattened) and the padding rows it computes at the expert."""
        m = self.sc.model
        tokens = self.seq // self.sc.layout.tp
        mine = own.local_experts
        rows: dict[int, list] = {e: [] for e in mine}
        gates: dict[int, list] = {e: [] for e in mine}
        for j, rr in enumerate(self._source_routings(r, mb, slots, own)):
            for e in mine:  # the kept rows this copy computes
                kept = kept_to(rr, self.ep_index, e)
                rows[e].append(j * tokens + kept // m.top_k)
                gates[e].append(j * tokens * m.top_k + kept)
        out = []
        for e, computed in zip(mine, own.expert_computed):
            idx = np.concatenate(rows[e]).astype(np.int64)
            out.append((e, torch.as_tensor(idx, device=self.device),
                        torch.as_tensor(np.concatenate(gates[e]).astype(np.int64), device=self.device),
                        max(0, computed - len(idx))))
        return out

    def _flex_rows(self, r, mb: int, slots: GroupSlots, own: RankRouting) -> tuple:
        """The flex dispatcher's routing as tensors: (FlexRouting, the token of each row sent, its gates' mask
        [rows sent, k] in the model's dtype, per local slot (expert, received rows, their gates' indices, padding
        rows))."""
        fr = flex_routing(self._source_routings(r, mb, slots, own), self.ep_index, self.sc.model.top_k)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=self.device)

        per_slot = [(e, tensor(idx), tensor(gidx), pad) for e, idx, gidx, pad in
                    zip(own.local_experts, fr.expert_rows, fr.expert_gates, fr.expert_padding)]
        return fr, tensor(fr.send_tokens), tensor(fr.send_choices).to(self.dtype), per_slot

    def _flex_block(self, tape: list, step: int, mb: int, layer: int, a: torch.Tensor, ready: dict):
        """Megatron's flex dispatcher (DeepEP) inside one node: each token goes once to each EP rank holding one of
        its kept choices, with its gates; that rank expands it into one row per local expert it chose, computes
        them (with the padding rows at the expert) and sums their outputs weighted by the gates; the sums come back
        one row per (token, rank) and are added into the tokens."""
        m, ep = self.sc.model, self.sc.layout.ep
        _, ids, *_ = ready[(layer, mb)]
        fr, send_tokens, mask, per_slot = ready[("flex", layer, mb)]
        group = self.groups.handles["ep"]
        exchange = all_to_all if ep > 1 else _local

        def route(a: torch.Tensor):
            n, gate, shared = self._gates(a, layer, ids)
            return n[send_tokens], gate[send_tokens] * mask, *shared  # a dropped or elsewhere-bound choice's gate: 0

        def dispatch(sent: torch.Tensor, gates: torch.Tensor):  # DeepEP sends the gates with the tokens
            return (exchange(sent, fr.recv_splits, fr.send_splits, group),
                    exchange(gates, fr.recv_splits, fr.send_splits, group))

        def unpermute(a: torch.Tensor, returned: torch.Tensor, *shared: torch.Tensor):
            y = a.index_add(0, send_tokens, returned)
            return y + shared[0] if shared else y

        me = self.ep_index
        sent_remote = sum(n for j, n in enumerate(fr.send_splits) if j != me)
        recv_remote = sum(n for j, n in enumerate(fr.recv_splits) if j != me)
        gate_bytes = m.top_k * self.elem_bytes  # a row's k gates travel beside it
        sent, gates, *shared = self._segment(tape, step, mb, OpKind.ROUTER, layer, route, a)
        received, received_gates = self._segment(
            tape, step, mb, OpKind.DISPATCH, layer, dispatch, sent, gates,
            nbytes=float(sent_remote * (self.row_bytes + gate_bytes)), rows=int(send_tokens.shape[0]),
            collective=True)
        computed = sum(int(idx.shape[0]) + pad for _, idx, _, pad in per_slot)
        out = self._segment(tape, step, mb, OpKind.EXPERT, layer, self._expert_outputs, received, layer, per_slot,
                            received_gates, rows=computed)
        returned = self._segment(tape, step, mb, OpKind.COMBINE, layer, exchange, out, fr.send_splits,
                                 fr.recv_splits, group, nbytes=float(recv_remote * self.row_bytes),
                                 rows=int(received.shape[0]), collective=True)
        return self._segment(tape, step, mb, OpKind.MEMORY_BOUND, layer, unpermute, a, returned, *shared)

    def _allgather_block(self, tape: list, step: int, mb: int, layer: int, a: torch.Tensor, ready: dict):
        """Megatron's allgather dispatcher: the EP group's tokens (normed) and gates gathered on every member, each
        computing its experts' rows of them, the outputs reduce-scattered back to their ranks."""
        ep, group = self.sc.layout.ep, self.groups.handles["ep"]
        _, ids, *_ = ready[(layer, mb)]
        per_expert = ready[("allgather", layer, mb)]

        def route(a: torch.Tensor):
            n, gate, shared = self._gates(a, layer, ids)
            return n, gate, *shared

        def gather(n: torch.Tensor, gate: torch.Tensor):
            if ep == 1:
                return n.view_as(n), gate.view_as(gate)
            return _SequenceGather.apply(n, group, ep), _SequenceGather.apply(gate, group, ep)

        def scatter(out: torch.Tensor):
            return _SequenceScatter.apply(out, group, ep) if ep > 1 else out.view_as(out)

        n, gate, *shared = self._segment(tape, step, mb, OpKind.ROUTER, layer, route, a)
        tokens = n.shape[0]
        n_all, gate_all = self._segment(tape, step, mb, OpKind.DISPATCH, layer, gather, n, gate,
                                        nbytes=float(tokens * (ep - 1) * self.row_bytes), rows=tokens * ep,
                                        collective=True)
        computed = sum(idx.shape[0] + pad for _, idx, _, pad in per_expert)
        out = self._segment(tape, step, mb, OpKind.EXPERT, layer, self._expert_outputs, n_all, layer, per_expert,
                            gate_all, rows=computed)
        mine = self._segment(tape, step, mb, OpKind.COMBINE, layer, scatter, out,
                             nbytes=float(tokens * (ep - 1) * self.row_bytes), rows=tokens * ep, collective=True)
        return self._segment(tape, step, mb, OpKind.MEMORY_BOUND, layer,
                             lambda a, mine, *shared: a + mine + shared[0] if shared else a + mine, a, mine, *shared)

    # ---- pipeline: virtual stage v = chunk * pp + stage (Megatron's interleaving; v = stage without it) ----
    def _virtual(self, chunk: int) -> int:
        return chunk * self.sc.layout.pp + self.stage

    def _rank_of_virtual(self, virtual: int) -> int:
        """This rank's peer (same place in its stage) on the stage holding virtual stage `virtual`."""
        return self.rank + (virtual % self.sc.layout.pp - self.stage) * self.sc.layout.ranks_per_stage

    def _tag(self, mb: int, virtual: int, phase: Phase) -> int:
        """The message of micro-batch mb into virtual stage `virtual` (forward) or out of it (backward): its own
        tag, so that a pair of ranks exchanging several chunks' messages matches each to its receive."""
        lay = self.sc.layout
        return 2 * (mb * lay.pp * lay.vpp + virtual) + (phase is Phase.BACKWARD)

    def _forward(self, tape: list, step: int, mb: int, ready: dict, chunk: int = 0) -> None:
        m, row_bytes = self.sc.model, self.row_bytes
        lay = self.sc.layout
        virtual, last_virtual = self._virtual(chunk), lay.pp * lay.vpp - 1
        tokens = ready[mb]
        inputs, targets = tokens[:-1][self.shard], tokens[1:][self.shard]  # sequence parallel: my 1/tp of them
        if virtual == 0:  # its own segment: the layer's ops below may read x twice (sequence parallel residual)
            x = self._segment(tape, step, mb, OpKind.MEMORY_BOUND, -1, torch.index_select, self.params["embed"], 0,
                              inputs)
        else:  # the previous virtual stage's output, as the leaf this chunk's backward ends at
            x = self._receive(step, mb, Phase.FORWARD, self._rank_of_virtual(virtual - 1),
                              self._tag(mb, virtual, Phase.FORWARD))
            self.stage_inputs[(mb, chunk)] = x
        for layer in self.sc.chunk_layers(self.stage, chunk):
            if self.sc.layout.tp == 1:
                a = self._segment(tape, step, mb, OpKind.ATTENTION, layer, self._attention, x, layer)
            else:
                a = self._tp_block(tape, step, mb, layer, OpKind.ATTENTION, x, f"{layer}.ln1", self._attention_core)
            if not m.is_moe_layer(layer):
                if self.sc.layout.tp == 1:
                    x = self._segment(tape, step, mb, OpKind.DENSE_FFN, layer, self._dense_ffn, a, layer)
                else:
                    x = self._tp_block(tape, step, mb, layer, OpKind.DENSE_FFN, a, f"{layer}.ln2",
                                       lambda n, layer: ffn(n, self.params, f"{layer}.dense"))
                continue
            if self.allgather:
                x = self._allgather_block(tape, step, mb, layer, a, ready)
                continue
            if self.flex:
                x = self._flex_block(tape, step, mb, layer, a, ready)
                continue
            rr, ids, slots, real, send_tokens, rows = ready[(layer, mb)]
            routed = self._segment(tape, step, mb, OpKind.ROUTER, layer, self._router, a, layer, rr, ids, send_tokens)
            sent, gate, *shared = routed
            me = self.ep_index
            remote = sum(n for j, n in enumerate(rr.send_splits) if j != me)
            exchange = all_to_all if self.sc.layout.ep > 1 else _local  # ep 1: the rows stay (a local permute)
            received = self._segment(tape, step, mb, OpKind.DISPATCH, layer, exchange, sent, rr.recv_splits,
                                     rr.send_splits, self.groups.handles["ep"], nbytes=float(remote * row_bytes),
                                     rows=int(slots.shape[0]), collective=True)
            if self.sc.layout.etp == 1:
                computed = self._segment(tape, step, mb, OpKind.EXPERT, layer, self._experts, received, layer, rr,
                                         rows, rows=int(received.shape[0]) + sum(rr.expert_padding))
            else:  # Megatron's alltoall dispatcher with ETP: all-gather in the ETP group, shards, reduce-scatter
                rmax, per_slot = ready[("etp", layer, mb)]
                etp, etp_bytes = self.sc.layout.etp, float((self.sc.layout.etp - 1) * rmax * row_bytes)
                gathered = self._segment(tape, step, mb, OpKind.DISPATCH, layer, self._etp_gather, received, rmax,
                                         nbytes=etp_bytes, rows=etp * rmax, collective=True, group="etp")
                # each local expert's shard on the ETP group's rows: partial outputs, summed by the reduce-scatter
                partial = self._segment(tape, step, mb, OpKind.EXPERT, layer, self._expert_outputs, gathered, layer,
                                        per_slot, rows=sum(int(idx.shape[0]) + pad for _, idx, _, pad in per_slot))
                computed = self._segment(tape, step, mb, OpKind.COMBINE, layer, self._etp_scatter, partial,
                                         int(received.shape[0]), nbytes=etp_bytes, rows=etp * rmax, collective=True,
                                         group="etp")
            back = sum(n for j, n in enumerate(rr.recv_splits) if j != me)
            returned = self._segment(tape, step, mb, OpKind.COMBINE, layer, exchange, computed, rr.send_splits,
                                     rr.recv_splits, self.groups.handles["ep"], nbytes=float(back * row_bytes),
                                     rows=int(received.shape[0]), collective=True)
            x = self._segment(tape, step, mb, OpKind.MEMORY_BOUND, layer, self._unpermute, a, returned, gate, slots,
                              real, *shared)
        if virtual < last_virtual:
            self.stage_outputs[(mb, chunk)] = x
            self._send(x.detach(), self._rank_of_virtual(virtual + 1), self._tag(mb, virtual + 1, Phase.FORWARD))
            return
        scale = 1.0 / (self.sc.num_micro_batches * self.sc.layout.tp)  # the TP ranks' shards: a mean of means
        self._segment(tape, step, mb, OpKind.LM_HEAD, -1, self._lm_head, x, targets, scale)

    def _tp_block(self, tape: list, step: int, mb: int, layer: int, op: OpKind, x: torch.Tensor, norm: str, core):
        """x + core(norm(x)) with sequence parallelism: norm on my tokens, all-gather, this rank's slice of the
        weights, reduce-scatter (each collective timed as tp_comm), then the residual on my tokens."""
        tp, group = self.sc.layout.tp, self.groups.handles["tp"]
        n = self._segment(tape, step, mb, op, layer, rms_norm, x, self.params[norm])
        full = self._segment(tape, step, mb, OpKind.TP_COMM, layer, _SequenceGather.apply, n, group, tp,
                             nbytes=float(n.shape[0] * (tp - 1) * self.row_bytes), collective=True)
        partial = self._segment(tape, step, mb, op, layer, core, full, layer)
        mine = self._segment(tape, step, mb, OpKind.TP_COMM, layer, _SequenceScatter.apply, partial, group, tp,
                             nbytes=float(n.shape[0] * (tp - 1) * self.row_bytes), collective=True)
        return self._segment(tape, step, mb, OpKind.MEMORY_BOUND, layer, torch.add, x, mine)

    def _attention_core(self, n: torch.Tensor, layer: int) -> torch.Tensor:
        return attention_core(n, self.params, layer, self.sc.model, self.seq, self.sc.layout.tp)

    def _receive(self, step: int, mb: int, phase: Phase, src: int, tag: int = 0) -> torch.Tensor:
        """A pipeline message: blocks until the peer stage's tensor is here, recorded as pp_wait (the simulator's
        op for a stage waiting on its neighbour: the wait and the transfer)."""
        rows = self.seq // self.sc.layout.tp  # a TP rank sends its sequence shard
        buf = torch.empty(rows, self.sc.model.hidden_size, device=self.device, dtype=self.dtype)
        t0 = self._now()
        dist.recv(buf, src, tag=tag)
        self.timeline.add(step, mb, -1, phase, OpKind.PP_WAIT, t0, self._now())
        return buf.requires_grad_(phase is Phase.FORWARD)

    def _send(self, t: torch.Tensor, dst: int, tag: int = 0) -> None:
        """Sends do not block (the simulator's too): the work is waited for at the end of the step."""
        t = t.contiguous()
        self.sends.append((t, dist.isend(t, dst, tag=tag)))

    def _tp_all_reduce(self, step: int) -> None:
        """Megatron's all-reduce over tp of the gradients of the weights every TP rank holds whole (summed)."""
        t0 = self._now()
        flat = self._flat_grads(self.tp_replicated)
        dist.all_reduce(flat, group=self.groups.handles["tp"])
        self._set_grads(self.tp_replicated, flat)
        self.timeline.add(step, -1, -1, Phase.STEP, OpKind.TP_COMM, t0, self._now(),
                          float(flat.numel() * flat.element_size()))

    def _timed(self, step: int, op: OpKind, fn, nbytes: float) -> None:
        t0 = self._now()
        fn()
        self.timeline.add(step, -1, -1, Phase.STEP, op, t0, self._now(), nbytes)

    def forward_backward(self, step: int, ready: dict | None = None) -> None:
        """The step's passes in Megatron's order; gradients accumulate over the micro-batches."""
        ready = ready if ready is not None else self._prepare(step)
        lay = self.sc.layout
        tapes: dict[tuple[int, int], list] = {}
        last_virtual = lay.pp * lay.vpp - 1
        for phase, mb, chunk in pipeline_schedule(self.stage, lay.pp, self.sc.num_micro_batches, lay.vpp):
            virtual = self._virtual(chunk)
            if phase is Phase.FORWARD:
                tape = tapes[(mb, chunk)] = []
                self._forward(tape, step, mb, ready, chunk)
                if virtual == last_virtual:  # a tensor until the passes end: no device synchronise per micro-batch
                    self.losses.append(tape[-1].outputs[0].detach())
                continue
            if virtual < last_virtual:  # the next virtual stage's gradient of this chunk's output starts it
                grad = self._receive(step, mb, Phase.BACKWARD, self._rank_of_virtual(virtual + 1),
                                     self._tag(mb, virtual, Phase.BACKWARD))
                self.stage_outputs.pop((mb, chunk)).grad = grad
            self._backward(tapes.pop((mb, chunk)), step, mb)
            if virtual > 0:
                x = self.stage_inputs.pop((mb, chunk))
                self._send(x.grad if x.grad is not None else torch.zeros_like(x), self._rank_of_virtual(virtual - 1),
                           self._tag(mb, virtual - 1, Phase.BACKWARD))
        self.losses = [float(loss) for loss in self.losses]  # the step's losses, read once the passes are done

    # ---- gradient buffers and the optimizer ----
    def _buffer(self, params: list[torch.Tensor], group: str, sharded: bool) -> GradBuffer:
        members = self.groups.members[group]
        return GradBuffer(params, self.groups.handles[group], len(members), members.index(self.rank), sharded,
                          self.device, self.dtype)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over what this rank updates, fused (one pass over parameters, gradients and moments: Megatron's
        FusedAdam, and the single pass the simulator's optimizer cost assumes)."""
        return torch.optim.Adam(self.dense_buffer.optimizer_params() + self.expert_buffer.optimizer_params(),
                                lr=1e-4, fused=True)

    def _owned_all(self, step: int, layer: int) -> np.ndarray:
        """[ep, E] which EP rank owns which expert (persistently) in `step`."""
        slots, E = self.slots[(step, layer)], self.sc.model.num_experts
        out = np.zeros((self.sc.layout.ep, E), bool)
        for e in range(E):
            out[slots.owners(e), e] = True
        return out

    # ---- placement: migrations, shadows, replicas (moesim.placement; the simulator's placement ops) ----
    def _owned(self, step: int, layer: int, ep_rank: int | None = None) -> list[int]:
        """The experts an EP rank (default: this one) holds persistently in `step`, in slot order."""
        slots, g = self.slots[(step, layer)], self.ep_index if ep_rank is None else ep_rank
        return [e for e, shadow in zip(slots.experts[g], slots.shadow[g]) if not shadow]

    def _global(self, ep_ranks: list[int]) -> tuple[int, ...]:
        members = self.groups.members["ep"]
        return tuple(sorted(members[g] for g in ep_ranks))

    def _expert_tensors(self, layer: int, expert: int) -> list[torch.Tensor]:
        return [self.params[f"{layer}.expert{expert}.{name}"] for name in EXPERT_WEIGHTS]

    def _flat_grads(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([(t.grad if t.grad is not None else torch.zeros_like(t)).reshape(-1) for t in tensors])

    def _set_grads(self, tensors: list[torch.Tensor], flat: torch.Tensor) -> None:
        """In place where a gradient exists: a parameter's gradient is a view of its gradient buffer."""
        for t, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
            if t.grad is None:
                t.grad = piece.view_as(t).clone()
            else:
                t.grad.copy_(piece.view_as(t))

    def place(self, step: int) -> None:
        """Bring this rank's experts to the step's placement before its passes: move the experts that changed
        rank since the last step (weights and Adam state, from their first old owner; op migration), then
        broadcast each shadowed expert's weights from its first owner to its shadows (op shadow)."""
        if 0 <= self.placed_step != step:
            self._migrate(step)
        self.placed_step = step
        self.shadowed.clear()
        if not any(self.slots[(step, layer)].shadow_any for layer in self.moe_layers):
            return
        t0 = self._now()
        for layer in self.moe_layers:
            slots = self.slots[(step, layer)]
            if not slots.shadow_any:
                continue
            for e in range(self.sc.model.num_experts):  # the same order on every rank: a total order of broadcasts
                shadows = slots.shadows(e)
                members = self._global(slots.owners(e)[:1] + shadows)
                if not shadows or self.rank not in members:
                    continue
                owner = self.groups.members["ep"][slots.owners(e)[0]]
                if self.rank == owner:
                    flat = torch.cat([t.detach().reshape(-1) for t in self._expert_tensors(layer, e)])
                else:
                    flat = torch.empty(self._expert_numel(), device=self.device, dtype=self.dtype)
                dist.broadcast(flat, owner, group=self.copy_groups[members])
                if self.rank != owner:
                    self._unflatten_expert(layer, e, flat)
                self.shadowed[(layer, e)] = owner
        # every rank of the stage records it (the records' ops are the same on each)
        self.timeline.add(step, -1, -1, Phase.STEP, OpKind.SHADOW, t0, self._now(),
                          float(len(self.shadowed) * self._expert_numel() * self.elem_bytes))

    def _expert_numel(self) -> int:
        return 3 * self.sc.model.hidden_size * self.expert_f

    def _unflatten_expert(self, layer: int, expert: int, flat: torch.Tensor) -> list[torch.Tensor]:
        h, f = self.sc.model.hidden_size, self.expert_f
        cuts = expert_shards(self.sc.model.expert_ffn_size, (self.etp_rank, self.sc.layout.etp))
        tensors = []
        for name, piece in zip(EXPERT_WEIGHTS, flat.split(h * f)):
            t = piece.view((f, h) if name == "w_down" else (h, f)).clone().requires_grad_(True)
            self.params[f"{layer}.expert{expert}.{name}"] = t
            if self.sc.layout.etp > 1:
                self.params["shards"][f"{layer}.expert{expert}.{name}"] = cuts[name]
            tensors.append(t)
        return tensors

    def _migrate(self, step: int) -> None:
        """Persistent experts that changed rank between the last step's placement and this one's: each new owner
        receives the weights and Adam state from the expert's first old owner (point to point); experts a rank
        no longer owns are dropped; the optimizer then holds this rank's owned experts."""
        moves, changed = [], False
        members = self.groups.members["ep"]
        for layer in self.moe_layers:
            old, new = self.slots[(self.placed_step, layer)], self.slots[(step, layer)]
            if old is new:
                continue
            for g in range(self.sc.layout.ep):
                before, after = self._owned(self.placed_step, layer, g), self._owned(step, layer, g)
                changed |= set(before) != set(after)  # a new slot order alone moves nothing
                moves += [(layer, e, members[old.owners(e)[0]], members[g]) for e in after if e not in before]
        if not changed:  # the same on every rank of the stage: the placements are the stage's
            return
        t0 = self._now()
        stateful = self.optimizer_steps > 0  # Adam's state exists (for every parameter: sync fills the grads)
        works, received = [], []
        for tag, (layer, e, src, dst) in enumerate(moves):
            if self.rank == src:
                tensors = self._expert_tensors(layer, e)
                parts = [t.detach().reshape(-1) for t in tensors]
                if stateful:
                    parts += [self.optimizer.state[t][key].reshape(-1) for key in ("exp_avg", "exp_avg_sq")
                              for t in tensors]
                flat = torch.cat(parts)
                works.append((flat, dist.isend(flat, dst, tag=tag)))
            elif self.rank == dst:
                flat = torch.empty(self._expert_numel() * (3 if stateful else 1), device=self.device,
                                   dtype=self.dtype)
                works.append((flat, dist.irecv(flat, src, tag=tag)))
                received.append((layer, e, flat))
        for _, work in works:
            work.wait()
        step_count = next((s["step"] for s in self.optimizer.state.values() if "step" in s), None)
        new_state: dict[int, dict] = {}
        for layer, e, flat in received:
            n = self._expert_numel()
            tensors = self._unflatten_expert(layer, e, flat[:n])
            if stateful:
                avg, avg_sq = flat[n:2 * n].split([t.numel() for t in tensors]), flat[2 * n:].split(
                    [t.numel() for t in tensors])
                for t, a, a2 in zip(tensors, avg, avg_sq):
                    new_state[id(t)] = {"step": step_count.clone(), "exp_avg": a.view_as(t).clone(),
                                        "exp_avg_sq": a2.view_as(t).clone()}
        for layer in self.moe_layers:
            gone = set(self.held[layer]) - set(self._owned(step, layer))
            for e in gone:
                for name in EXPERT_WEIGHTS:
                    del self.params[f"{layer}.expert{e}.{name}"]
            self.held[layer] = self._owned(step, layer)
        self.expert = [t for layer in self.moe_layers for e in self.held[layer]
                       for t in self._expert_tensors(layer, e)]
        self.expert_buffer = self._buffer(self.expert, "edp", False)  # migrating experts are not sharded
        old = self.optimizer
        self.optimizer = self._make_optimizer()
        for t in self.dense_buffer.optimizer_params() + self.expert:
            state = old.state[t] if t in old.state else new_state.get(id(t))
            if state:
                self.optimizer.state[t] = state
        self.timeline.add(step, -1, -1, Phase.STEP, OpKind.MIGRATION, t0, self._now(),
                          float(sum(flat.numel() * flat.element_size() for flat, _ in works)))

    def _reduce_shadows(self, step: int) -> None:
        """The shadows' gradients summed into their owner's (op shadow); the shadow copies are dropped."""
        if not any(self.slots[(step, layer)].shadow_any for layer in self.moe_layers):
            return
        t0 = self._now()
        for (layer, e), owner in sorted(self.shadowed.items()):  # the broadcasts' order
            tensors = self._expert_tensors(layer, e)
            flat = self._flat_grads(tensors)
            slots = self.slots[(step, layer)]
            dist.reduce(flat, owner, group=self.copy_groups[self._global(slots.owners(e)[:1] + slots.shadows(e))])
            if self.rank == owner:
                self._set_grads(tensors, flat)
            else:
                for name in EXPERT_WEIGHTS:
                    del self.params[f"{layer}.expert{e}.{name}"]
        self.timeline.add(step, -1, -1, Phase.STEP, OpKind.SHADOW, t0, self._now(),
                          float(len(self.shadowed) * self._expert_numel() * self.elem_bytes))
        self.shadowed.clear()

    def _sync_replicas(self, step: int) -> None:
        """Each replicated expert's gradients summed over its owners (op replica_sync), per layer and owner set."""
        sets: dict[tuple, list[int]] = {}
        stage_has_replicas = False
        for layer in self.moe_layers:
            slots = self.slots[(step, layer)]
            for e in range(self.sc.model.num_experts):
                owners = slots.owners(e)
                stage_has_replicas |= len(owners) > 1
                if len(owners) > 1 and self.ep_index in owners:
                    sets.setdefault((layer, self._global(owners)), []).append(e)
        if not stage_has_replicas:
            return
        t0, nbytes = self._now(), 0.0
        for (layer, members), experts in sorted(sets.items()):  # one total order on every rank
            tensors = [t for e in experts for t in self._expert_tensors(layer, e)]
            flat = self._flat_grads(tensors)
            dist.all_reduce(flat, group=self.copy_groups[members])
            self._set_grads(tensors, flat)
            nbytes += flat.numel() * flat.element_size()
        self.timeline.add(step, -1, -1, Phase.STEP, OpKind.REPLICA_SYNC, t0, self._now(), nbytes)

    def sync_gradients(self, step: int) -> None:
        for _, work in self.sends:  # every pipeline send has been received before the step ends
            work.wait()
        self.sends.clear()
        self._reduce_shadows(step)
        self._sync_replicas(step)
        if self.tp_replicated:  # Megatron's all-reduce of sequence-parallel (replicated) weights' gradients
            self._tp_all_reduce(step)
        # the distributed optimizer reduce-scatters here and all-gathers after its step (in step())
        self._timed(step, OpKind.DP_SYNC_DENSE, self.dense_buffer.reduce, self.dense_buffer.nbytes)
        self._timed(step, OpKind.DP_SYNC_EXPERT, self.expert_buffer.reduce, self.expert_buffer.nbytes)

    def step(self, step: int) -> None:
        ready = self._prepare(step)
        dist.barrier()
        self._start_clock()
        self.place(step)
        self.forward_backward(step, ready)
        self.sync_gradients(step)
        self._timed(step, OpKind.OPTIMIZER, self.optimizer.step, 0.0)
        self.optimizer_steps += 1
        for buffer, op in ((self.dense_buffer, OpKind.DP_SYNC_DENSE), (self.expert_buffer, OpKind.DP_SYNC_EXPERT)):
            if buffer.sharded:
                self._timed(step, op, buffer.gather, buffer.nbytes)
            buffer.zero()
        self._stop_clock()
