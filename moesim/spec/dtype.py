"""Number formats of weights, activations and gradients, and the fp8 recipes' scaling formats."""

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


class Fp8Recipe(SpecEnum):
    """Megatron-LM's --fp8-recipe (Transformer Engine's recipes): how the fp8 copies of a linear layer's input,
    weight and output gradient are scaled. Megatron's `custom` (a user's recipe factory) has no known cost and is
    left out. ../shared/specs/fidelity.md §5."""

    DELAYED = "delayed"  # one fp32 scale per tensor, from an amax history (TE DelayedScaling); Megatron's default
    TENSORWISE = "tensorwise"  # one fp32 scale per tensor from its own amax now (TE Float8CurrentScaling, "FP8-CS")
    BLOCKWISE = "blockwise"  # fp32 scale per 1x128 activation tile and 128x128 weight block (TE Float8BlockScaling;
    #                          DeepSeek-V3 §3.3)
    MXFP8 = "mxfp8"  # E8M0 (1-byte) scale per 1x32 block of activations and weights (TE MXFP8BlockScaling; Blackwell)

    @property
    def scale_bytes(self) -> int:
        """Bytes of one scale: fp32, or E8M0 for mxfp8."""
        return 1 if self is Fp8Recipe.MXFP8 else 4

    @property
    def activation_block(self) -> int | None:
        """Elements of an activation or gradient (along a row of its GEMM's reduction dimension) sharing one scale;
        None: one scale for the whole tensor."""
        return _ACTIVATION_BLOCK[self]

    @property
    def weight_block(self) -> int | None:
        """Elements of a weight sharing one scale (128 x 128 blocks for blockwise); None: the whole tensor."""
        return _WEIGHT_BLOCK[self]

    @property
    def amax_passes(self) -> int:
        """Reads of the high-precision tensor before the cast: current scaling computes its amax first (TE
        Float8CurrentScalingQuantizer: compute_amax, compute_scale_from_amax, quantize); the others take the amax
        inside the cast kernel (delayed: recorded for the next step's scale) or per block."""
        return 1 if self is Fp8Recipe.TENSORWISE else 0

    @property
    def scale_bytes_per_activation(self) -> float:
        """Scale bytes per fp8 element of an activation or gradient (0: one per tensor, negligible)."""
        block = self.activation_block
        return self.scale_bytes / block if block else 0.0

    @property
    def scale_bytes_per_weight(self) -> float:
        """Scale bytes per fp8 element of a weight (0: one per tensor, negligible)."""
        block = self.weight_block
        return self.scale_bytes / block if block else 0.0


FP8_BLOCK = 128  # blockwise: 1x128 tiles of activations and gradients, 128x128 blocks of weights (DeepSeek-V3 §3.3)
MX_BLOCK = 32  # mxfp8: 1x32 blocks (OCP Microscaling spec; TE MXFP8BlockScaling)
_ACTIVATION_BLOCK = {Fp8Recipe.DELAYED: None, Fp8Recipe.TENSORWISE: None, Fp8Recipe.BLOCKWISE: FP8_BLOCK,
                     Fp8Recipe.MXFP8: MX_BLOCK}
_WEIGHT_BLOCK = {Fp8Recipe.DELAYED: None, Fp8Recipe.TENSORWISE: None, Fp8Recipe.BLOCKWISE: FP8_BLOCK * FP8_BLOCK,
                 Fp8Recipe.MXFP8: MX_BLOCK}
