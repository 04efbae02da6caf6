"""Peak memory per rank: parameter sharding, dtype scaling, optimizer sharding, recompute, 1F1B, closed forms."""

from __future__ import annotations


import numpy as np
import pytest

from moesim.cost.memory import (MemoryBreakdown, a2a_buffer_bytes, activation_bytes_per_layer,
                                balanced_expert_rows, peak_memory_per_rank, rank_memory, stage_params)
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.spec import (Activation, ClusterSpec, Dtype, MoeModelSpec, OptimizerSpec, ParallelLayout, Recompute,
                         RoutingSpec, Scenario, SimulationSpec, TrainingSpec)
from moesim.spec.presets import MODEL_PRESETS

PROFILE = load_profile(PROFILE_DIR / "dgx-h100.yaml")  # 8 GPUs per node
MIXTRAL = MODEL_PRESETS["mixtral-8x7b"]


def make(model=MIXTRAL, nodes=1, training=None, **layout) -> Scenario:
    training = training or TrainingSpec(global_batch_size=64, seq_len=4096, micro_batch_size=1)
    return Scenario(name="t", cluster=ClusterSpec(PROFILE, nodes), model=model, training=training,
                    layout=ParallelLayout(**layout), routing=RoutingSpec(), simulation=SimulationSpec())


def with_training(scenario: Scenario, **changes) -> Scenario:
    return scenario.replace(training=scenario.training.replace(**changes))


@pytest.mark.parametrize("layout", [dict(dp=8, ep=8), dict(dp=8, ep=4, etp=2), dict(tp=2, dp=4, ep=4),
                                    dict(dp=4, pp=2, ep=4), dict(tp=2, dp=2, pp=2, ep=2, etp=2)])
def test_expert_params_summed_over_shards_and_stages_equal_the_model(layout):
    s = make(**layout)
    m, lay = s.model, s.layout
    expert_total = sum(stage_params(s, st)[1] for st in range(lay.pp)) * lay.ep * lay.etp
    assert expert_total == pytest.approx(m.num_experts * m.ffn_params(m.expert_ffn_size) * m.num_moe_layers)


def test_one_rank_without_sharding_holds_the_whole_model():
    s = make(dp=8, ep=1)
    dense, expert = stage_params(s, 0)
    assert dense + expert == MIXTRAL.total_params


def test_dense_params_sharded_over_tp_except_router():
    s = make(tp=2, dp=4, ep=4)
    m = s.model
    expected = m.num_layers * (m.attention_params / 2 + m.router_params) + 2 * m.embedding_params / 2
    assert stage_params(s, 0)[0] == pytest.approx(expected)


def test_embedding_on_first_stage_lm_head_on_last():
    s = make(dp=2, pp=4, ep=2)
    first, middle, last = (stage_params(s, st)[0] for st in (0, 1, 3))
    assert first - middle == pytest.approx(MIXTRAL.embedding_params)
    assert last - middle == pytest.approx(MIXTRAL.embedding_params)


def test_weights_and_gradients_scale_with_dtype_bytes():
    s = make(dp=8, ep=8)
    bf16 = rank_memory(s, 0, 0.0)
    fp8 = rank_memory(with_training(s, dtype=Dtype.FP8, grad_dtype=Dtype.BF16), 0, 0.0)
    # the fp8 recipe keeps bf16 weights plus an fp8 copy of them: 3 bytes per parameter
    assert fp8.weights_bytes / bf16.weights_bytes == 3 / 2
    assert bf16.gradients_bytes / fp8.gradients_bytes == Dtype.FP32.bytes / Dtype.BF16.bytes
    assert bf16.weights_bytes == sum(stage_params(s, 0)) * Dtype.BF16.bytes


def test_distributed_optimizer_shards_dense_over_dp_and_experts_over_edp():
    s = make(dp=8, ep=4)  # edp = 2
    dense, expert = stage_params(s, 0)
    plain = rank_memory(s, 3, 100.0)
    sharded = rank_memory(with_training(s, optimizer=OptimizerSpec(distributed=True)), 3, 100.0)
    assert plain.optimizer_bytes == pytest.approx(12.0 * (dense + expert))
    assert sharded.optimizer_bytes == pytest.approx(12.0 * (dense / 8 + expert / 2))
    assert sharded.weights_bytes == plain.weights_bytes and sharded.gradients_bytes == plain.gradients_bytes


def test_recompute_full_below_selective_and_flash_attention_keeps_no_scores():
    s = make(dp=8, ep=8)
    act = {r: rank_memory(with_training(s, recompute=r), 0, 4096.0).activations_bytes for r in Recompute}
    # with FlashAttention, recomputing the attention core saves nothing: it stores no s x s scores
    assert act[Recompute.FULL] < act[Recompute.SELECTIVE] == act[Recompute.NONE]


def test_full_recompute_keeps_layer_inputs_plus_one_layer_working_set():
    s = with_training(make(dp=8, ep=8), recompute=Recompute.FULL)
    rows = 5000.0
    flash = with_training(s, recompute=Recompute.SELECTIVE)  # the recomputed layer uses flash attention
    inputs = s.tokens_routed_per_rank * MIXTRAL.hidden_size * Dtype.BF16.bytes
    logits = s.tokens_routed_per_rank * MIXTRAL.vocab_size * Dtype.FP32.bytes
    expected = 32 * inputs + activation_bytes_per_layer(flash, True, rows) + logits
    assert rank_memory(s, 0, rows).activations_bytes == pytest.approx(expected)


def test_korthikanti_closed_form_for_a_gelu_mha_dense_layer():
    # Reference case of Korthikanti et al.: MHA, GELU MLP of width 4h, 2-byte activations, tp with SP.
    model = MoeModelSpec(name="gpt", num_layers=2, hidden_size=1024, num_attention_heads=16, num_kv_heads=16,
                         head_dim=64, dense_ffn_size=4096, expert_ffn_size=1024, num_experts=8, top_k=2,
                         num_shared_experts=0, vocab_size=5000, activation=Activation.GELU, first_k_dense=1)
    tr = TrainingSpec(global_batch_size=8, seq_len=512, micro_batch_size=2)
    s = make(model=model, training=tr, tp=4, dp=2, ep=2)
    sbh_t = 512 * 2 * 1024 / 4
    log_sum_exp = 4 * 16 * 512 * 2 / 4  # fp32 per head and query (FlashAttention): no 5as²b scores
    assert activation_bytes_per_layer(s, False, 0.0) == pytest.approx(34 * sbh_t + log_sum_exp)
    selective = with_training(s, recompute=Recompute.SELECTIVE)
    assert activation_bytes_per_layer(selective, False, 0.0) == pytest.approx(34 * sbh_t + log_sum_exp)


def test_more_micro_batches_in_flight_on_first_stage_than_on_last():
    s = make(dp=2, pp=4, ep=2, training=TrainingSpec(global_batch_size=16, seq_len=4096, micro_batch_size=1))
    rows = 8192.0
    per_layer = activation_bytes_per_layer(s, True, rows)
    first, last = rank_memory(s, 0, rows), rank_memory(s, 7, rows)
    logits = s.tokens_routed_per_rank * MIXTRAL.vocab_size * Dtype.FP32.bytes
    assert first.activations_bytes == pytest.approx(4 * 8 * per_layer)  # pp - 0 = 4 in flight
    assert last.activations_bytes == pytest.approx(1 * 8 * per_layer + logits)
    assert first.activations_bytes > last.activations_bytes
    few = with_training(s, global_batch_size=4)  # 2 micro-batches: the in-flight count is capped at 2
    assert rank_memory(few, 0, rows).activations_bytes == pytest.approx(2 * 8 * per_layer)


def test_hand_computed_tiny_moe_model():
    model = MoeModelSpec(name="tiny", num_layers=2, hidden_size=8, num_attention_heads=2, num_kv_heads=2,
                         head_dim=4, dense_ffn_size=0, expert_ffn_size=16, num_experts=4, top_k=2,
                         num_shared_experts=0, vocab_size=32, activation=Activation.SWIGLU)
    tr = TrainingSpec(global_batch_size=16, seq_len=4, micro_batch_size=1)  # 2 micro-batches per dp rank
    s = make(model=model, training=tr, dp=8, ep=4)  # tp=1, pp=1, 1 local expert, edp=2
    # params: attention 8*(8+2*8) + 8*8 = 256, router 8*4 = 32, per layer; embedding + LM head 2*32*8 = 512
    dense = 2 * (256 + 32) + 512  # 1088
    expert = 2 * 3 * 8 * 16  # one local SwiGLU expert per layer: 768
    assert stage_params(s, 0) == (dense, expert)
    # activations per token (4 tokens), bf16: norms 2*8*2 = 32; attention (8 + 2*8 + 2*8)*2 + 8 mask = 88;
    # router input 8*2 + fp32 logits 4*4 + output mask 8 = 40; log-sum-exp 2 heads * 4 B = 8 (FlashAttention).
    # 12 expert rows * (8 + 3*16)*2 = 1344.  Per layer: 4*(32 + 88 + 40 + 8) + 1344 = 2016.
    assert activation_bytes_per_layer(s, True, 12.0) == 2016
    mem = rank_memory(s, 5, 12.0)
    assert mem.weights_bytes == (1088 + 768) * 2
    assert mem.gradients_bytes == (1088 + 768) * 4
    assert mem.optimizer_bytes == (1088 + 768) * 12
    assert mem.activations_bytes == 2 * 2016 * 1 + 4 * 32 * 4  # 1 in flight (pp=1); fp32 softmax over vocab
    assert mem.a2a_buffers_bytes == (4 * 2 + 12) * 8 * 2  # send 4 tokens * top-2, receive 12 rows
    assert mem.total_bytes == 3712 + 7424 + 22272 + 4544 + 320
    assert mem.as_dict()["total_bytes"] == mem.total_bytes
    assert isinstance(mem, MemoryBreakdown)


def test_peak_memory_per_rank_matches_rank_memory_and_balanced_default():
    s = make(dp=4, pp=2, ep=4)
    rows = np.linspace(1000.0, 9000.0, s.layout.world_size)
    peak = peak_memory_per_rank(s, rows)
    assert peak.shape == (8,)
    for r in range(8):
        assert peak[r] == pytest.approx(rank_memory(s, r, rows[r]).total_bytes)
    balanced = balanced_expert_rows(s)
    assert balanced >= s.tokens_routed_per_rank * MIXTRAL.top_k  # tile padding only adds
    assert np.allclose(peak_memory_per_rank(s), [rank_memory(s, r, balanced).total_bytes for r in range(8)])
    assert a2a_buffer_bytes(s, 0.0) == s.tokens_routed_per_rank * 2 * 4096 * 2


def test_bad_inputs_raise_with_the_values():
    s = make(dp=8, ep=8)
    with pytest.raises(ValueError, match="shape"):
        peak_memory_per_rank(s, np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        peak_memory_per_rank(s, -np.ones(8))
    with pytest.raises(ValueError, match="rank 8"):
        rank_memory(s, 8, 0.0)
    with pytest.raises(ValueError, match="stage 1"):
        stage_params(s, 1)


def test_fp8_keeps_bf16_activations_but_saves_linear_inputs_in_fp8():
    s = make(dp=8, ep=8)
    fp8 = with_training(s, dtype=Dtype.FP8)
    rows = 4096.0
    bf16_layer, fp8_layer = activation_bytes_per_layer(s, True, rows), activation_bytes_per_layer(fp8, True, rows)
    m, tokens = MIXTRAL, s.tokens_routed_per_rank
    # one byte less per element of the QKV and out-projection inputs (per token) and of fc1's and fc2's inputs
    # (per expert row): everything else stays bf16
    saved = tokens * (m.hidden_size + m.num_attention_heads * m.head_dim) + rows * (m.hidden_size + m.expert_ffn_size)
    assert bf16_layer - fp8_layer == pytest.approx(saved)
    assert rank_memory(fp8, 0, rows).a2a_buffers_bytes == rank_memory(s, 0, rows).a2a_buffers_bytes
