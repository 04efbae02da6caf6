"""Number formats of weights, activations and gradients."""

from __future__ import annotations

from moesim.spec.base import SpecEnum


class Dtype(SpecEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"

    @property
    def bytes(self) -> int:
        return _DTYPE_BYTES[self]

    # fp8 training (Transformer Engine's recipe) runs the linear layers' GEMMs in fp8 but keeps the weights,
    # the activations between kernels and what crosses the network in bf16 (fidelity.md 2 and 5)
    @property
    def activation_bytes(self) -> int:
        """Bytes of an activation element between kernels, in a pipeline transfer or an all-to-all row."""
        return 2 if self is Dtype.FP8 else self.bytes

    @property
    def weight_bytes(self) -> int:
        """Bytes of a parameter's training copy (bf16 under the fp8 recipe, which adds an fp8 cache: see
        weight_memory_bytes)."""
        return 2 if self is Dtype.FP8 else self.bytes

    @property
    def weight_memory_bytes(self) -> int:
        """Bytes a parameter's weights hold on the GPU: the fp8 recipe keeps an fp8 copy beside the bf16 one
        (Transformer Engine without fp8 parameter gather)."""
        return 3 if self is Dtype.FP8 else self.bytes


_DTYPE_BYTES = {Dtype.FP32: 4, Dtype.BF16: 2, Dtype.FP16: 2, Dtype.FP8: 1}
