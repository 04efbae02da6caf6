"""What one training step does: batch, sequence, precision, optimizer, recomputation."""

from __future__ import annotations

from pydantic import model_validator

from moesim.spec.base import Count, SpecEnum, SpecModel, spec_field
from moesim.spec.dtype import Dtype
from moesim.spec.bounds import MAX_SEQ_LEN, MAX_SEQUENCES, MAX_STATE_BYTES_PER_PARAM
from moesim.spec.errors import require


class Optimizer(SpecEnum):
    ADAM = "adam"


class Recompute(SpecEnum):
    NONE = "none"  # keep every activation
    SELECTIVE = "selective"  # recompute the attention core (Korthikanti et al.), keep the rest
    FULL = "full"  # keep only each layer's input; rerun the forward in the backward


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
    grad_dtype: Dtype = spec_field(Dtype.FP32, help="gradient accumulation buffers")
    optimizer: OptimizerSpec = spec_field(OptimizerSpec(), help="optimizer and its state")
    recompute: Recompute = spec_field(Recompute.NONE, help="activation recomputation")

    @model_validator(mode="after")
    def _micro_fits(self) -> TrainingSpec:
        require(self.micro_batch_size <= self.global_batch_size, "micro_batch_size", self.micro_batch_size,
                f"<= global_batch_size ({self.global_batch_size}) sequences")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len
