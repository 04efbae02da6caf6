"""What one training step does: batch, sequence, precision, optimizer, recomputation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from moesim.spec.errors import require
from moesim.spec.hardware import Dtype


class Optimizer(Enum):
    ADAM = "adam"


class Recompute(Enum):
    NONE = "none"  # keep every activation
    SELECTIVE = "selective"  # recompute the attention core (Korthikanti et al.), keep the rest
    FULL = "full"  # keep only each layer's input; rerun the forward in the backward


@dataclass(frozen=True)
class OptimizerSpec:
    name: Optimizer = Optimizer.ADAM
    # Mixed-precision Adam: fp32 master weights + m + v = 12 bytes per parameter.
    state_bytes_per_param: float = 12.0
    distributed: bool = False  # shard optimizer state over data-parallel ranks (ZeRO-1 / Megatron)

    def __post_init__(self) -> None:
        require(self.state_bytes_per_param >= 0, "state_bytes_per_param", self.state_bytes_per_param,
                ">= 0 bytes per parameter")


@dataclass(frozen=True)
class TrainingSpec:
    global_batch_size: int  # sequences per optimizer step
    seq_len: int  # tokens per sequence
    micro_batch_size: int  # sequences per micro-batch per data-parallel rank
    dtype: Dtype = Dtype.BF16  # weights, activations and GEMMs
    grad_dtype: Dtype = Dtype.FP32  # gradient accumulation buffers
    optimizer: OptimizerSpec = OptimizerSpec()
    recompute: Recompute = Recompute.NONE

    def __post_init__(self) -> None:
        for key in ("global_batch_size", "seq_len", "micro_batch_size"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        require(self.micro_batch_size <= self.global_batch_size, "micro_batch_size", self.micro_batch_size,
                f"<= global_batch_size ({self.global_batch_size}) sequences")

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len
