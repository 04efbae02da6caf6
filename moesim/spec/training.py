"""What one training step does: batch, sequence, precision (and its fp8 recipe), optimizer, recomputation."""

from __future__ import annotations

from typing import Annotated

from pydantic import model_validator

from moesim.spec.base import LISTS_AS_TUPLES, Count, SpecEnum, SpecModel, spec_field
from moesim.spec.dtype import Dtype, Fp8Recipe
from moesim.spec.bounds import MAX_SEQ_LEN, MAX_SEQUENCES, MAX_STATE_BYTES_PER_PARAM
from moesim.spec.errors import require


class Optimizer(SpecEnum):
    ADAM = "adam"


class Recompute(SpecEnum):
    NONE = "none"  # keep every activation
    SELECTIVE = "selective"  # recompute the attention core (Korthikanti et al.), keep the rest
    FULL = "full"  # keep only each layer's input; rerun the forward in the backward


class RecomputeModule(SpecEnum):
    """Megatron-LM's --recompute-modules: what `recompute: selective` recomputes in the backward."""

    CORE_ATTN = "core_attn"  # the attention core (Megatron's default); FlashAttention stores no scores anyway
    LAYERNORM = "layernorm"  # the two norms' outputs
    MOE_ACT = "moe_act"  # the routed experts' activation output
    MLP = "mlp"  # a dense layer's MLP (its input kept)
    SHARED_EXPERTS = "shared_experts"  # the shared experts (their input kept)
    MOE = "moe"  # the whole MoE block's GEMMs (its input kept; the all-to-alls are not rerun here)
    MLA_UP_PROJ = "mla_up_proj"  # multi-head latent attention's up projections (Q, K, V from the latents)


class OptimizerSpec(SpecModel):
    name: Optimizer = spec_field(Optimizer.ADAM, help="the optimizer")
    # Mixed-precision Adam: fp32 master weights + m + v = 12 bytes per parameter.
    state_bytes_per_param: float = spec_field(12.0, help="optimizer state per parameter (Adam: fp32 master + m + "
                                              "v = 12)", unit="bytes per parameter", ge=0,
                                              le=MAX_STATE_BYTES_PER_PARAM)
    distributed: bool = spec_field(False, help="shard optimizer state over data-parallel ranks (ZeRO-1 / "
                                   "Megatron --use-distributed-optimizer)")


class TrainingSpec(SpecModel):
    global_batch_size: Count = spec_field(help="sequences per optimizer step", unit="sequences", ge=1,
                                          le=MAX_SEQUENCES)
    seq_len: Count = spec_field(help="tokens per sequence", unit="tokens", ge=1, le=MAX_SEQ_LEN)
    micro_batch_size: Count = spec_field(help="sequences per micro-batch per data-parallel rank", unit="sequences",
                                         ge=1, le=MAX_SEQUENCES)
    dtype: Dtype = spec_field(Dtype.BF16, help="weights, activations and GEMMs")
    fp8_recipe: Fp8Recipe = spec_field(Fp8Recipe.DELAYED, help="with dtype: fp8, how the linear layers' fp8 "
                                       "tensors are scaled (Megatron-LM --fp8-recipe; Megatron's default is "
                                       "delayed): delayed, tensorwise, blockwise, mxfp8")
    fp8_dispatch: bool = spec_field(False, help="with fp8_recipe: blockwise, the dispatch all-to-all sends fp8 "
                                    "rows with an fp32 scale per 128 elements, and the combine's backward sends "
                                    "fp8 gradients; the combine stays bf16 (DeepEP, DeepSeek-V3 report 3.3; "
                                    "Megatron-LM has no flag for it)")
    grad_dtype: Dtype = spec_field(Dtype.FP32, help="gradient accumulation buffers")
    optimizer: OptimizerSpec = spec_field(OptimizerSpec(), help="optimizer and its state")
    recompute: Recompute = spec_field(Recompute.NONE, help="activation recomputation")
    recompute_modules: Annotated[tuple[RecomputeModule, ...], LISTS_AS_TUPLES] = spec_field(
        (RecomputeModule.CORE_ATTN,), help="with recompute: selective, what is recomputed (Megatron-LM "
        "--recompute-modules): core_attn, layernorm, moe_act, mlp, shared_experts, moe, mla_up_proj")

    @model_validator(mode="after")
    def _micro_fits(self) -> TrainingSpec:
        require(self.micro_batch_size <= self.global_batch_size, "micro_batch_size", self.micro_batch_size,
                f"<= global_batch_size ({self.global_batch_size}) sequences")
        require(self.recompute is Recompute.SELECTIVE or self.recompute_modules == (RecomputeModule.CORE_ATTN,),
                "recompute_modules", [m.value for m in self.recompute_modules],
                "only with recompute: selective (Megatron-LM: --recompute-granularity selective)")
        require(len(set(self.recompute_modules)) == len(self.recompute_modules), "recompute_modules",
                [m.value for m in self.recompute_modules], "each module at most once")
        require(self.dtype is Dtype.FP8 or self.fp8_recipe is Fp8Recipe.DELAYED, "fp8_recipe",
                self.fp8_recipe.value, "only with dtype: fp8 (Megatron-LM applies --fp8-recipe only with --fp8-format)")
        require(not self.fp8_dispatch or (self.dtype is Dtype.FP8 and self.fp8_recipe is Fp8Recipe.BLOCKWISE),
                "fp8_dispatch", self.fp8_dispatch, "only with dtype: fp8 and fp8_recipe: blockwise (DeepEP sends "
                "the experts' inputs as the blockwise recipe's 1x128-scaled fp8)")
        return self

    def recomputes(self, module: RecomputeModule) -> bool:
        """Whether the backward recomputes `module` (selective recompute with it among the modules)."""
        return self.recompute is Recompute.SELECTIVE and module in self.recompute_modules

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len
