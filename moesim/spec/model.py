"""The MoE transformer being trained: shapes only, no parallelism."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from moesim.spec.base import Count, NonEmptyStr, SpecEnum, SpecModel, spec_field
from moesim.spec.bounds import MAX_EXPERTS, MAX_FFN, MAX_HEADS, MAX_HIDDEN, MAX_LAYERS, MAX_VOCAB
from moesim.spec.errors import require


class Activation(SpecEnum):
    SWIGLU = "swiglu"  # gate, up and down projections: 3 matrices
    GELU = "gelu"  # up and down: 2 matrices

    @property
    def ffn_matrices(self) -> int:
        return 3 if self is Activation.SWIGLU else 2


class MoeModelSpec(SpecModel):
    """A model preset's fields, or all of them spelt out; a scenario may override any field of a preset."""

    preset: str = spec_field("", help="start from this preset (moesim.spec.presets, `moesim list`); the other "
                                      "keys override its values")
    name: NonEmptyStr = spec_field("custom", help="the model's name in reports (default: the preset's)")
    num_layers: Count = spec_field(help="transformer layers", ge=1, le=MAX_LAYERS)
    hidden_size: Count = spec_field(help="model width", ge=1, le=MAX_HIDDEN)
    num_attention_heads: Count = spec_field(help="query heads", ge=1, le=MAX_HEADS)
    num_kv_heads: Count = spec_field(help="key/value heads (grouped-query attention)", ge=1, le=MAX_HEADS)
    head_dim: Count | None = spec_field(None, help="width of one head; default: hidden_size / num_attention_heads",
                                        ge=1, le=MAX_HEADS)
    dense_ffn_size: Count = spec_field(0, help="FFN width of the dense (non-MoE) layers", ge=0, le=MAX_FFN)
    expert_ffn_size: Count = spec_field(help="FFN width of one routed expert", ge=1, le=MAX_FFN)
    num_experts: Count = spec_field(help="routed experts per MoE layer", ge=1, le=MAX_EXPERTS)
    top_k: Count = spec_field(help="routed experts per token", ge=1, le=MAX_EXPERTS)
    num_shared_experts: Count = spec_field(0, help="always-on experts, each expert_ffn_size wide", ge=0,
                                           le=MAX_EXPERTS)
    vocab_size: Count = spec_field(help="vocabulary size", ge=1, le=MAX_VOCAB)
    activation: Activation = spec_field(help="FFN activation: swiglu (3 matrices) or gelu (2)")
    first_k_dense: Count = spec_field(0, help="the first k layers are dense", ge=0, le=MAX_LAYERS)
    moe_every: Count = spec_field(1, help="after those, every n-th layer is MoE (1 = all)", ge=1, le=MAX_LAYERS)
    source: str = spec_field("", help="where the numbers come from")

    @model_validator(mode="before")
    @classmethod
    def _default_head_dim(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("head_dim") is None:
            hidden, heads = data.get("hidden_size"), data.get("num_attention_heads")
            if all(type(v) is int for v in (hidden, heads)) and heads > 0:  # else their own errors come first
                data = {**data, "head_dim": max(1, hidden // heads)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MoeModelSpec:
        require(self.num_attention_heads % self.num_kv_heads == 0, "num_kv_heads", self.num_kv_heads,
                f"a divisor of num_attention_heads ({self.num_attention_heads})")
        require(self.top_k <= self.num_experts, "top_k", self.top_k,
                f"an integer in [1, num_experts={self.num_experts}]")
        require(self.first_k_dense < self.num_layers, "first_k_dense", self.first_k_dense,
                f"fewer than num_layers ({self.num_layers}) so that some layer is MoE")
        # closed form, not a loop over layers: num_layers is user input and may be huge
        has_dense = self.first_k_dense > 0 or (self.moe_every > 1 and self.num_layers - self.first_k_dense > 1)
        require(not has_dense or self.dense_ffn_size >= 1, "dense_ffn_size", self.dense_ffn_size,
                "an integer >= 1 (the model has dense layers)")
        return self

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense and (layer - self.first_k_dense) % self.moe_every == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    # Parameter counts (elements). Norms and biases are negligible and left out.
    @property
    def attention_params(self) -> int:
        q_out = self.num_attention_heads * self.head_dim
        kv_out = 2 * self.num_kv_heads * self.head_dim
        return self.hidden_size * (q_out + kv_out) + q_out * self.hidden_size

    def ffn_params(self, ffn_size: int) -> int:
        return self.activation.ffn_matrices * self.hidden_size * ffn_size

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size  # input embedding; the LM head is another, untied

    @property
    def total_params(self) -> int:
        dense_layers = self.num_layers - self.num_moe_layers
        moe_layer = (self.num_experts + self.num_shared_experts) * self.ffn_params(self.expert_ffn_size) \
            + self.router_params
        return (self.num_layers * self.attention_params + dense_layers * self.ffn_params(self.dense_ffn_size)
                + self.num_moe_layers * moe_layer + 2 * self.embedding_params)

    @property
    def active_params(self) -> int:
        """Parameters one token touches (top_k routed + shared experts)."""
        dense_layers = self.num_layers - self.num_moe_layers
        moe_layer = (self.top_k + self.num_shared_experts) * self.ffn_params(self.expert_ffn_size) \
            + self.router_params
        return (self.num_layers * self.attention_params + dense_layers * self.ffn_params(self.dense_ffn_size)
                + self.num_moe_layers * moe_layer + 2 * self.embedding_params)
