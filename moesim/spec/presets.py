"""Model presets, each with where its numbers come from. Shapes only; a scenario may override any field.

Where a value could only be read from a copy of a file (a Hub config.json quoted in public code, Megatron-LM's
example flags) rather than the file itself, `source` says so. Biases (GPT-OSS has them) and per-layer norm
weights are left out of every preset (moesim.spec.model); each note gives the parameter counts the preset yields
(`moesim list`), to compare with the published ones. tests/io/test_hf_config.py checks that config.json files of
these shapes map to the same specs.
"""

from __future__ import annotations

from moesim.spec.model import Activation, MoeModelSpec

_MEGATRON_CONF = "NVIDIA/Megatron-LM examples/post_training/modelopt/conf"

MODEL_PRESETS: dict[str, MoeModelSpec] = {
    "mixtral-8x7b": MoeModelSpec(
        name="mixtral-8x7b", num_layers=32, hidden_size=4096, num_attention_heads=32, num_kv_heads=8,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=14336, num_experts=8, top_k=2, num_shared_experts=0,
        vocab_size=32000, activation=Activation.SWIGLU,
        source="mistralai/Mixtral-8x7B-v0.1 config.json (sliding_window null: full attention; untied); Jiang "
               "et al., arXiv:2401.04088 Table 1 (fully dense 32k context). 46.7 B params, 12.9 B active",
    ),
    "mixtral-8x22b": MoeModelSpec(
        name="mixtral-8x22b", num_layers=56, hidden_size=6144, num_attention_heads=48, num_kv_heads=8,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=16384, num_experts=8, top_k=2, num_shared_experts=0,
        vocab_size=32000, activation=Activation.SWIGLU,
        source="mistralai/Mixtral-8x22B-v0.1 config.json as quoted in public test code (hidden 6144, "
               "intermediate 16384, 56 layers, 48/8 heads, 8 experts top-2, vocab 32000, sliding_window null, "
               "untied; transformers 4.40.0.dev0); the Hub file itself was not read. 140.6 B params (Mistral AI: "
               "141 B), 39.2 B active (39 B). The Instruct model's vocabulary is 32768",
    ),
    "deepseek-v3": MoeModelSpec(
        name="deepseek-v3", num_layers=61, hidden_size=7168, num_attention_heads=128, num_kv_heads=128,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        dense_ffn_size=18432, expert_ffn_size=2048, num_experts=256, top_k=8, num_shared_experts=1,
        vocab_size=129280, activation=Activation.SWIGLU, first_k_dense=3, num_mtp_layers=1,
        source="deepseek-ai/DeepSeek-V3 config.json (read from copies: DeepSeek-R1's config.json, the same "
               "architecture, and inference/configs/config_671B.json); DeepSeek-V3 report arXiv:2412.19437 §4.2 "
               "(MLA with kv 512 / q 1536 compression, 64-wide decoupled RoPE; 3 dense layers; 1 shared + 256 "
               "routed experts of 2048, top-8; MTP depth 1); " + _MEGATRON_CONF + "/deepseek-ai/DeepSeek-R1.sh. "
               "MLA 187.1 M params per layer. 671.0 B params, 37.6 B active and 11.6 B in the MTP module "
               "(deepseek-ai/DeepSeek-V3 README_WEIGHTS.md: 671 B, 36.7 B activated, MTP 11.5 B unique; the "
               "report: 37 B activated)",
    ),
    "qwen3-30b-a3b": MoeModelSpec(
        name="qwen3-30b-a3b", num_layers=48, hidden_size=2048, num_attention_heads=32, num_kv_heads=4,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=768, num_experts=128, top_k=8, num_shared_experts=0,
        vocab_size=151936, activation=Activation.SWIGLU,
        source="Qwen/Qwen3-30B-A3B config.json (via " + _MEGATRON_CONF + "/Qwen/Qwen3-30B-A3B.sh and transformers "
               "Qwen3MoeConfig defaults; every layer MoE: mlp_only_layers empty, decoder_sparse_step 1; no "
               "sliding window; untied); Qwen3 technical report arXiv:2505.09388 Table 2. 30.5 B params, 3.3 B "
               "active",
    ),
    "qwen3-235b-a22b": MoeModelSpec(
        name="qwen3-235b-a22b", num_layers=94, hidden_size=4096, num_attention_heads=64, num_kv_heads=4,
        head_dim=128, dense_ffn_size=0, expert_ffn_size=1536, num_experts=128, top_k=8, num_shared_experts=0,
        vocab_size=151936, activation=Activation.SWIGLU,
        source="Qwen/Qwen3-235B-A22B config.json as given by " + _MEGATRON_CONF + "/Qwen/Qwen3-235B-A22B.sh "
               "(94 layers, hidden 4096, 64 heads / 4 KV groups of 128, 128 experts of 1536 top-8, untied, "
               "vocab 151936 = 1187 x 128); the Hub model card (94 layers, 64/4 heads, 128 experts, 8 active); "
               "Qwen3 technical report arXiv:2505.09388 Table 2. The Hub file itself was not read. 235.1 B "
               "params, 22.2 B active",
    ),
    "gpt-oss-120b": MoeModelSpec(
        name="gpt-oss-120b", num_layers=36, hidden_size=2880, num_attention_heads=64, num_kv_heads=8,
        head_dim=64, sliding_window=128, full_attention_every=2, attention_sinks=True, dense_ffn_size=0,
        expert_ffn_size=2880, num_experts=128, top_k=4, num_shared_experts=0, vocab_size=201088,
        activation=Activation.SWIGLU,
        source="transformers GptOssConfig defaults (= gpt-oss-120b; layer_types alternate sliding_attention, "
               "full_attention from layer 0) and openai/gpt-oss gpt_oss/torch/model.py (window of 128 keys on "
               "even layers, one sink logit per head, separate unembedding); " + _MEGATRON_CONF +
               "/openai/gpt-oss-120b.sh (--window-size 127,0 --window-attn-skip-freq 2 --softmax-type learnable). "
               "Its clamped SwiGLU (Megatron --quick-geglu) is a 3-matrix gated FFN. 116.8 B params (model card: "
               "116.8 B), 5.7 B active with the unembedding (model card: 5.1 B)",
    ),
    "gpt-oss-20b": MoeModelSpec(
        name="gpt-oss-20b", num_layers=24, hidden_size=2880, num_attention_heads=64, num_kv_heads=8,
        head_dim=64, sliding_window=128, full_attention_every=2, attention_sinks=True, dense_ffn_size=0,
        expert_ffn_size=2880, num_experts=32, top_k=4, num_shared_experts=0, vocab_size=201088,
        activation=Activation.SWIGLU,
        source="as gpt-oss-120b with 24 layers and 32 experts: " + _MEGATRON_CONF + "/openai/gpt-oss-20b.sh; "
               "NVIDIA Megatron-Bridge GPT-OSS page. The Hub config.json itself was not read. 20.9 B params "
               "(model card: 20.9 B)",
    ),
    "grok-1": MoeModelSpec(
        name="grok-1", num_layers=64, hidden_size=6144, num_attention_heads=48, num_kv_heads=8, head_dim=128,
        dense_ffn_size=0, expert_ffn_size=32768, num_experts=8, top_k=2, num_shared_experts=0, vocab_size=131072,
        tie_word_embeddings=True, activation=Activation.GEGLU,
        source="xai-org/grok-1 run.py (emb_size 48*128, key_size 128, 48 query / 8 KV heads, 64 layers, 8 experts, "
               "2 selected, vocab 128*1024, widening_factor 8) and model.py (ffn_size(6144, 8) = 32768; experts "
               "gelu(linear) * linear_v -> linear_1; every layer MoE; 'here, we use tied weights'). No "
               "config.json exists. 315.7 B params (xAI: 314 B)",
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
