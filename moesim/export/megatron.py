"""A resolved Scenario -> the Megatron-LM launch command that trains it (`megatron_args.txt`) and a DeepSpeed MoE
configuration snippet (`deepspeed_moe.json`).

megatron_args.txt is a shell command, one flag per line: `torchrun --nnodes N --nproc-per-node G pretrain_gpt.py
\\` followed by the parallel sizes, model shape, MoE, batch, precision, recomputation and overlap flags the
simulation assumed, under header comments. Every flag name is in moesim.export.megatron_flags (with the Megatron-LM
commit it was read from). What the scenario holds that Megatron-LM cannot say (the routing skew, a placement policy,
a gate Megatron-LM has no flag for), and combinations Megatron-LM's argument checks refuse although moesim simulates
them, are `# not expressible: ...` comment lines, never dropped silently. `moesim import megatron` reads the file
back into the same model, layout, training, gate and comm sections.

deepspeed_moe.json holds the ds_config keys and the keyword arguments of deepspeed.moe.layer.MoE that correspond
(deepspeedai/DeepSpeed edaa722, ../shared/specs/interfaces.md §3), with `not_expressible` and `notes` lists (JSON
has no comments).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from moesim import __version__
from moesim.io.megatron_args import megatron_refusals
from moesim.io.results import write_json_atomic, write_text_atomic
from moesim.spec.comm import TokenDispatcher
from moesim.spec.dtype import Dtype
from moesim.spec.model import Activation, MoeModelSpec
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.routing import CapacityScope, DropPolicy, GateKind, RoutingDistribution
from moesim.spec.scenario import Scenario
from moesim.spec.training import Recompute

MEGATRON_ARGS_FILE = "megatron_args.txt"
DEEPSPEED_FILE = "deepspeed_moe.json"
NOT_EXPRESSIBLE = "not expressible: "
_DEEPSPEED_SOURCE = "deepspeedai/DeepSpeed edaa722 (2026-08-22): deepspeed/moe/layer.py, deepspeed/runtime/config.py " \
                    "(../shared/specs/interfaces.md §3)"


@dataclass(frozen=True)
class MegatronCommand:
    env: tuple[str, ...]  # NAME=value settings before the launcher
    launcher: tuple[str, ...]  # torchrun ... pretrain_gpt.py
    args: tuple[tuple[str, tuple[str, ...]], ...]  # (flag, values), in order
    notes: tuple[str, ...]  # header comment lines
    not_expressible: tuple[str, ...]  # what the flags cannot say, one line each

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(flag for flag, _ in self.args)

    def text(self) -> str:
        comments = [f"# {n}" for n in self.notes] + [f"# {NOT_EXPRESSIBLE}{g}" for g in self.not_expressible]
        lines = [" ".join([*self.env, *self.launcher])]
        lines += ["    " + " ".join([flag, *(shlex.quote(v) for v in values)]) for flag, values in self.args]
        return "\n".join(comments + [" \\\n".join(lines)]) + "\n"


@dataclass
class _Out:
    args: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    gaps: list = field(default_factory=list)

    def add(self, flag: str, *values: object) -> None:
        self.args.append((flag, tuple(str(v) for v in values)))


def megatron_command(sc: Scenario) -> MegatronCommand:
    out = _Out()
    _parallel(sc, out)
    _model(sc, out)
    _moe(sc, out)
    _training(sc, out)
    _comm(sc, out)
    out.gaps += _moesim_only(sc) + [f"{line}; the flags above say what moesim simulated"
                                    for line in megatron_refusals(sc)]
    lay, node = sc.layout, sc.cluster.profile.node
    env = ("CUDA_DEVICE_MAX_CONNECTIONS=1",) if (lay.tp > 1 or lay.cp > 1) and not sc.comm.moe_a2a_overlap else ()
    launcher = ("torchrun", "--nnodes", str(sc.cluster.nodes), "--nproc-per-node", str(node.gpus_per_node),
                "pretrain_gpt.py")
    return MegatronCommand(env, launcher, tuple(out.args), tuple(_header(sc) + out.notes), tuple(out.gaps))


def _header(sc: Scenario) -> list[str]:
    lay, nodes, gpn = sc.layout, sc.cluster.nodes, sc.cluster.profile.node.gpus_per_node
    return [f"Megatron-LM launch of moesim scenario {sc.name!r} (moesim {__version__}): the layout, model, MoE, "
            "batch, precision and overlap settings it simulated.",
            "Flag names: Megatron-LM d98e8a6, and arguments.py @ 000c4ac for the precision, position and window "
            "flags (moesim/export/megatron_flags.py lists each flag's source).",
            f"cluster: {nodes} x {sc.cluster.profile.name} nodes of {gpn} GPUs = {lay.world_size} GPUs; data "
            f"parallel = {lay.world_size} / (tp {lay.tp} x cp {lay.cp} x pp {lay.pp}) = {lay.dp}; expert data "
            f"parallel = tp x cp x dp / (ep {lay.ep} x etp {lay.etp}) = {lay.edp}.",
            "Add torchrun's --node-rank and --master-addr/--master-port (or --rdzv-*) on each node, and your data "
            "(--data-path or --mock-data), tokenizer, learning-rate schedule, --train-iters and logging flags.",
            "Read back: moesim import megatron megatron_args.txt --out SCENARIO.yaml "
            f"--profile {sc.cluster.profile.name}"]


def _parallel(sc: Scenario, out: _Out) -> None:
    lay = sc.layout
    for flag, value in (("--tensor-model-parallel-size", lay.tp), ("--pipeline-model-parallel-size", lay.pp),
                        ("--context-parallel-size", lay.cp), ("--expert-model-parallel-size", lay.ep),
                        ("--expert-tensor-parallel-size", lay.etp)):
        out.add(flag, value)
    if lay.tp > 1:
        out.add("--sequence-parallel")  # moesim simulates sequence parallelism whenever tp > 1
    if lay.vpp > 1:
        out.add("--num-virtual-stages-per-pipeline-rank", lay.vpp)
    if lay.first_stage_layers is not None:
        out.add("--decoder-first-pipeline-num-layers", lay.first_stage_layers)
    if lay.last_stage_layers is not None:
        out.add("--decoder-last-pipeline-num-layers", lay.last_stage_layers)
    if lay.order.value == "tp-cp-ep-pp-dp":
        out.add("--use-tp-pp-dp-mapping")


def _model(sc: Scenario, out: _Out) -> None:
    m = sc.model
    out.add("--num-layers", m.num_layers)
    out.add("--hidden-size", m.hidden_size)
    out.add("--num-attention-heads", m.num_attention_heads)
    if m.is_mla:
        out.add("--multi-latent-attention")
        if m.q_lora_rank is not None:
            out.add("--q-lora-rank", m.q_lora_rank)
        for flag, value in (("--kv-lora-rank", m.kv_lora_rank), ("--qk-head-dim", m.qk_nope_head_dim),
                            ("--qk-pos-emb-head-dim", m.qk_rope_head_dim), ("--v-head-dim", m.v_head_dim)):
            out.add(flag, value)
    else:
        if m.num_kv_heads < m.num_attention_heads:
            out.add("--group-query-attention")
            out.add("--num-query-groups", m.num_kv_heads)
        out.add("--kv-channels", m.head_dim)
    out.add("--ffn-hidden-size", m.dense_ffn_size or m.expert_ffn_size)
    if m.activation is Activation.SWIGLU:
        out.add("--swiglu")
    elif m.activation is Activation.GEGLU:
        out.add("--quick-geglu")
        out.notes.append("model.activation geglu is written as --quick-geglu, Megatron-LM's gated GELU (a sigmoid "
                         "approximation of GELU: the same three matrices, so the same cost in moesim)")
    out.add("--normalization", "RMSNorm")
    out.add("--position-embedding-type", "rope")
    out.add("--max-position-embeddings", sc.training.seq_len)
    _vocab(sc, out)
    if not m.tie_word_embeddings:
        out.add("--untie-embeddings-and-output-weights")
    out.add("--disable-bias-linear")
    if m.sliding_window is not None:
        out.add("--window-size", f"{m.sliding_window - 1},0")
        if m.full_attention_every is not None:
            out.add("--window-attn-skip-freq", m.full_attention_every)
    if m.attention_sinks:
        out.add("--softmax-type", "learnable")
    if m.num_mtp_layers:
        out.add("--mtp-num-layers", m.num_mtp_layers)


def _vocab(sc: Scenario, out: _Out) -> None:
    """--vocab-size, and --make-vocab-size-divisible-by so that Megatron-LM's padding (to a multiple of it x tp)
    leaves it as it is."""
    vocab, tp = sc.model.vocab_size, sc.layout.tp
    out.add("--vocab-size", vocab)
    out.notes.append(f"--vocab-size {vocab}: the vocabulary moesim simulated (a real tokenizer brings its own size)")
    if vocab % tp:
        out.add("--make-vocab-size-divisible-by", 1)
        out.gaps.append(f"model.vocab_size {vocab} is not a multiple of tp {tp}: Megatron-LM pads the vocabulary to "
                        f"{-(-vocab // tp) * tp}")
        return
    divisor = max(d for d in range(1, 129) if (vocab // tp) % d == 0)
    if divisor != 128:
        out.add("--make-vocab-size-divisible-by", divisor)


def moe_layer_freq(m: MoeModelSpec) -> str:
    """--moe-layer-freq: an integer N (layer i is MoE when i % N == 0) without leading dense layers, else a list
    expression Megatron-LM evaluates (its _eval_pattern allows only digits , [ ] ( ) + *)."""
    k, every = m.first_k_dense, m.moe_every
    if k == 0:
        return str(every)
    rest = m.num_layers - k
    if every == 1:
        return f"([0]*{k}+[1]*{rest})"
    whole, left = divmod(rest, every)
    parts = [f"[0]*{k}", f"([1]+[0]*{every - 1})*{whole}"]
    if left:
        parts.append("[1]" if left == 1 else f"[1]+[0]*{left - 1}")
    return "(" + "+".join(parts) + ")"


def _moe(sc: Scenario, out: _Out) -> None:
    m, gate, tr = sc.model, sc.gate, sc.training
    out.add("--num-experts", m.num_experts)
    out.add("--moe-router-topk", m.top_k)
    out.add("--moe-ffn-hidden-size", m.expert_ffn_size)
    if m.num_shared_experts:
        out.add("--moe-shared-expert-intermediate-size", m.num_shared_experts * m.expert_ffn_size)
    out.add("--moe-layer-freq", moe_layer_freq(m))
    if tr.dtype in (Dtype.BF16, Dtype.FP8):
        out.add("--moe-grouped-gemm")
    else:
        out.gaps.append(f"moesim times each layer's experts as one grouped GEMM; Megatron-LM allows "
                        f"--moe-grouped-gemm only with --bf16, not with {tr.dtype.value} weights")
    out.add("--moe-token-dispatcher-type", sc.comm.dispatcher.value)
    if sc.comm.dispatcher is TokenDispatcher.FLEX:
        out.add("--moe-flex-dispatcher-backend", "deepep")
    cf = gate.capacity_factor
    if cf is not None and cf > 0:
        out.add("--moe-expert-capacity-factor", repr(cf))
        if gate.pad_to_capacity:
            out.add("--moe-pad-expert-input-to-capacity")
    elif cf is not None:
        out.gaps.append(f"gate.capacity_factor {cf} (adaptive capacity, Tutel){' with padding' * gate.pad_to_capacity}"
                        ": Megatron-LM's capacity factor is a number > 0 (none written: dropless)")
    out.add("--moe-token-drop-policy", gate.drop_policy.value)
    _load_balancing(sc, out)


def _load_balancing(sc: Scenario, out: _Out) -> None:
    """No balancing for the collapsed-router preset; else an auxiliary loss at Megatron-LM's suggested starting
    coefficient (its default, 0.0, balances nothing), standing for the balanced router the routing assumes."""
    if sc.routing.preset == "no-aux-collapse":
        out.add("--moe-router-load-balancing-type", "none")
        return
    out.add("--moe-router-load-balancing-type", "aux_loss")
    out.add("--moe-aux-loss-coeff", "0.01")
    out.notes.append("--moe-aux-loss-coeff 0.01: Megatron-LM's suggested starting value (its help text; the default "
                     "0.0 balances nothing), for the balanced router moesim's routing assumes; use your own")


def _training(sc: Scenario, out: _Out) -> None:
    tr = sc.training
    out.add("--micro-batch-size", tr.micro_batch_size)
    out.add("--global-batch-size", tr.global_batch_size)
    out.add("--seq-length", tr.seq_len)
    if tr.dtype in (Dtype.BF16, Dtype.FP8):
        out.add("--bf16")
    elif tr.dtype is Dtype.FP16:
        out.add("--fp16")
    if tr.dtype is Dtype.FP8:
        out.add("--fp8-format", "hybrid")
        out.add("--fp8-recipe", tr.fp8_recipe.value)
        out.notes.append("--fp8-format hybrid (E4M3 forward, E5M2 gradients): moesim's costs do not depend on the "
                         "format, only on the recipe")
    _gradients(sc, out)
    if tr.recompute is Recompute.FULL:
        out.add("--recompute-granularity", "full")
        out.add("--recompute-method", "uniform")
        out.add("--recompute-num-layers", 1)
    elif tr.recompute is Recompute.SELECTIVE and not tr.recompute_modules:
        out.gaps.append("training.recompute selective with no modules recomputes nothing: Megatron-LM's "
                        "--recompute-modules takes at least one, so no recompute flag is written")
    elif tr.recompute is Recompute.SELECTIVE:
        out.add("--recompute-granularity", "selective")
        out.add("--recompute-modules", *(module.value for module in tr.recompute_modules))
    if tr.optimizer.distributed:
        out.add("--use-distributed-optimizer")


def _gradients(sc: Scenario, out: _Out) -> None:
    """Megatron-LM (validate_args @ 000c4ac): bf16 weights reduce gradients in fp32 unless --grad-reduce-in-bf16;
    fp16 weights in fp16 unless --accumulate-allreduce-grads-in-fp32. Adam keeps 12 bytes per parameter (fp32 main
    weights and two moments), 8 when the weights are fp32 already."""
    tr = sc.training
    dtype, grad = tr.dtype, tr.grad_dtype
    natural = Dtype.FP16 if dtype is Dtype.FP16 else Dtype.FP32
    if grad is not natural:
        if dtype in (Dtype.BF16, Dtype.FP8) and grad is Dtype.BF16:
            out.add("--grad-reduce-in-bf16")
        elif dtype is Dtype.FP16 and grad is Dtype.FP32:
            out.add("--accumulate-allreduce-grads-in-fp32")
        else:
            out.gaps.append(f"training.grad_dtype {grad.value} with dtype {dtype.value}: Megatron-LM reduces "
                            f"gradients in {natural.value} there")
    state, wanted = (8.0 if dtype is Dtype.FP32 else 12.0), tr.optimizer.state_bytes_per_param
    dtypes = _precision_aware(wanted) if dtype is not Dtype.FP32 else None
    if wanted != state and dtypes is not None:
        out.add("--use-precision-aware-optimizer")
        for flag, value in zip(("--main-params-dtype", "--exp-avg-dtype", "--exp-avg-sq-dtype"), dtypes):
            out.add(flag, value)
    elif wanted != state:
        out.gaps.append(f"training.optimizer.state_bytes_per_param {wanted:g}: Megatron-LM's Adam keeps {state:g} "
                        f"bytes per parameter with {dtype.value} weights, and no mix of the precision-aware "
                        "optimizer's dtypes makes this")


def _precision_aware(state_bytes: float) -> tuple[str, str, str] | None:
    """(main weights, first moment, second moment) dtypes of Megatron-LM's precision-aware optimizer (arguments.py
    @ 000c4ac: --main-params-dtype fp32|fp16, --exp-avg-dtype / --exp-avg-sq-dtype fp32|fp16|bf16|fp8) whose bytes
    sum to `state_bytes`: fp32 main weights and equal moments first, bf16 before fp16."""
    size = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
    moments = ("fp32", "bf16", "fp16", "fp8")
    options = [(main, avg, sq) for main in ("fp32", "fp16") for avg in moments for sq in moments]
    options.sort(key=lambda o: (o[0] != "fp32", o[1] != o[2]))
    return next((o for o in options if sum(size[d] for d in o) == state_bytes), None)


def _comm(sc: Scenario, out: _Out) -> None:
    comm = sc.comm
    for on, flags in ((comm.overlap_grad_reduce, ("--overlap-grad-reduce",)),
                      (comm.overlap_param_gather, ("--overlap-param-gather",)),
                      (comm.tp_comm_overlap, ("--tp-comm-overlap",)),
                      (comm.moe_a2a_overlap, ("--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute")),
                      (comm.shared_expert_overlap, ("--moe-shared-expert-overlap",))):
        for flag in flags if on else ():
            out.add(flag)


def _routing_text(sc: Scenario) -> str:
    rt = sc.routing
    if rt.distribution is RoutingDistribution.TRACE or rt.per_layer:
        return f"routing from {rt.trace_ref or 'a trace'}"
    family, param = rt.layer_skew(0)
    named = {RoutingDistribution.ZIPF: f"zipf s = {param:g}", RoutingDistribution.DIRICHLET: f"dirichlet alpha = "
             f"{param:g}", RoutingDistribution.LOGNORMAL: f"lognormal sigma = {param:g}",
             RoutingDistribution.HOT_SET: f"hot_set of {rt.hot_experts} experts with {rt.hot_fraction:g} of the "
             "assignments"}.get(family, family.value)
    return f"routing {named}" + (f" (preset {rt.preset})" if rt.preset else "")


def _moesim_only(sc: Scenario) -> list[str]:
    gate, placement = sc.gate, sc.placement
    gaps = [f"{_routing_text(sc)} is the skew moesim assumed; Megatron-LM's router learns its own "
            "(--moe-router-force-load-balancing forces balanced routing, for benchmarks only)"]
    if placement.policy is not PlacementPolicyKind.STATIC or placement.slots_per_gpu is not None:
        gaps.append(f"placement.policy {placement.policy.value}"
                    f"{'' if placement.slots_per_gpu is None else f', slots_per_gpu {placement.slots_per_gpu}'}: "
                    "Megatron-LM places experts statically, num_experts / ep contiguous experts per EP rank")
    for bad, text in ((gate.kind is GateKind.EXPERT_CHOICE, "gate.kind expert_choice: Megatron-LM's router is "
                       "token choice"),
                      (gate.scope is CapacityScope.GLOBAL, "gate.scope global: Megatron-LM counts capacity per "
                       "source rank"),
                      (gate.min_capacity > 0, f"gate.min_capacity {gate.min_capacity}: Megatron-LM has no capacity "
                       "floor"),
                      (gate.first_choice_priority, "gate.first_choice_priority: Megatron-LM's position policy "
                       "drops by position only"),
                      (sc.training.fp8_dispatch, "training.fp8_dispatch: Megatron-LM has no flag for fp8 dispatch "
                       "rows")):
        if bad:
            gaps.append(text)
    gaps.append("simulation (steps, seeds, record detail) and network (how collectives are timed) are simulator "
                "settings, not training flags")
    return gaps


# ------------------------------------------------------------------------------------------------ DeepSpeed

def deepspeed_moe_config(sc: Scenario) -> dict:
    """ds_config keys and deepspeed.moe.layer.MoE keyword arguments for the scenario, with what they cannot say."""
    lay, tr, m, gate = sc.layout, sc.training, sc.model, sc.gate
    cf = gate.capacity_factor
    ds_config = {"train_batch_size": tr.global_batch_size, "train_micro_batch_size_per_gpu": tr.micro_batch_size,
                 "gradient_accumulation_steps": sc.num_micro_batches,
                 "bf16": {"enabled": tr.dtype in (Dtype.BF16, Dtype.FP8)},
                 "zero_optimization": {"stage": 1 if tr.optimizer.distributed else 0}}
    moe_layer = {"hidden_size": m.hidden_size, "num_experts": m.num_experts, "ep_size": lay.ep, "k": m.top_k,
                 "capacity_factor": cf if cf is not None and cf > 0 else 1.0,
                 "eval_capacity_factor": cf if cf is not None and cf > 0 else 1.0,
                 "min_capacity": gate.min_capacity, "drop_tokens": cf is not None, "use_residual": False,
                 "noisy_gate_policy": None, "use_rts": False,
                 "enable_expert_tensor_parallelism": lay.etp > 1, "top2_2nd_expert_sampling": False}
    notes = [f"expert: your MLP module, {m.hidden_size} -> {m.expert_ffn_size} ({m.activation.value}); DeepSpeed "
             "takes the expert as a module, not as sizes",
             f"train_batch_size = micro batch x gradient_accumulation_steps x data parallel ({lay.dp}); ZeRO needs "
             "the MoE parameter groups "
             "(split_params_into_different_moe_groups_for_optimizer); the native MoE layer is refused at stage 3",
             "use_rts, noisy_gate_policy and top2_2nd_expert_sampling off: moesim's gate adds no noise"]
    if cf is None:
        notes.append("drop_tokens false (dropless): capacity_factor is unused")
    return {"comment": f"DeepSpeed MoE settings of moesim scenario {sc.name!r} (moesim {__version__}): ds_config "
                       "holds ds_config keys; moe_layer the keyword arguments of deepspeed.moe.layer.MoE(hidden_size, "
                       "expert, ...)",
            "source": _DEEPSPEED_SOURCE, "ds_config": ds_config, "moe_layer": moe_layer, "notes": notes,
            "not_expressible": _deepspeed_gaps(sc)}


def _deepspeed_gaps(sc: Scenario) -> list[str]:
    lay, tr, m, gate, comm = sc.layout, sc.training, sc.model, sc.gate, sc.comm
    cf = gate.capacity_factor
    checks = (
        (tr.dtype in (Dtype.FP16, Dtype.FP8), f"dtype {tr.dtype.value}: the ds_config keys read hold bf16 only"),
        (lay.tp > 1 or lay.pp > 1 or lay.cp > 1 or lay.vpp > 1,
         f"tp {lay.tp}, pp {lay.pp}, cp {lay.cp}, vpp {lay.vpp}: set by the training code (mpu, deepspeed.pipe), "
         "not by ds_config; DeepSpeed has no context parallelism or virtual pipeline stages"),
        (lay.etp not in (1, lay.tp), f"etp {lay.etp}: DeepSpeed splits experts over the whole tensor-parallel group "
         "or not at all"),
        (lay.etp > 1 and lay.dp % lay.ep != 0, f"ep {lay.ep} with expert tensor parallelism: DeepSpeed needs data "
         f"parallel ({lay.dp}) divisible by ep_size"),
        (m.num_shared_experts > 0, f"{m.num_shared_experts} shared experts: DeepSpeed's MoE layer has none "
         "(use_residual is another design: a dense MLP mixed in by a learned coefficient)"),
        (cf is not None and cf <= 0, f"gate.capacity_factor {cf} (adaptive): DeepSpeed's is a number > 0"),
        (cf is None or not gate.pad_to_capacity, "unpadded expert inputs: DeepSpeed's dispatch always pads every "
         "expert to the capacity (with drop_tokens false, to the busiest expert's load)"),
        (cf is not None and m.top_k == 1 and gate.drop_policy is DropPolicy.PROBS, "drop_policy probs: DeepSpeed's "
         "top-1 gate drops by position (use_rts false) or at random (use_rts true)"),
        (cf is not None and m.top_k == 2 and not (gate.drop_policy is DropPolicy.POSITION
                                                  and gate.first_choice_priority),
         "drop order: DeepSpeed's top-2 gate drops by position with first choices first (drop_policy position, "
         "first_choice_priority true)"),
        (cf is not None and m.top_k > 2, "drop order with k > 2: DeepSpeed's top-k gate's order was not checked"),
        (gate.kind is GateKind.EXPERT_CHOICE or gate.scope is CapacityScope.GLOBAL,
         f"gate kind {gate.kind.value}, scope {gate.scope.value}: DeepSpeed's gate is token choice with capacity per "
         "source rank"),
        (comm.dispatcher is not TokenDispatcher.ALLTOALL, f"dispatcher {comm.dispatcher.value}: DeepSpeed "
         "dispatches with all-to-all"),
        (comm.overlap_grad_reduce or comm.overlap_param_gather or comm.tp_comm_overlap or comm.moe_a2a_overlap
         or comm.shared_expert_overlap, "communication overlap flags: not among the ds_config keys read"),
        (tr.recompute is not Recompute.NONE, f"recompute {tr.recompute.value}: DeepSpeed's activation checkpointing "
         "is set in its own section and the model code, not among the keys read"),
        (sc.placement.policy is not PlacementPolicyKind.STATIC, f"placement.policy {sc.placement.policy.value}: "
         "DeepSpeed places experts statically"))
    return [text for bad, text in checks if bad] + [f"{_routing_text(sc)} is the skew moesim assumed; DeepSpeed's "
                                                    "router learns its own"]


def write_megatron_export(directory: str | PathLike, sc: Scenario) -> list[Path]:
    """megatron_args.txt and deepspeed_moe.json in `directory`, each written atomically (replacing old ones)."""
    directory = Path(directory)
    return [write_text_atomic(directory / MEGATRON_ARGS_FILE, megatron_command(sc).text()),
            write_json_atomic(directory / DEEPSPEED_FILE, deepspeed_moe_config(sc))]
