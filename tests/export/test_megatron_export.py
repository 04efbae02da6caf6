"""Scenario -> Megatron-LM launch command (megatron_args.txt) and DeepSpeed MoE config: every flag written is a
Megatron-LM flag moesim lists with its source; the command reads back (moesim import megatron) into the same model,
layout, training, gate and comm; what Megatron-LM cannot say is a `# not expressible:` line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import h100, tiny_model
from moesim.cli import main
from moesim.export.megatron import (DEEPSPEED_FILE, MEGATRON_ARGS_FILE, deepspeed_moe_config, megatron_command,
                                    moe_layer_freq, write_megatron_export)
from moesim.export.megatron_flags import MAPPED, MEGATRON_FLAGS, NO_EFFECT, NOT_MODELLED, RENAMED, SOURCES
from moesim.io.megatron_args import MAPPED_FLAGS, moe_layer_pattern, parse_megatron_args, pattern_list
from moesim.loader import load_scenario
from moesim.spec import ClusterSpec, Dtype, ParallelLayout, Scenario, TrainingSpec
from moesim.spec.comm import CommSpec, TokenDispatcher
from moesim.spec.dtype import Fp8Recipe
from moesim.spec.layout import RankOrder
from moesim.spec.model import Activation
from moesim.spec.placement import PlacementPolicyKind, PlacementSpec
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.routing import CapacityScope, DropPolicy, GateSpec, RoutingSpec
from moesim.spec.training import OptimizerSpec, Recompute

ROOT = Path(__file__).resolve().parents[2]
FILES = {"quickstart": ROOT / "scenarios" / "quickstart.yaml",
         "deepseek-v3": ROOT / "validation" / "mbridge-2509-deepseek-v3-h100x1024-fp8cs" / "scenario.yaml",
         "grok-1": ROOT / "validation" / "dgxc-grok1-h100x512-bf16" / "scenario.yaml"}
SECTIONS = ("layout", "training", "gate", "comm")


def _shipped(key: str) -> Scenario:
    return load_scenario(FILES[key])


def _variants() -> dict[str, Scenario]:
    """Scenarios that reach the flags the shipped ones do not: windows and sinks, geglu, fp16, full recompute,
    expert tensor parallelism with the tp-pp-dp order, a capacity factor with padding and position drops, an
    uneven interleaved pipeline, a MoE pattern with a remainder, shared experts, an odd vocabulary."""
    qs = _shipped("quickstart")
    gpt_oss = qs.replace(model=MODEL_PRESETS["gpt-oss-120b"], name="gpt-oss")
    fp16 = qs.replace(
        name="fp16-geglu", model=qs.model.replace(activation=Activation.GEGLU),
        layout=ParallelLayout(tp=2, pp=2, dp=4, ep=2, etp=1, order=RankOrder.TP_CP_EP_PP_DP),
        training=TrainingSpec(global_batch_size=32, seq_len=4096, micro_batch_size=2, dtype=Dtype.FP16,
                              recompute=Recompute.FULL, optimizer=OptimizerSpec(distributed=True)),
        gate=GateSpec(capacity_factor=1.25, pad_to_capacity=True, drop_policy=DropPolicy.POSITION),
        comm=CommSpec(dispatcher=TokenDispatcher.ALLGATHER, tp_comm_overlap=True, overlap_grad_reduce=True))
    tiny = Scenario(
        name="tiny-pattern", cluster=ClusterSpec(h100(), 1),
        model=tiny_model(num_layers=10, first_k_dense=1, moe_every=2, num_shared_experts=2, num_mtp_layers=2),
        training=TrainingSpec(global_batch_size=16, seq_len=256, micro_batch_size=1, dtype=Dtype.FP8,
                              fp8_recipe=Fp8Recipe.BLOCKWISE, grad_dtype=Dtype.BF16),
        layout=ParallelLayout(tp=1, pp=2, dp=4, ep=2, etp=2, vpp=2, first_stage_layers=4, last_stage_layers=6),
        comm=CommSpec(dispatcher=TokenDispatcher.FLEX, shared_expert_overlap=True, moe_a2a_overlap=True))
    return {"gpt-oss": gpt_oss, "fp16-geglu": fp16, "tiny-pattern": tiny}


def _all() -> dict[str, Scenario]:
    return {**{key: _shipped(key) for key in FILES}, **_variants()}


def _shape(model) -> dict:
    return {k: v for k, v in model.model_dump().items() if k not in ("name", "source", "preset")}


def _read_back(sc: Scenario):
    return parse_megatron_args(megatron_command(sc).text(), MEGATRON_ARGS_FILE, name=sc.name, base_dir=ROOT,
                               profile="dgx-h100")


@pytest.fixture(scope="module")
def scenarios() -> dict[str, Scenario]:
    return _all()


@pytest.mark.parametrize("key", [*FILES, "gpt-oss", "fp16-geglu", "tiny-pattern"])
def test_export_then_import_gives_the_same_scenario(scenarios, key):
    sc = scenarios[key]
    back = _read_back(sc).scenario
    assert _shape(back.model) == _shape(sc.model)
    for section in SECTIONS:
        assert getattr(back, section) == getattr(sc, section), section
    assert back.cluster.nodes == sc.cluster.nodes


def test_every_exported_flag_is_a_listed_megatron_flag(scenarios):
    written = set()
    for sc in scenarios.values():
        flags = megatron_command(sc).flags
        assert len(flags) == len(set(flags)), "a flag written twice"
        written |= set(flags)
    unlisted = sorted(f for f in written if f not in MEGATRON_FLAGS)
    assert not unlisted, unlisted
    assert all(MEGATRON_FLAGS[f].role == MAPPED for f in written)
    # the variants reach the flags the shipped scenarios do not
    for flag in ("--window-size", "--window-attn-skip-freq", "--softmax-type", "--quick-geglu", "--fp16",
                 "--accumulate-allreduce-grads-in-fp32", "--use-tp-pp-dp-mapping", "--moe-expert-capacity-factor",
                 "--num-virtual-stages-per-pipeline-rank", "--decoder-first-pipeline-num-layers",
                 "--make-vocab-size-divisible-by", "--moe-shared-expert-overlap", "--recompute-method"):
        assert flag in written, flag


def test_the_flag_list_names_its_sources_and_matches_what_the_importer_reads():
    assert {f.source for f in MEGATRON_FLAGS.values()} <= set(SOURCES)
    assert all(name == f.name and name.startswith("--") for name, f in MEGATRON_FLAGS.items())
    assert {f.role for f in MEGATRON_FLAGS.values()} == {MAPPED, RENAMED, NOT_MODELLED, NO_EFFECT}
    listed_as_read = {n for n, f in MEGATRON_FLAGS.items() if f.role == MAPPED}
    read_renamed = {n for n, f in MEGATRON_FLAGS.items() if f.role == RENAMED} & MAPPED_FLAGS
    assert MAPPED_FLAGS - read_renamed == listed_as_read
    assert MAPPED_FLAGS <= set(MEGATRON_FLAGS)


def test_quickstart_flags_are_exactly_these():
    cmd = megatron_command(_shipped("quickstart"))
    assert cmd.env == ("CUDA_DEVICE_MAX_CONNECTIONS=1",)
    assert cmd.launcher == ("torchrun", "--nnodes", "2", "--nproc-per-node", "8", "pretrain_gpt.py")
    assert dict(cmd.args) == {
        "--tensor-model-parallel-size": ("2",), "--pipeline-model-parallel-size": ("2",),
        "--context-parallel-size": ("1",), "--expert-model-parallel-size": ("8",),
        "--expert-tensor-parallel-size": ("1",), "--sequence-parallel": (), "--num-layers": ("32",),
        "--hidden-size": ("4096",), "--num-attention-heads": ("32",), "--group-query-attention": (),
        "--num-query-groups": ("8",), "--kv-channels": ("128",), "--ffn-hidden-size": ("14336",), "--swiglu": (),
        "--normalization": ("RMSNorm",), "--position-embedding-type": ("rope",),
        "--max-position-embeddings": ("4096",), "--vocab-size": ("32000",),
        "--untie-embeddings-and-output-weights": (), "--disable-bias-linear": (), "--num-experts": ("8",),
        "--moe-router-topk": ("2",), "--moe-ffn-hidden-size": ("14336",), "--moe-layer-freq": ("1",),
        "--moe-grouped-gemm": (), "--moe-token-dispatcher-type": ("alltoall",), "--moe-token-drop-policy": ("probs",),
        "--moe-router-load-balancing-type": ("aux_loss",), "--moe-aux-loss-coeff": ("0.01",),
        "--micro-batch-size": ("1",), "--global-batch-size": ("32",), "--seq-length": ("4096",), "--bf16": (),
        "--recompute-granularity": ("selective",), "--recompute-modules": ("core_attn",),
        "--use-distributed-optimizer": ()}
    assert cmd.not_expressible[0].startswith("routing zipf s = 0.5 is the skew moesim assumed")


def test_the_file_is_a_shell_command_bash_splits_into_these_words(tmp_path, scenarios):
    """bash itself reads the file (comments, continuations, quoting of `([0]*3+[1]*58)`): torchrun is a function
    that prints its arguments."""
    for sc in scenarios.values():
        cmd = megatron_command(sc)
        path = tmp_path / f"{sc.name}.txt"
        path.write_text(cmd.text())
        out = subprocess.run(["bash", "-c", 'torchrun() { printf "%s\\n" "$@"; }; source "$1"', "bash", str(path)],
                             capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
        words = [w for flag, values in cmd.args for w in (flag, *values)]
        assert out.stdout.splitlines() == [*cmd.launcher[1:], *words]


def test_what_megatron_cannot_say_is_a_not_expressible_line():
    qs = _shipped("quickstart")
    sc = qs.replace(
        name="gaps", placement=PlacementSpec(policy=PlacementPolicyKind.FLEXMOE),
        gate=GateSpec(capacity_factor=1.0, scope=CapacityScope.GLOBAL, min_capacity=4,
                      drop_policy=DropPolicy.POSITION, first_choice_priority=True),
        routing=RoutingSpec(preset="no-aux-collapse"),
        training=qs.training.replace(dtype=Dtype.FP8, fp8_recipe=Fp8Recipe.BLOCKWISE, fp8_dispatch=True,
                                     grad_dtype=Dtype.FP16, optimizer=OptimizerSpec(state_bytes_per_param=3.0,
                                                                                    distributed=True)),
        comm=CommSpec(overlap_param_gather=True, moe_a2a_overlap=True))
    text = megatron_command(sc).text()
    gaps = [line for line in text.splitlines() if line.startswith("# not expressible: ")]
    for needle in ("placement.policy flexmoe", "gate.scope global", "gate.min_capacity 4",
                   "gate.first_choice_priority", "training.fp8_dispatch", "training.grad_dtype fp16",
                   "state_bytes_per_param 3", "(preset no-aux-collapse) is the skew moesim assumed",
                   "--overlap-param-gather without --overlap-grad-reduce",
                   "--overlap-moe-expert-parallel-comm with pipeline parallelism without virtual stages"):
        assert sum(needle in g for g in gaps) == 1, needle
    assert "--moe-router-load-balancing-type none" in text
    # Adam state other than 12 bytes: the precision-aware optimizer's dtypes, when some mix makes it
    lean = qs.replace(training=qs.training.replace(optimizer=OptimizerSpec(state_bytes_per_param=8.0)))
    assert dict(megatron_command(lean).args)["--exp-avg-dtype"] == ("bf16",)
    assert _read_back(lean).scenario.training == lean.training
    adaptive = qs.replace(gate=GateSpec(capacity_factor=0.0))
    assert "--moe-expert-capacity-factor" not in megatron_command(adaptive).flags
    assert any("adaptive capacity" in g for g in megatron_command(adaptive).not_expressible)


@pytest.mark.parametrize("layers,first,every", [(32, 0, 1), (32, 0, 2), (61, 3, 1), (10, 1, 2), (27, 2, 5),
                                                (9, 1, 4), (4, 3, 1)])
def test_moe_layer_freq_reads_back_to_the_same_pattern(layers, first, every):
    model = tiny_model(num_layers=layers, first_k_dense=first, moe_every=every)
    text = moe_layer_freq(model)
    if first == 0:
        assert text == str(every)
        return
    assert set(text) <= set("0123456789,[]()+*")  # what Megatron-LM's _eval_pattern allows
    pattern = pattern_list(text, "--moe-layer-freq", layers, "test")
    assert pattern == [int(model.is_moe_layer(i)) for i in range(layers)]
    assert moe_layer_pattern(pattern, "--moe-layer-freq", text, "test") == (first, every)


def test_deepspeed_config_says_what_it_can_and_lists_the_rest(scenarios):
    qs = deepspeed_moe_config(scenarios["quickstart"])
    assert qs["ds_config"] == {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 1,
                               "gradient_accumulation_steps": 8, "bf16": {"enabled": True},
                               "zero_optimization": {"stage": 1}}
    assert {k: qs["moe_layer"][k] for k in ("num_experts", "ep_size", "k", "drop_tokens", "hidden_size")} == \
        {"num_experts": 8, "ep_size": 8, "k": 2, "drop_tokens": False, "hidden_size": 4096}
    grok = deepspeed_moe_config(scenarios["grok-1"])
    assert grok["moe_layer"]["drop_tokens"] is True and grok["moe_layer"]["capacity_factor"] == 1.0
    assert grok["ds_config"]["gradient_accumulation_steps"] == 1024 // 8
    assert any("drop order" in g for g in grok["not_expressible"])
    deepseek = deepspeed_moe_config(scenarios["deepseek-v3"])
    assert any("1 shared experts" in g for g in deepseek["not_expressible"])
    assert any("dispatcher flex" in g for g in deepseek["not_expressible"])
    for config in (qs, grok, deepseek):
        json.dumps(config, allow_nan=False)
        assert config["not_expressible"][-1].startswith("routing ")


def test_write_megatron_export_writes_both_files(tmp_path, scenarios):
    paths = write_megatron_export(tmp_path / "out", scenarios["deepseek-v3"])
    assert [p.name for p in paths] == [MEGATRON_ARGS_FILE, DEEPSPEED_FILE]
    assert "'([0]*3+[1]*58)'" in paths[0].read_text()
    assert json.loads(paths[1].read_text())["moe_layer"]["num_experts"] == 256
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([MEGATRON_ARGS_FILE, DEEPSPEED_FILE])


@pytest.mark.parametrize("key", list(FILES))
def test_cli_import_of_the_exported_file_loads_as_the_same_scenario(tmp_path, capsys, key):
    sc = _shipped(key)
    write_megatron_export(tmp_path, sc)
    out = tmp_path / "imported.yaml"
    assert main(["import", "megatron", str(tmp_path / MEGATRON_ARGS_FILE), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}: ")
    # the exporter writes only flags the importer reads: the warnings are the routing note and Megatron's refusals
    assert all(": routing: preset" in line or "Megatron-LM refuses" in line
               for line in captured.err.strip().splitlines()), captured.err
    back = load_scenario(out)
    assert _shape(back.model) == _shape(sc.model)
    for section in SECTIONS:
        assert getattr(back, section) == getattr(sc, section), section
    assert back.cluster.num_gpus == sc.cluster.num_gpus
