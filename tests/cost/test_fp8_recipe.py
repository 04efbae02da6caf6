"""fp8 recipes (Megatron-LM --fp8-recipe): the scaling overheads as memory-bound bytes and kernels, the fp8
dispatch payload, and the recipe's place in the training spec. Expectations are closed forms written out."""

from __future__ import annotations

import pytest

from moesim.cost import ops
from moesim.spec import Dtype, ParallelLayout, TrainingSpec
from moesim.spec.dtype import Fp8Recipe
from moesim.spec.errors import SpecError
from moesim.spec.presets import MODEL_PRESETS

from helpers import scenario, tiny_model

# tiny_model: h 512, 8 heads (MHA) x 64, SwiGLU, expert and dense FFN 1024, 8 experts top-2. helpers.scenario:
# seq 256, micro-batch 1, tp 1 pp 2 dp 4 ep 4 -> 256 tokens per rank and micro-batch, 2 local experts.
T, H, F = 256, 512, 1024
CAST = {Fp8Recipe.DELAYED: 4.0, Fp8Recipe.TENSORWISE: 6.0, Fp8Recipe.BLOCKWISE: 4.0625, Fp8Recipe.MXFP8: 4.0625}
AMAX_ENTRY = 16  # delayed: read + write a 1-long fp32 history, write scale and inverse scale


def fp8(sc, recipe=Fp8Recipe.DELAYED, **changes):
    return sc.replace(training=sc.training.replace(dtype=Dtype.FP8, fp8_recipe=recipe, **changes))


@pytest.mark.parametrize("recipe, cast, weight", [
    (Fp8Recipe.DELAYED, 2 + 2 * 1, 2 + 2 * 1),  # read bf16; write fp8 + its transposed copy
    (Fp8Recipe.TENSORWISE, 2 * 2 + 2 * 1, 2 * 2 + 2 * 1),  # an extra read for the amax
    (Fp8Recipe.BLOCKWISE, 2 + 2 * (1 + 4 / 128), 2 + 2 * (1 + 4 / (128 * 128))),  # fp32 per 1x128 / 128x128
    (Fp8Recipe.MXFP8, 2 + 2 * (1 + 1 / 32), 2 + 2 * (1 + 1 / 32)),  # E8M0 byte per 1x32
])
def test_bytes_per_element_of_each_recipe(recipe, cast, weight):
    assert ops.cast_bytes_per_element(recipe) == cast == CAST[recipe]
    assert ops.weight_cast_bytes_per_element(recipe) == weight


@pytest.mark.parametrize("recipe", list(Fp8Recipe))
def test_one_layers_overhead_bytes_per_recipe(recipe):
    fwd, bwd = ops.fp8_overhead_bytes(fp8(scenario(), recipe))
    c, amax = CAST[recipe], recipe is Fp8Recipe.DELAYED
    # forward: inputs of QKV (h) and out-proj (8 x 64); fc1 (h) and fc2 (F); backward: output gradients of QKV
    # (3 x 512), out-proj (h), fc1 (gate + up, 2F) and fc2 (h). Delayed: 3 (fwd) / 2 (bwd) amax entries per GEMM.
    assert fwd["attention"] == c * T * (512 + 512) + amax * 2 * 3 * AMAX_ENTRY
    assert bwd["attention"] == c * T * (1536 + 512) + amax * 2 * 2 * AMAX_ENTRY
    assert fwd["dense"] == c * T * (H + F) + amax * 2 * 3 * AMAX_ENTRY
    assert bwd["dense"] == c * T * (2 * F + H) + amax * 2 * 2 * AMAX_ENTRY
    assert fwd["row"] == c * (H + F) and bwd["row"] == c * (2 * F + H)
    # no shared experts: only the amax entries of the 2 local experts' fc1 and fc2
    assert fwd["moe"] == amax * 4 * 3 * AMAX_ENTRY and bwd["moe"] == amax * 4 * 2 * AMAX_ENTRY


def test_delayed_numbers_written_out():
    fwd, bwd = ops.fp8_overhead_bytes(fp8(scenario()))
    assert (fwd["attention"], bwd["attention"], fwd["row"], bwd["row"]) == (1_048_672, 2_097_216, 6144, 10240)


def test_tensor_parallel_and_mla_linears():
    """tp 2: QKV and out-proj see all 256 tokens with half the width each; MLA's down projections run on the
    rank's own 128 tokens (whole weights), its up projections on all tokens with half the heads."""
    model = tiny_model(head_dim=None, kv_lora_rank=128, q_lora_rank=256, qk_nope_head_dim=32, qk_rope_head_dim=16,
                       v_head_dim=32)
    sc = fp8(scenario(model=model, layout=ParallelLayout(tp=2, pp=1, dp=4, ep=4)), Fp8Recipe.TENSORWISE)
    fwd, bwd = ops.fp8_overhead_bytes(sc)
    q_down, q_up, kv_down, kv_up, out = 128 * 512, 256 * 256, 128 * 512, 256 * 128, 256 * 8 * 32 / 2
    assert fwd["attention"] == 6 * (q_down + q_up + kv_down + kv_up + out)
    grads = 128 * 256 + 256 * 8 * 48 / 2 + 128 * (128 + 16) + 256 * 8 * (32 + 32) / 2 + 256 * 512
    assert bwd["attention"] == 6 * grads


def test_memory_bound_bytes_add_the_casts_to_each_op_and_expert_rows_include_their_input_cast():
    bf16, sc = scenario(), fp8(scenario(), Fp8Recipe.BLOCKWISE)
    base, mb = ops.memory_bound_bytes(bf16), ops.memory_bound_bytes(sc)
    fwd, bwd = ops.fp8_overhead_bytes(sc)
    assert mb.expert_row_bytes - base.expert_row_bytes == 4.0625 * (H + F)  # fc1's input h and fc2's input F
    assert mb.expert_row_bwd_bytes == 2 * base.expert_row_bytes + 4.0625 * (2 * F + H)
    assert mb.attention_bytes - base.attention_bytes == fwd["attention"]
    assert mb.attention_bwd_bytes == 2 * base.attention_bytes + bwd["attention"]
    assert mb.moe_bytes == base.moe_bytes and mb.moe_bwd_bytes == 2 * base.moe_bytes  # no amax, no shared experts
    assert base.attention_bwd_bytes == 2 * base.attention_bytes  # bf16: the backward is twice the forward
    assert ops.memory_bound_bytes(sc, fp8_gemms=False) == base  # the fp8 casts only with fp8 GEMMs


def test_dispatch_and_combine_row_bytes():
    v3 = MODEL_PRESETS["deepseek-v3"]  # hidden 7168
    bf16 = TrainingSpec(global_batch_size=8, seq_len=4096, micro_batch_size=1)
    blockwise = bf16.replace(dtype=Dtype.FP8, fp8_recipe=Fp8Recipe.BLOCKWISE)
    dispatch = blockwise.replace(fp8_dispatch=True)
    assert ops.dispatch_row_bytes(v3, bf16) == ops.combine_row_bytes(v3, bf16) == 7168 * 2
    assert ops.dispatch_row_bytes(v3, blockwise) == 7168 * 2  # fp8 GEMMs alone send bf16 rows
    assert ops.dispatch_row_bytes(v3, dispatch) == 7168 + 7168 / 128 * 4 == 7392  # DeepEP: h + (h/128)*4
    assert ops.dispatch_row_bytes(v3, dispatch) / (7168 * 2) == pytest.approx(0.516, abs=1e-3)  # fidelity.md §3
    assert ops.combine_row_bytes(v3, dispatch) == 7168 * 2  # the combine stays bf16


def test_fp8_dispatch_casts_each_token_once_and_rows_only_make_the_transposed_copy():
    blockwise = fp8(scenario(), Fp8Recipe.BLOCKWISE)
    sc = fp8(scenario(), Fp8Recipe.BLOCKWISE, fp8_dispatch=True)
    (fwd, bwd), (fwd0, bwd0) = ops.fp8_overhead_bytes(sc), ops.fp8_overhead_bytes(blockwise)
    token_cast = T * H * (2 + 1 + 4 / 128)  # sender: read bf16, write the fp8 row and its 1x128 scales
    requant = 2 * (1 + 4 / 128)  # receiver: read the fp8 row, write the column-wise copy
    assert fwd["moe"] - fwd0["moe"] == bwd["moe"] - bwd0["moe"] == token_cast
    assert fwd["row"] == H * requant + F * 4.0625  # fc1's input arrives in fp8; fc2's is cast as before
    assert bwd["row"] == 2 * F * 4.0625 + H * requant  # fc2's output gradient arrives in fp8 (DeepSeek-V3 §3.3)
    # permute and unpermute move dispatch rows and combine rows: (T + 2T) rows of each
    saved = ops.memory_bound_bytes(blockwise).moe_bytes - ops.memory_bound_bytes(sc).moe_bytes
    assert saved == (T + 2 * T) * (2 * H - (H + H / 128 * 4)) - token_cast


def test_kernel_counts_per_recipe():
    base = ops.kernel_counts(scenario())
    assert (base.attention, base.moe, base.attention_bwd, base.moe_bwd, base.amax_update) == (6, 10, 12, 20, 0)
    delayed = ops.kernel_counts(fp8(scenario()))
    # one cast per linear input (forward) and per output gradient (backward): QKV, out-proj; fc1, fc2
    assert (delayed.attention, delayed.attention_bwd, delayed.moe, delayed.moe_bwd) == (8, 14, 12, 22)
    assert delayed.amax_update == 1
    current = ops.kernel_counts(fp8(scenario(), Fp8Recipe.TENSORWISE))
    assert (current.attention, current.dense_mlp, current.moe_bwd, current.amax_update) == (12, 11, 26, 0)
    dispatch = ops.kernel_counts(fp8(scenario(), Fp8Recipe.BLOCKWISE, fp8_dispatch=True))
    assert (dispatch.moe, dispatch.moe_bwd) == (13, 23)  # + the sender's per-token cast


@pytest.mark.parametrize("recipe, per_element, kernels", [(Fp8Recipe.DELAYED, 4.0, 1), (Fp8Recipe.TENSORWISE, 6.0, 3)])
def test_weight_casts_once_per_step(recipe, per_element, kernels):
    sc = fp8(scenario(), recipe)
    attention = 512 * 1536 + 512 * 512
    expert = 3 * 512 * 1024  # two local experts, each fc1 (gate + up) and fc2
    moe = ops.fp8_weight_casts(sc, moe=True)
    assert moe.bytes == per_element * (attention + 2 * expert) and moe.kernels == (2 + 2 * 2) * kernels
    dense = ops.fp8_weight_casts(sc, moe=False)
    assert dense.bytes == per_element * (attention + 3 * 512 * 1024) and dense.kernels == 4 * kernels
    assert ops.fp8_weight_casts(scenario(), moe=True) == ops.WeightCasts(0.0, 0)


def test_recipe_defaults_to_megatrons_and_is_refused_without_fp8():
    tr = TrainingSpec(global_batch_size=8, seq_len=64, micro_batch_size=1)
    assert tr.fp8_recipe is Fp8Recipe.DELAYED and tr.fp8_dispatch is False
    with pytest.raises(SpecError) as info:
        tr.replace(fp8_recipe=Fp8Recipe.BLOCKWISE)
    assert info.value.key == "fp8_recipe" and "dtype: fp8" in str(info.value) and "\n" not in str(info.value)
    for changes in (dict(fp8_dispatch=True), dict(dtype=Dtype.FP8, fp8_dispatch=True),
                    dict(dtype=Dtype.FP8, fp8_recipe=Fp8Recipe.TENSORWISE, fp8_dispatch=True)):
        with pytest.raises(SpecError) as info:
            tr.replace(**changes)
        assert info.value.key == "fp8_dispatch" and "blockwise" in str(info.value)


def test_memory_counts_scales_of_saved_inputs_and_fp8_dispatch_keeps_the_bf16_combine_buffers():
    from moesim.cost.memory import a2a_buffer_bytes, activation_bytes_per_layer

    rows = 1024.0
    delayed, blockwise = fp8(scenario(), Fp8Recipe.DELAYED), fp8(scenario(), Fp8Recipe.BLOCKWISE)
    # saved fp8 inputs (QKV's h and out-proj's 512 per token; fc1's h and fc2's F per row) gain 4/128 B each
    extra = (T * (H + 512) + rows * (H + F)) * 4 / 128
    assert activation_bytes_per_layer(blockwise, True, rows) - activation_bytes_per_layer(delayed, True, rows) \
        == pytest.approx(extra)
    dispatch = fp8(scenario(), Fp8Recipe.BLOCKWISE, fp8_dispatch=True)
    assert a2a_buffer_bytes(dispatch, rows) == a2a_buffer_bytes(scenario(), rows) == (T * 2 + rows) * H * 2


def test_memory_bound_bytes_follow_the_training_dtypes_activations():
    """fp32 training keeps fp32 activations between kernels: twice bf16's bytes in every activation-sized term (the
    router's logits and the cross-entropy are fp32 in both); fp8 and fp16 keep 2-byte activations like bf16."""
    bf16 = scenario()
    prof = bf16.cluster.profile
    gpu = prof.gpu.replace(peak_flop_per_s={**prof.gpu.peak_flop_per_s, Dtype.FP32: 67e12})  # H100 SXM fp32
    fp32 = bf16.replace(cluster=bf16.cluster.replace(profile=prof.replace(gpu=gpu)),
                        training=bf16.training.replace(dtype=Dtype.FP32))
    fp16 = bf16.replace(training=bf16.training.replace(dtype=Dtype.FP16))
    b, f = ops.memory_bound_bytes(bf16), ops.memory_bound_bytes(fp32)
    assert f.norm_bytes == 2 * b.norm_bytes == 2 * (2 * T * H * 2)  # read + write, 4 bytes an element
    assert f.attention_bytes == 2 * b.attention_bytes and f.expert_row_bytes == 2 * b.expert_row_bytes
    assert f.moe_bytes > b.moe_bytes and f.lm_head_bytes - b.lm_head_bytes == b.norm_bytes
    assert ops.memory_bound_bytes(fp16) == b
    assert ops.memory_bound_bytes(fp8(bf16), fp8_gemms=False) == b
