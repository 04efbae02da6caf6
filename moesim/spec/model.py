"""The MoE transformer being trained: shapes only, no parallelism.

Field names follow Hugging Face config.json where a field has one there (hidden_size, num_attention_heads,
q_lora_rank, sliding_window, tie_word_embeddings); each help text names Megatron-LM's flag too. Parameter counts
are elements; per-layer RMSNorm weights and biases are negligible and left out, except the two latent norms of
multi-head latent attention, which Megatron's theoretical_memory_usage.py counts (../shared/specs/fidelity.md §1).
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from moesim.spec.base import Count, NonEmptyStr, SpecEnum, SpecModel, spec_field
from moesim.spec.bounds import (MAX_EXPERTS, MAX_FFN, MAX_HEADS, MAX_HIDDEN, MAX_LAYERS, MAX_SEQ_LEN,
                                MAX_VOCAB)
from moesim.spec.errors import require


class Activation(SpecEnum):
    SWIGLU = "swiglu"  # gate, up and down projections: 3 matrices
    GELU = "gelu"  # up and down: 2 matrices
    GEGLU = "geglu"  # SwiGLU's gated form with GELU (Grok-1): 3 matrices

    @property
    def ffn_matrices(self) -> int:
        return 2 if self is Activation.GELU else 3


_MLA_DIMS = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


class MoeModelSpec(SpecModel):
    """A model preset's fields, or all of them spelt out; a scenario may override any field of a preset."""

    preset: str = spec_field("", help="start from this preset (moesim.spec.presets, `moesim list`); the other "
                                      "keys override its values")
    name: NonEmptyStr = spec_field("custom", help="the model's name in reports (default: the preset's)")
    num_layers: Count = spec_field(help="transformer layers (HF num_hidden_layers, Megatron --num-layers); "
                                        "multi-token-prediction layers not included", ge=1, le=MAX_LAYERS)
    hidden_size: Count = spec_field(help="model width", ge=1, le=MAX_HIDDEN)
    num_attention_heads: Count = spec_field(help="query heads", ge=1, le=MAX_HEADS)
    num_kv_heads: Count = spec_field(help="key/value heads (grouped-query attention; HF num_key_value_heads, "
                                          "Megatron --num-query-groups); with multi-head latent attention "
                                          "equal to num_attention_heads", ge=1, le=MAX_HEADS)
    head_dim: Count | None = spec_field(None, help="width of one head (Megatron --kv-channels); default: "
                                                   "hidden_size / num_attention_heads. Not used with multi-head "
                                                   "latent attention, whose widths are qk_nope_head_dim + "
                                                   "qk_rope_head_dim and v_head_dim", ge=1, le=MAX_HEADS)
    q_lora_rank: Count | None = spec_field(None, help="multi-head latent attention: rank of the compressed "
                                                      "query (Megatron --q-lora-rank); null = a plain query "
                                                      "projection", ge=1, le=MAX_HIDDEN)
    kv_lora_rank: Count | None = spec_field(None, help="multi-head latent attention (DeepSeek-V2/V3): rank of "
                                                       "the compressed keys and values (Megatron "
                                                       "--multi-latent-attention --kv-lora-rank); null = not "
                                                       "MLA", ge=1, le=MAX_HIDDEN)
    qk_nope_head_dim: Count | None = spec_field(None, help="MLA: query/key width per head without rotary "
                                                           "embedding (Megatron --qk-head-dim)", ge=1,
                                                le=MAX_HEADS)
    qk_rope_head_dim: Count | None = spec_field(None, help="MLA: query/key width per head with rotary embedding, "
                                                           "its key part shared by all heads (Megatron "
                                                           "--qk-pos-emb-head-dim)", ge=1, le=MAX_HEADS)
    v_head_dim: Count | None = spec_field(None, help="MLA: value width per head (Megatron --v-head-dim)", ge=1,
                                          le=MAX_HEADS)
    sliding_window: Count | None = spec_field(None, help="keys each query sees in a sliding-window layer, "
                                                         "itself included (HF sliding_window; Megatron "
                                                         "--window-size W-1,0); null = full causal attention "
                                                         "in every layer", unit="tokens", ge=1, le=MAX_SEQ_LEN)
    full_attention_every: Count | None = spec_field(None, help="with sliding_window: every n-th layer (layers "
                                                               "n-1, 2n-1, ...) keeps full attention and the "
                                                               "others use the window (Megatron "
                                                               "--window-attn-skip-freq; GPT-OSS: 2); null = "
                                                               "every layer uses the window", ge=2,
                                                    le=MAX_LAYERS)
    attention_sinks: bool = spec_field(False, help="one learned softmax logit per head (GPT-OSS; Megatron "
                                                   "--softmax-type learnable): parameters only, no compute")
    dense_ffn_size: Count = spec_field(0, help="FFN width of the dense (non-MoE) layers", ge=0, le=MAX_FFN)
    expert_ffn_size: Count = spec_field(help="FFN width of one routed expert", ge=1, le=MAX_FFN)
    num_experts: Count = spec_field(help="routed experts per MoE layer", ge=1, le=MAX_EXPERTS)
    top_k: Count = spec_field(help="routed experts per token", ge=1, le=MAX_EXPERTS)
    num_shared_experts: Count = spec_field(0, help="always-on experts, each expert_ffn_size wide", ge=0,
                                           le=MAX_EXPERTS)
    vocab_size: Count = spec_field(help="vocabulary size", ge=1, le=MAX_VOCAB)
    tie_word_embeddings: bool = spec_field(False, help="the LM head is the input embedding (HF "
                                                       "tie_word_embeddings; Megatron ties unless "
                                                       "--untie-embeddings-and-output-weights). With pp > 1 the "
                                                       "last stage still holds a copy")
    activation: Activation = spec_field(help="FFN activation: swiglu, gelu (2 matrices) or geglu (gated like "
                                             "swiglu: 3)")
    first_k_dense: Count = spec_field(0, help="the first k layers are dense", ge=0, le=MAX_LAYERS)
    moe_every: Count = spec_field(1, help="after those, every n-th layer is MoE (1 = all)", ge=1, le=MAX_LAYERS)
    num_mtp_layers: Count = spec_field(0, help="multi-token-prediction modules (HF num_nextn_predict_layers, "
                                               "Megatron --mtp-num-layers; DeepSeek-V3: 1): each a 2h -> h "
                                               "projection and one transformer layer (MoE when the last layer "
                                               "is) sharing the LM head, on the last pipeline stage", ge=0,
                                       le=MAX_LAYERS)
    source: str = spec_field("", help="where the numbers come from")

    @model_validator(mode="before")
    @classmethod
    def _default_head_dim(cls, data: Any) -> Any:
        # MLA has no single head width: head_dim stays unset there (and is refused if given)
        if isinstance(data, dict) and data.get("head_dim") is None and data.get("kv_lora_rank") is None:
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
        require(self.full_attention_every is None or self.sliding_window is not None, "full_attention_every",
                self.full_attention_every, "null unless sliding_window is set")
        if self.is_mla:
            for key in _MLA_DIMS[1:]:
                require(getattr(self, key) is not None, key, None,
                        "an integer >= 1 (multi-head latent attention: kv_lora_rank is set)")
            require(self.num_kv_heads == self.num_attention_heads, "num_kv_heads", self.num_kv_heads,
                    f"num_attention_heads ({self.num_attention_heads}): multi-head latent attention gives every "
                    f"head its own keys and values (Megatron: MLA excludes grouped-query attention)")
            require(self.head_dim is None, "head_dim", self.head_dim, "null with multi-head latent attention (its "
                    "widths are qk_nope_head_dim + qk_rope_head_dim and v_head_dim)")
        else:
            for key in _MLA_DIMS:
                require(getattr(self, key) is None, key, getattr(self, key),
                        "null unless kv_lora_rank is set (multi-head latent attention)")
        return self

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense and (layer - self.first_k_dense) % self.moe_every == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    def is_windowed_layer(self, layer: int) -> bool:
        """Whether `layer` (0-based) attends through the sliding window. Megatron's rule: layer number i+1
        (1-based) keeps full attention when divisible by the skip frequency."""
        every = self.full_attention_every
        return self.sliding_window is not None and (every is None or (layer + 1) % every != 0)

    @property
    def num_windowed_layers(self) -> int:
        if self.sliding_window is None:
            return 0
        every = self.full_attention_every
        return self.num_layers if every is None else self.num_layers - self.num_layers // every

    # Attention widths. MLA: queries and keys have nope + rope per head, values v_head_dim, and every head its
    # own keys and values (num_kv_heads = num_attention_heads).
    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def qk_head_width(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def v_head_width(self) -> int:
        return self.v_head_dim if self.is_mla else self.head_dim

    @property
    def rope_head_width(self) -> int:
        """The part of a query/key head that rotary embedding rotates (MLA: the decoupled rope part only)."""
        return self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.qk_head_width

    @property
    def k_width(self) -> int:
        return self.num_kv_heads * self.qk_head_width

    @property
    def v_width(self) -> int:
        return self.num_kv_heads * self.v_head_width

    @property
    def attn_out_width(self) -> int:
        """The attention core's output per token: the output projection's input."""
        return self.num_attention_heads * self.v_head_width

    # Parameter counts (elements).
    @property
    def attention_gemm_params(self) -> int:
        """Weights of the attention's GEMMs: forward FLOP per token = 2x this (fidelity.md §1)."""
        h, out = self.hidden_size, self.attn_out_width * self.hidden_size
        if not self.is_mla:
            return h * (self.q_width + self.k_width + self.v_width) + out
        q = self.q_lora_rank * (h + self.q_width) if self.q_lora_rank else h * self.q_width
        kv_up = self.kv_lora_rank * self.num_attention_heads * (self.qk_nope_head_dim + self.v_head_dim)
        # the down projection also makes the rope key part, shared by all heads
        kv_down = h * (self.kv_lora_rank + self.qk_rope_head_dim)
        return q + kv_down + kv_up + out

    @property
    def attention_latent_norm_params(self) -> int:
        """MLA's RMSNorms of the compressed query and key/value (0 without MLA)."""
        return (self.q_lora_rank or 0) + self.kv_lora_rank if self.is_mla else 0

    @property
    def attention_params(self) -> int:
        return self.attention_gemm_params + self.attention_latent_norm_params \
            + (self.num_attention_heads if self.attention_sinks else 0)

    @property
    def attention_tp_replicated_params(self) -> int:
        """Attention parameters every tensor-parallel rank holds whole: MLA's down projections and latent norms
        (Megatron builds them with parallel_mode='duplicated'); the rest is split over tp."""
        if not self.is_mla:
            return 0
        h = self.hidden_size
        q_down = h * self.q_lora_rank if self.q_lora_rank else 0
        return q_down + h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.attention_latent_norm_params

    def ffn_params(self, ffn_size: int) -> int:
        return self.activation.ffn_matrices * self.hidden_size * ffn_size

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size  # one of: the input embedding, the (untied) LM head

    def layer_params(self, moe: bool, active: bool = False) -> int:
        """One transformer layer; `active`: only what one token touches (top_k routed + shared experts)."""
        if not moe:
            return self.attention_params + self.ffn_params(self.dense_ffn_size)
        experts = (self.top_k if active else self.num_experts) + self.num_shared_experts
        return self.attention_params + experts * self.ffn_params(self.expert_ffn_size) + self.router_params

    # A multi-token-prediction module's transformer layer is built like the model's last layer (Megatron builds
    # it from the decoder's layer spec; DeepSeek-V3's is MoE).
    @property
    def mtp_layer_is_moe(self) -> bool:
        return self.is_moe_layer(self.num_layers - 1)

    @property
    def mtp_layer_windowed(self) -> bool:
        return self.is_windowed_layer(self.num_layers - 1)

    @property
    def mtp_projection_params(self) -> int:
        return 2 * self.hidden_size * self.hidden_size  # [normed hidden; normed embedding] (2h) -> h

    def mtp_module_params(self, active: bool = False) -> int:
        """One multi-token-prediction module without the embedding and LM head it shares with the model."""
        return self.mtp_projection_params + self.layer_params(self.mtp_layer_is_moe, active)

    def _params(self, active: bool) -> int:
        dense_layers = self.num_layers - self.num_moe_layers
        embeddings = (1 if self.tie_word_embeddings else 2) * self.embedding_params
        return dense_layers * self.layer_params(False) + self.num_moe_layers * self.layer_params(True, active) \
            + embeddings

    @property
    def total_params(self) -> int:
        """The model's parameters as published: multi-token-prediction modules, which train alongside, are in
        mtp_params (DeepSeek-V3: 671.0 B + 11.6 B)."""
        return self._params(active=False)

    @property
    def active_params(self) -> int:
        """Parameters one token touches (top_k routed + shared experts), MTP modules left out as in total_params."""
        return self._params(active=True)

    @property
    def mtp_params(self) -> int:
        """The multi-token-prediction modules' own parameters (they share the embedding and LM head)."""
        return self.num_mtp_layers * self.mtp_module_params()
