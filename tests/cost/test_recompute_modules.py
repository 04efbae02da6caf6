"""Selective recompute by module (Megatron-LM --recompute-modules): what each drops from memory and what it
adds to the backward."""

from __future__ import annotations

import pytest

from moesim.cost.memory import activation_bytes_per_layer
from moesim.sim.workload import layer_costs
from moesim.spec import Dtype, Recompute
from moesim.spec.errors import SpecError
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.training import RecomputeModule as M

from cost.test_memory import MIXTRAL, make, with_training


def _selective(sc, *modules):
    return with_training(sc, recompute=Recompute.SELECTIVE, recompute_modules=tuple(modules))


def test_the_default_module_is_megatrons_core_attn_and_changes_nothing_under_flash_attention():
    sc = make(dp=8, ep=8)
    assert sc.training.recompute_modules == (M.CORE_ATTN,)
    assert activation_bytes_per_layer(_selective(sc, M.CORE_ATTN), True, 4096.0) == \
        activation_bytes_per_layer(with_training(sc, recompute=Recompute.NONE), True, 4096.0)


def test_each_module_drops_what_it_recomputes():
    sc, rows = make(dp=8, ep=8), 4096.0
    tokens, h, f, b = sc.tokens_routed_per_rank, MIXTRAL.hidden_size, MIXTRAL.expert_ffn_size, 2
    base = activation_bytes_per_layer(_selective(sc, M.CORE_ATTN), True, rows)
    layernorm = activation_bytes_per_layer(_selective(sc, M.LAYERNORM), True, rows)
    assert base - layernorm == pytest.approx(2 * tokens * h * b)  # the two norms' outputs
    moe_act = activation_bytes_per_layer(_selective(sc, M.MOE_ACT), True, rows)
    assert base - moe_act == pytest.approx(rows * f * b)  # the activation output of every expert row
    moe = activation_bytes_per_layer(_selective(sc, M.MOE), True, rows)
    assert base - moe == pytest.approx(rows * (h + 3 * f) * b + tokens * MIXTRAL.num_experts * 4)
    both = activation_bytes_per_layer(_selective(sc, M.LAYERNORM, M.MOE_ACT), True, rows)
    assert base - both == pytest.approx((base - layernorm) + (base - moe_act))


def test_recomputed_modules_run_their_forward_again_in_the_backward():
    sc = make(dp=8, ep=8)
    plain = layer_costs(_selective(sc, M.CORE_ATTN))
    moe = layer_costs(_selective(sc, M.CORE_ATTN, M.MOE))
    assert moe.router_bwd_s == pytest.approx(plain.router_bwd_s + plain.router_fwd_s)
    assert (plain.expert_rerun_fwd, moe.expert_rerun_fwd) == (0.0, 1.0)
    assert moe.expert_row_memory_bound_bwd_s == pytest.approx(plain.expert_row_memory_bound_bwd_s
                                                              + plain.expert_row_memory_bound_s)
    act = layer_costs(_selective(sc, M.CORE_ATTN, M.MOE_ACT))
    assert act.expert_rerun_fwd == 0.0
    assert act.expert_row_memory_bound_bwd_s == pytest.approx(plain.expert_row_memory_bound_bwd_s
                                                              + plain.expert_row_memory_bound_s)
    norms = layer_costs(_selective(sc, M.CORE_ATTN, M.LAYERNORM))
    assert norms.memory_bound_bwd_s[1] > plain.memory_bound_bwd_s[1]
    no_core = layer_costs(_selective(sc, M.LAYERNORM))
    assert no_core.attention_bwd_s < norms.attention_bwd_s  # the attention core is not recomputed


@pytest.mark.parametrize("changes,expected", [
    (dict(recompute=Recompute.NONE, recompute_modules=(M.MOE_ACT,)), "only with recompute: selective"),
    (dict(recompute=Recompute.SELECTIVE, recompute_modules=(M.MOE_ACT, M.MOE_ACT)), "each module at most once"),
])
def test_bad_module_lists_are_one_line(changes, expected):
    with pytest.raises(SpecError) as err:
        with_training(make(dp=8, ep=8), **changes)
    assert "recompute_modules" in err.value.one_line() and expected in err.value.one_line()


def test_layernorm_and_shared_experts_together_drop_both_under_fp8():
    sc = make(model=MODEL_PRESETS["deepseek-v3"].replace(num_layers=4, num_mtp_layers=0), dp=8, ep=8)
    for dtype in (Dtype.BF16, Dtype.FP8):
        s = with_training(sc, dtype=dtype)
        base = activation_bytes_per_layer(_selective(s, M.CORE_ATTN), True, 0.0)
        each = sum(base - activation_bytes_per_layer(_selective(s, mod), True, 0.0)
                   for mod in (M.LAYERNORM, M.SHARED_EXPERTS))
        both = base - activation_bytes_per_layer(_selective(s, M.LAYERNORM, M.SHARED_EXPERTS), True, 0.0)
        # the shared experts' recomputed input is the norm's bf16 output, which layernorm recompute then drops
        # whole: under fp8 one byte per element more than the norm's fp8 copy it drops alone
        extra = sc.tokens_routed_per_rank * sc.model.hidden_size if dtype is Dtype.FP8 else 0
        assert both == pytest.approx(each + extra), dtype
