"""Model presets, each with where its numbers come from. Shapes only; a scenario may override any field."""

from __future__ import annotations

from moesim.spec.model import Activation, MoeModelSpec

MODEL_PRESETS: dict[str, MoeModelSpec] = {
    "mixtral-8x7b": MoeModelSpec(
        name="mixtral-8x7b", num_layers=32, hidden_size=4096, num_attention_heads=32, num_kv_heads=8,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=14336, num_experts=8, top_k=2, num_shared_experts=0,
        vocab_size=32000, activation=Activation.SWIGLU,
        source="mistralai/Mixtral-8x7B-v0.1 config.json; Jiang et al., arXiv:2401.04088 Table 1",
    ),
    "deepseek-v3": MoeModelSpec(
        name="deepseek-v3", num_layers=61, hidden_size=7168, num_attention_heads=128, num_kv_heads=128,
        head_dim=128, dense_ffn_size=18432, expert_ffn_size=2048, num_experts=256, top_k=8,
        num_shared_experts=1, vocab_size=129280, activation=Activation.SWIGLU, first_k_dense=3,
        source="deepseek-ai/DeepSeek-V3 config.json; DeepSeek-V3 technical report arXiv:2412.19437 §4.2. "
               "Multi-head latent attention is modelled as MHA with 128 heads of 128: attention weights "
               "are over-counted (~0.47 vs ~0.19 B per layer, under 3 % of all parameters)",
    ),
    "qwen3-30b-a3b": MoeModelSpec(
        name="qwen3-30b-a3b", num_layers=48, hidden_size=2048, num_attention_heads=32, num_kv_heads=4,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=768, num_experts=128, top_k=8, num_shared_experts=0,
        vocab_size=151936, activation=Activation.SWIGLU,
        source="Qwen/Qwen3-30B-A3B config.json; Qwen3 technical report arXiv:2505.09388 Table 2",
    ),
    "olmoe-1b-7b": MoeModelSpec(
        name="olmoe-1b-7b", num_layers=16, hidden_size=2048, num_attention_heads=16, num_kv_heads=16,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=1024, num_experts=64, top_k=8, num_shared_experts=0,
        vocab_size=50304, activation=Activation.SWIGLU,
        source="allenai/OLMoE-1B-7B-0924 config.json; Muennighoff et al., arXiv:2409.02060 Table 1",
    ),
    "gpt-moe-smartmoe": MoeModelSpec(
        name="gpt-moe-smartmoe", num_layers=16, hidden_size=1536, num_attention_heads=16, num_kv_heads=16,
        head_dim=96, dense_ffn_size=0, expert_ffn_size=3072, num_experts=64, top_k=2, num_shared_experts=0,
        vocab_size=50257, activation=Activation.GELU,
        source="SmartMoE (Zhai et al., USENIX ATC'23) evaluation model GPT-L16-H1536 with 64 experts, top-2 "
               "(thu-pacman/SmartMoE-AE); expert FFN 3072 as in the paper's Figure 13 setting. 16 heads and "
               "the GPT-2 vocabulary are assumptions (not stated)",
    ),
}
