"""The MoE transformer being trained: shapes only, no parallelism."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from moesim.spec.errors import require


class Activation(Enum):
    SWIGLU = "swiglu"  # gate, up and down projections: 3 matrices
    GELU = "gelu"  # up and down: 2 matrices

    @property
    def ffn_matrices(self) -> int:
        return 3 if self is Activation.SWIGLU else 2


@dataclass(frozen=True)
class MoeModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    dense_ffn_size: int  # FFN width of the dense (non-MoE) layers
    expert_ffn_size: int  # FFN width of one routed expert
    num_experts: int  # routed experts per MoE layer
    top_k: int
    num_shared_experts: int  # always-on experts, each expert_ffn_size wide
    vocab_size: int
    activation: Activation
    first_k_dense: int = 0  # the first k layers are dense
    moe_every: int = 1  # after those, every n-th layer is MoE (1 = all)
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                    "expert_ffn_size", "num_experts", "top_k", "vocab_size", "moe_every"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
        for key in ("dense_ffn_size", "num_shared_experts", "first_k_dense"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 0, key, value, "an integer >= 0")
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
