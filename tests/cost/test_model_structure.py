"""Model structures (issue 12 item 6): multi-head latent attention, sliding windows and attention sinks,
multi-token prediction, tied embeddings; their parameters, FLOPs, memory and step costs, and the presets'
parameter counts against the published ones."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scenario

from moesim.cost.compute import (attention_flop, keys_per_query, model_flop_per_token, mtp_flop_per_token)
from moesim.cost.memory import activation_bytes_per_layer, rank_memory, stage_params
from moesim.sim.workload import layer_costs
from moesim.spec import Dtype, ParallelLayout, Recompute
from moesim.spec.errors import SpecError
from moesim.spec.presets import MODEL_PRESETS

DSV3 = MODEL_PRESETS["deepseek-v3"]
GPT_OSS = MODEL_PRESETS["gpt-oss-120b"]


def test_deepseek_v3_mla_reproduces_fidelity_md():
    """fidelity.md §1: 187.1 M params/layer, 374 MFLOP/token linear, core 40,960·s FLOP/token (causal)."""
    h, a = 7168, 128
    params = 1536 * (h + a * (128 + 64) + 1) + 512 * (h + a * (128 + 128) + 1) + h * 64 + a * 128 * h
    assert DSV3.attention_params == params == 187_107_328
    assert round(DSV3.attention_params / 1e6, 1) == 187.1
    flop = attention_flop(DSV3, 1, 4096, 1)
    assert flop.projections_flop == 2 * (params - 1536 - 512)  # GEMMs only: the latent norms are not matmuls
    assert round(flop.projections_flop / 1e6) == 374
    for s in (1024, 4096, 32768):
        assert attention_flop(DSV3, 1, s, 1).core_flop == 40_960 * s
    assert (DSV3.qk_head_width, DSV3.v_head_width) == (192, 128)  # what FlashAttention sees


def test_deepseek_v3_and_the_other_presets_match_their_published_sizes():
    published = {  # preset: (total B, active B, relative tolerance)
        "deepseek-v3": (671, 37, 0.02), "mixtral-8x7b": (46.7, 12.9, 0.005), "mixtral-8x22b": (141, 39, 0.01),
        "qwen3-30b-a3b": (30.5, 3.3, 0.02), "qwen3-235b-a22b": (235, 22, 0.01), "gpt-oss-120b": (116.8, None, 0.005),
        "gpt-oss-20b": (20.9, None, 0.005), "grok-1": (314, None, 0.01), "olmoe-1b-7b": (6.9, 1.3, 0.02),
    }
    for name, (total, active, rel) in published.items():
        model = MODEL_PRESETS[name]  # as published, total_params leaves DeepSeek's MTP module out
        assert model.total_params / 1e9 == pytest.approx(total, rel=rel), name
        if active is not None:
            assert model.active_params / 1e9 == pytest.approx(active, rel=rel), name
    assert DSV3.total_params == DSV3.replace(num_mtp_layers=0).total_params
    assert DSV3.mtp_params == DSV3.mtp_module_params() == 2 * 7168**2 + DSV3.layer_params(moe=True)
    assert DSV3.mtp_params / 1e9 == pytest.approx(11.61, abs=0.01)


@pytest.mark.parametrize("seq_len, window", [(16, 1), (16, 4), (17, 8), (16, 16), (10, 64), (64, 63)])
def test_sliding_window_counts_the_unmasked_pairs(seq_len, window):
    q, k = np.meshgrid(np.arange(seq_len), np.arange(seq_len), indexing="ij")
    pairs = int(((q - k >= 0) & (q - k < window)).sum())  # causal, at most `window` keys, itself included
    w = window - 1  # flash-attention's left window
    if window < seq_len:
        assert pairs == seq_len * (w + 1) - w * (w + 1) // 2
        assert keys_per_query(seq_len, window) * seq_len == pytest.approx(min(pairs, seq_len**2 / 2))
    else:  # a window as long as the sequence is no window (the causal s²/2 convention)
        assert keys_per_query(seq_len, window) == keys_per_query(seq_len, None) == seq_len / 2


def test_gpt_oss_alternates_windows_and_counts_sinks_as_parameters_only():
    assert [GPT_OSS.is_windowed_layer(i) for i in range(4)] == [True, False, True, False]
    assert GPT_OSS.num_windowed_layers == 18
    no_sinks = GPT_OSS.replace(attention_sinks=False)
    assert GPT_OSS.attention_params - no_sinks.attention_params == 64  # one logit per head
    assert model_flop_per_token(GPT_OSS, 4096) == model_flop_per_token(no_sinks, 4096)
    s = 4096
    full, windowed = attention_flop(GPT_OSS, 1, s, 1), attention_flop(GPT_OSS, 1, s, 1, windowed=True)
    assert windowed.core_flop == 2 * 64 * (64 + 64) * (s * 128 - 128 * 127 / 2) / s
    no_window = GPT_OSS.replace(sliding_window=None, full_attention_every=None)
    saved = 3 * 18 * (full.core_flop - windowed.core_flop)
    assert model_flop_per_token(no_window, s) - model_flop_per_token(GPT_OSS, s) == pytest.approx(saved)


def test_sliding_window_shortens_the_attention_op():
    model = GPT_OSS.replace(num_layers=4, num_experts=8, top_k=2, vocab_size=4096)
    base = dict(nodes=1, layout=ParallelLayout(tp=1, pp=1, dp=8, ep=8), global_batch=8, seq_len=8192)
    windowed, full = (layer_costs(scenario(model=m, **base))
                      for m in (model, model.replace(sliding_window=None, full_attention_every=None)))
    assert windowed.attention_fwd_s < full.attention_fwd_s
    assert windowed.dense_ffn_fwd_s == full.dense_ffn_fwd_s and windowed.router_fwd_s == full.router_fwd_s


def test_model_spec_refuses_inconsistent_structures():
    with pytest.raises(SpecError, match="qk_rope_head_dim: got null; expected an integer >= 1 .multi-head"):
        DSV3.replace(qk_rope_head_dim=None)
    with pytest.raises(SpecError, match="q_lora_rank: got 1536; expected null unless kv_lora_rank is set"):
        DSV3.replace(kv_lora_rank=None)
    with pytest.raises(SpecError, match="num_kv_heads: got 8; expected num_attention_heads .128."):
        DSV3.replace(num_kv_heads=8)
    with pytest.raises(SpecError, match="head_dim: got 128; expected null with multi-head latent attention"):
        DSV3.replace(head_dim=128)
    with pytest.raises(SpecError, match="full_attention_every: got 2; expected null unless sliding_window"):
        GPT_OSS.replace(sliding_window=None)
    with pytest.raises(SpecError, match=r"full_attention_every: got 1; expected an integer in \[2, 4096\] or null"):
        GPT_OSS.replace(full_attention_every=1)
    plain_q = DSV3.replace(q_lora_rank=None)  # DeepSeek-V2-Lite: a plain query projection
    assert plain_q.attention_gemm_params == DSV3.attention_gemm_params - 1536 * (7168 + 128 * 192) + 7168 * 128 * 192


def _ds_scenario(num_layers=4, pp=1, tp=1, mtp=1, ep=None, **kw):
    model = DSV3.replace(num_layers=num_layers, first_k_dense=1, num_experts=16, num_mtp_layers=mtp)
    dp = 8 // (tp * pp)
    lay = ParallelLayout(tp=tp, pp=pp, dp=dp, ep=dp if ep is None else ep)
    return scenario(model=model, layout=lay, global_batch=8, seq_len=1024, **kw)


def test_mla_keeps_its_latents_and_splits_only_the_up_projections_over_tp():
    s = _ds_scenario(mtp=0)
    h, a, tokens = 7168, 128, 1024
    stored = h + a * 192 + a * 192 + a * 128 + a * 128 + 2 * (1536 + 512)  # LN out, Q, K, V, core out, latents
    ffn = (h + 3 * DSV3.dense_ffn_size) * 2 + h
    per_token = 2 * h * 2 + stored * 2 + h + a * 4 + ffn  # norms, attention + mask, fp32 LSE, dense FFN
    assert activation_bytes_per_layer(s, False, 0.0) == tokens * per_token
    tp2 = _ds_scenario(mtp=0, tp=2)
    m, replicated = s.model, DSV3.attention_tp_replicated_params
    assert replicated == 7168 * 1536 + 7168 * (512 + 64) + 1536 + 512
    # tp = 2 halves the attention's up and output projections, the FFNs, shared experts and embeddings; MLA's
    # down projections and latent norms and the router stay whole on every rank
    halved = (4 * (m.attention_params - replicated) + m.ffn_params(m.dense_ffn_size)
              + 3 * m.num_shared_experts * m.ffn_params(m.expert_ffn_size) + 2 * m.embedding_params)
    assert stage_params(s, 0)[0] - stage_params(tp2, 0)[0] == halved / 2


def test_mtp_lives_on_the_last_stage_in_parameters_memory_and_time():
    with_mtp, without = _ds_scenario(pp=2, mtp=1), _ds_scenario(pp=2, mtp=0)
    assert stage_params(with_mtp, 0) == stage_params(without, 0)
    (d1, e1), (d0, e0) = stage_params(with_mtp, 1), stage_params(without, 1)
    m = with_mtp.model
    local_experts = m.num_experts // with_mtp.layout.ep
    assert e1 - e0 == local_experts * m.ffn_params(m.expert_ffn_size)  # the MTP layer is MoE like the last one
    shared_and_router = m.num_shared_experts * m.ffn_params(m.expert_ffn_size) + m.router_params
    assert d1 - d0 == m.mtp_projection_params + m.attention_params + shared_and_router + m.embedding_params
    rows = 1024.0
    extra = rank_memory(with_mtp, 7, rows).activations_bytes - rank_memory(without, 7, rows).activations_bytes
    assert extra > 1024 * m.vocab_size * 4  # its own fp32 softmax over the vocab, plus a whole MoE layer
    assert rank_memory(with_mtp, 0, rows).activations_bytes == rank_memory(without, 0, rows).activations_bytes
    costs, plain = layer_costs(with_mtp), layer_costs(without)
    assert costs.lm_head_fwd_s > 2 * plain.lm_head_fwd_s  # its own pass through the LM head and a layer
    assert costs.lm_head_bwd_s > costs.lm_head_fwd_s
    assert costs.attention_fwd_s == plain.attention_fwd_s  # the other ops are untouched
    assert model_flop_per_token(m, 1024) - model_flop_per_token(without.model, 1024) == \
        pytest.approx(3 * mtp_flop_per_token(m, 1024))


def test_mtp_on_a_single_stage_shares_the_embedding():
    s = _ds_scenario(pp=1, mtp=1, ep=1)
    dense, expert = stage_params(s, 0)
    assert dense + expert == s.model.total_params + s.model.mtp_params  # one rank holds everything: no copies


def test_tied_embeddings_count_once_unless_the_pipeline_needs_a_copy():
    grok = MODEL_PRESETS["grok-1"].replace(num_layers=4, vocab_size=4096, expert_ffn_size=1024)
    one = scenario(model=grok, layout=ParallelLayout(tp=1, pp=1, dp=8, ep=1), global_batch=8)
    assert sum(stage_params(one, 0)) == grok.total_params
    untied = grok.replace(tie_word_embeddings=False)
    assert untied.total_params - grok.total_params == grok.embedding_params
    two = scenario(model=grok, layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4), global_batch=8)
    assert stage_params(two, 1)[0] - stage_params(two, 0)[0] == 0  # the last stage's head is the copy


def test_mla_preset_memory_and_costs_are_finite_under_every_recompute():
    for recompute in Recompute:
        s = _ds_scenario(pp=2, mtp=1, recompute=recompute)
        mem = rank_memory(s, 7, 2048.0)
        assert np.isfinite(mem.total_bytes) and mem.activations_bytes > 0
        assert s.training.dtype is Dtype.BF16
        assert np.isfinite(layer_costs(s).lm_head_bwd_s)
