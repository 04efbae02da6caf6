"""`moesim import megatron`: a Megatron-LM command line or arguments file -> a scenario YAML. Shell syntax, Megatron's
defaults and renamed flags, the world size, reported flags, one-line errors for bad or contradicting values and
hostile files, and the CLI's refusal to overwrite."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moesim.cli import main
from moesim.export.megatron_flags import flag_line
from moesim.io.megatron_args import parse_megatron_args, tokenize
from moesim.loader import load_scenario
from moesim.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]

# Like NVIDIA/Megatron-LM examples/mixtral/train_mixtral_8x7b_distributed.sh, on 2 nodes
MIXTRAL = r"""#!/bin/bash
export CUDA_DEVICE_MAX_CONNECTIONS=1   # a separate command: skipped
torchrun --nproc_per_node 8 --nnodes 2 --node_rank $NODE_RANK --master_addr $MASTER_ADDR --master_port 6000 \
    pretrain_gpt.py \
    --use-mcore-models --disable-bias-linear \
    --seq-length 4096 --max-position-embeddings 32768 \
    --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336 --num-attention-heads 32 \
    --normalization RMSNorm --position-embedding-type rope --swiglu --untie-embeddings-and-output-weights \
    --group-query-attention --num-query-groups 8 \
    --num-experts 8 --moe-router-load-balancing-type aux_loss --moe-router-topk 2 --moe-aux-loss-coeff 1e-2 \
    --moe-grouped-gemm --moe-token-dispatcher-type alltoall \
    --overlap-grad-reduce --overlap-param-gather \
    --micro-batch-size 1 --global-batch-size 256 \
    --lr 1e-4 --train-iters 500000 --lr-decay-style cosine \
    --bf16 --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --expert-model-parallel-size 8 \
    --expert-tensor-parallel-size 1 --use-distributed-optimizer --sequence-parallel \
    --tokenizer-type Llama2Tokenizer --tokenizer-model ${TOKENIZER_MODEL} --vocab-size 32000 \
    --data-path $DATA_PATH --split 99990,8,2 --tensorboard-dir "${CHECKPOINT_PATH}/tensorboard" \
    --frobnicate 3 2>&1 | tee log.txt
"""
# the smallest valid flag set (a tiny model on one 8-GPU node)
BASE = ("--num-layers 4 --hidden-size 512 --num-attention-heads 8 --seq-length 256 --micro-batch-size 1 "
        "--num-experts 8 --vocab-size 1024 --bf16 --disable-bias-linear --moe-grouped-gemm")


def _read(text: str, nodes: int | None = 1, profile: str = "dgx-h100"):
    return parse_megatron_args(text, "args.txt", name="t", base_dir=ROOT, profile=profile, nodes=nodes)


def _error(text: str, nodes: int | None = 1) -> str:
    with pytest.raises(SpecError) as info:
        _read(text, nodes)
    line = info.value.one_line()
    assert "\n" not in line and line.startswith("args.txt: ")
    return line


def test_a_megatron_example_script_reads_into_the_mixtral_scenario():
    result = _read(MIXTRAL, nodes=None)  # the world size from torchrun: 2 nodes x 8
    sc = result.scenario
    assert result.doc["model"] == {"preset": "mixtral-8x7b"}
    assert (sc.cluster.nodes, sc.layout.tp, sc.layout.pp, sc.layout.dp, sc.layout.ep, sc.layout.etp) == \
        (2, 2, 2, 4, 8, 1)
    assert (sc.training.global_batch_size, sc.training.seq_len, sc.training.dtype.value) == (256, 4096, "bf16")
    assert sc.training.optimizer.distributed and sc.comm.overlap_grad_reduce and sc.comm.overlap_param_gather
    assert sc.comm.dispatcher.value == "alltoall" and sc.gate.capacity_factor is None
    assert result.doc["routing"] == {"preset": "aux-loss"}
    assert result.unmapped == ("--use-mcore-models", "--lr", "--train-iters", "--lr-decay-style", "--tokenizer-type",
                               "--tokenizer-model", "--data-path", "--split", "--tensorboard-dir", "--frobnicate")
    assert any(w.startswith("line 2: skipped `export CUDA_DEVICE_MAX_CONNECTIONS=1`") for w in result.warnings)
    assert flag_line("--frobnicate").startswith("unknown flag")
    assert flag_line("--lr").startswith("ignored: no effect on a simulated step")
    assert flag_line("--moe-router-score-function").startswith("ignored: not modelled by moesim")


def test_shell_syntax_quotes_comments_continuations_and_equals():
    text = ("# a comment line\n"
            "A=1 B='x y' python -m torch.distributed.run --nnodes=1 --nproc-per-node=8 /opt/Megatron/pretrain_gpt.py "
            "\\\n  --num-layers=4 --hidden-size \"512\" --num-attention-heads '8' # trailing comment\n"
            "--seq-length 256 --micro-batch-size 1 --num-experts 8 --vocab-size 1024 --bf16 \\\n"
            "  --moe-layer-freq \"([0]*1+[1]*3)\" --disable-bias-linear --moe-grouped-gemm --ffn-hidden-size 2048 \\\n"
            "  --tensorboard-dir \"/a b/c\" > out.log 2>&1\n")
    words = [t.text for command in tokenize(text, "x") for t in command]
    assert "/a b/c" in words and "x y" not in words and "B=x y" in words and "out.log" not in words
    result = _read(text, nodes=None)
    model = result.scenario.model
    assert (model.num_layers, model.hidden_size, model.first_k_dense, model.moe_every) == (4, 512, 1, 1)
    assert model.dense_ffn_size == 2048 and result.scenario.cluster.nodes == 1


def test_absent_flags_take_megatrons_defaults():
    result = _read(BASE.replace("--bf16 ", "") + " --fp16 --tensor-model-parallel-size 2 --sequence-parallel "
                   "--expert-model-parallel-size 4")
    sc = result.scenario
    assert sc.layout.etp == 2  # --expert-tensor-parallel-size defaults to the tp
    assert sc.comm.dispatcher.value == "allgather" and sc.model.top_k == 2
    assert sc.model.head_dim == 64 and sc.model.num_kv_heads == 8 and sc.model.activation.value == "gelu"
    assert sc.model.tie_word_embeddings and sc.gate.drop_policy.value == "probs"
    assert sc.training.dtype.value == "fp16" and sc.training.grad_dtype.value == "fp16"
    assert sc.training.global_batch_size == sc.layout.dp  # micro x dp
    assert result.doc["routing"] == {"preset": "no-aux-collapse"}  # aux-loss coefficient 0.0: nothing balances
    assert any("Megatron-LM refuses expert parallelism in fp16" in w for w in result.warnings)


@pytest.mark.parametrize("old,new,warned", [
    ("--batch-size 2", "--micro-batch-size 2", "--batch-size"),
    ("--model-parallel-size 2 --sequence-parallel", "--tensor-model-parallel-size 2 --sequence-parallel",
     "--model-parallel-size"),
    ("--pipeline-model-parallel-size 2 --virtual-pipeline-model-parallel-size 2 --global-batch-size 8",
     "--pipeline-model-parallel-size 2 --num-virtual-stages-per-pipeline-rank 2 --global-batch-size 8",
     "--virtual-pipeline-model-parallel-size"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 1 --global-batch-size 8",
     "--pipeline-model-parallel-size 2 --num-virtual-stages-per-pipeline-rank 2 --global-batch-size 8", None),
    ("--tensor-model-parallel-size 2 --sequence-parallel --expert-model-parallel-size 2 --moe-extended-tp",
     "--tensor-model-parallel-size 2 --sequence-parallel --expert-model-parallel-size 1 "
     "--expert-tensor-parallel-size 4", "--moe-extended-tp"),
    ("--moe-enable-deepep --expert-model-parallel-size 8", "--moe-token-dispatcher-type flex "
     "--moe-flex-dispatcher-backend deepep --expert-model-parallel-size 8", "--moe-enable-deepep"),
    ("--moe-token-dispatcher-type alltoall_seq", "--moe-token-dispatcher-type alltoall",
     "--moe-token-dispatcher-type alltoall_seq"),
    ("--moe-layer-recompute", "--recompute-granularity selective --recompute-modules core_attn moe",
     "--moe-layer-recompute"),
    ("--checkpoint-activations", "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1",
     "--checkpoint-activations"),
    ("--recompute-activations", "--recompute-granularity selective", None),
])
def test_renamed_flags_read_as_their_new_names(old, new, warned):
    base = BASE.replace("--micro-batch-size 1 ", "")
    base += "" if old.startswith("--batch-size") else " --micro-batch-size 1"
    by_old, by_new = _read(f"{base} {old}"), _read(f"{base} {new}")
    for section in ("model", "layout", "training", "gate", "comm"):
        assert getattr(by_old.scenario, section) == getattr(by_new.scenario, section), section
    assert warned is None or sum(w.startswith(warned) for w in by_old.warnings) == 1


def test_an_old_and_a_new_name_with_different_values_contradict():
    assert "--batch-size: got '2'; expected not together with --micro-batch-size" in \
        _error(BASE + " --batch-size 2")


def test_the_world_size_comes_from_nodes_or_torchrun():
    launched = "torchrun --nnodes 4 --nproc-per-node 8 pretrain_gpt.py " + BASE
    assert _read(launched, nodes=None).scenario.layout.dp == 32
    result = _read(launched, nodes=2)  # --nodes counts, with a warning
    assert result.scenario.layout.dp == 16 and any("--nodes 2" in w for w in result.warnings)
    assert "world size: got null; expected --nodes N" in _error(BASE, nodes=None)
    assert "torchrun --nnodes: got '1:4'" in _error("torchrun --nnodes 1:4 pretrain_gpt.py " + BASE, nodes=None)
    assert "--tensor-model-parallel-size: got 'tp x cp x pp = 3 x 1 x 1 = 3'" in \
        _error(BASE + " --tensor-model-parallel-size 3")
    with pytest.raises(SpecError, match="--profile: got 'no-such-profile'"):
        _read(BASE, profile="no-such-profile")


@pytest.mark.parametrize("text,expected", [
    (BASE + " --bf16=1", "--bf16: got '1'; expected no value (a switch)"),
    (BASE + " --num-experts three", "--num-experts: got 'three'; expected an integer >= 1"),
    (BASE + " --num-layers 99999999999999999999", "--num-layers: got '99999999999999999999'; expected an integer"),
    (BASE + " --moe-expert-capacity-factor nan", "--moe-expert-capacity-factor: got 'nan'; expected a finite"),
    (BASE + " --moe-expert-capacity-factor 1e999", "--moe-expert-capacity-factor: got '1e999'; expected a finite"),
    (BASE + " --moe-expert-capacity-factor -1", "--moe-expert-capacity-factor: got '-1'; expected a number > 0"),
    (BASE + " --seq-length", "--seq-length: got null; expected one value"),
    (BASE + " --seq-length 256 512", "line 1: got '512'; expected a flag (--name) (after 256)"),
    (BASE + " --bf16 true", "line 1: got 'true'; expected a flag (--name) (after --bf16)"),
    (BASE + " ${MODEL_ARGS[@]}", "expected a flag (--name)"),
    (BASE + " --fp16", "--fp16: got true; expected not together with --bf16"),
    (BASE + " --moe-token-dispatcher-type fancy", "--moe-token-dispatcher-type: got 'fancy'; expected one of"),
    (BASE + " --expert-model-parallel-size 3", "--expert-model-parallel-size (layout.ep): got 3"),
    (BASE + " --num-query-groups 3 --group-query-attention", "--num-query-groups (model.num_kv_heads): got 3"),
    (BASE + " --moe-layer-freq '[0]*100000000000'", "--moe-layer-freq: got '[0]*100000000000'; expected an integer,"),
    (BASE + " --moe-layer-freq '([1]*4096)*4096'", "--moe-layer-freq: got '([1]*4096)*4096'; expected"),
    (BASE + " --moe-layer-freq \"__import__('os').system('true')\"", "--moe-layer-freq: got"),
    (BASE + " --moe-layer-freq '" + "(" * 500 + "'", "--moe-layer-freq: got"),
    (BASE + " --moe-layer-freq '[1,0,1,1]'", "expected a pattern moesim can express"),
    (BASE + " --moe-layer-freq '[0,0,0,0]'", "expected a pattern with at least one MoE layer"),
    (BASE + " --moe-layer-freq '[1,1,1]'", "expected a list of 4 zeros and ones"),
    (BASE + " --pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 1 "
            "--num-virtual-stages-per-pipeline-rank 2", "not together with --num-virtual-stages-per-pipeline-rank"),
    (BASE + " --pipeline-model-parallel-layout 'E|(t|)*3,m|m||L'", "--pipeline-model-parallel-layout: got"),
    (BASE + " --moe-expert-capacity-factor 1.0 --moe-router-load-balancing-type sinkhorn",
     "--moe-expert-capacity-factor: got '1.0'; expected not together with --moe-router-load-balancing-type"),
    (BASE + " --moe-enable-deepep --moe-token-dispatcher-type alltoall", "--moe-enable-deepep: got true; expected"),
    (BASE + " --moe-flex-dispatcher-backend deepep", "--moe-flex-dispatcher-backend: got 'deepep'; expected not"),
    (BASE + " --recompute-granularity full", "--recompute-granularity: got 'full'; expected --recompute-method"),
    (BASE + " --recompute-granularity full --recompute-method uniform --recompute-num-layers 1 --recompute-modules "
            "moe", "--recompute-modules: got 'moe'; expected not together with --recompute-granularity full"),
    (BASE + " --recompute-granularity selective --recompute-modules attention", "--recompute-modules: got "
                                                                               "'attention'; expected one of"),
    (BASE + " --max-position-embeddings 128", "--max-position-embeddings: got '128'; expected not together"),
    (BASE + " --fp8-format hybrid --fp8-recipe custom", "--fp8-recipe: got 'custom'"),
    (BASE + " --optimizer sgd", "--optimizer: got 'sgd'; expected adam"),
    (BASE + " --moe-pad-expert-input-to-capacity", "--moe-pad-expert-input-to-capacity (gate.pad_to_capacity)"),
    (BASE + " --overlap-param-gather", "--overlap-param-gather (comm.overlap_param_gather)"),
    (BASE + " --window-size 128,64", "--window-size: got '128,64'; expected LEFT,0"),
    (BASE.replace("--num-experts 8 ", ""), "--num-experts: got null; expected the routed experts"),
    (BASE.replace("--vocab-size 1024 ", ""), "--vocab-size: got null; expected the vocabulary size"),
    (BASE + " 'unterminated", "line 1: got \"an unterminated ' quote\""),
    ("echo hello", "got 'no Megatron-LM flags'"),
    ("torchrun a.py --num-layers 2\ntorchrun b.py --num-layers 2", "line 2: got 'torchrun b.py --num-layers 2'; "
                                                                   "expected one training command"),
])
def test_bad_or_contradicting_values_are_one_line_naming_the_flag(text, expected):
    assert expected in _error(text)


def test_hostile_patterns_fail_fast():
    """A pattern that would build 10^12 elements (or nest 10^5 parentheses) is refused without building it."""
    t0 = time.perf_counter()
    for freq in ("[0]*1000000000000", "([0]*1000)*1000000000", "(" * 100_000 + "[1]" + ")" * 100_000,
                 "[1]" + "+[1]" * 100_000):
        _error(f"{BASE} --moe-layer-freq '{freq}'")
    assert time.perf_counter() - t0 < 5


def test_hostile_files_are_one_line(tmp_path, capsys):
    cases = {"nul.txt": b"--num-layers 4\0", "latin1.txt": b"--num-layers \xe9", "empty.txt": b"",
             "big.txt": b"--lr 1 " * 200_000, "words.txt": b"--lr " * 60_000, "lines.txt": b"a\n" * 500_000,
             "values.txt": (BASE + " --moe-layer-freq [" + "0," * 400_000 + "1]").encode()}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    t0 = time.perf_counter()
    for name in [*cases, "missing.txt", "."]:
        path = tmp_path / name
        assert main(["import", "megatron", str(path), "--out", str(tmp_path / "o.yaml"), "--nodes", "1"]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moesim: error: "), (name, err)
    assert not (tmp_path / "o.yaml").exists()
    assert time.perf_counter() - t0 < 20  # no quadratic work on a large file


def test_cli_writes_the_scenario_and_refuses_to_overwrite(tmp_path, capsys):
    args = tmp_path / "mixtral.sh"
    args.write_text(MIXTRAL)
    out = tmp_path / "mixtral.yaml"
    assert main(["import", "megatron", str(args), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}: mixtral-8x7b on 16 GPUs (2 x dgx-h100), tp=2 cp=1 pp=2 dp=4")
    err = captured.err.strip().splitlines()
    assert all(line.startswith(f"moesim: warning: {args}: ") for line in err)
    assert sum("--frobnicate: unknown flag" in line for line in err) == 1
    assert sum("--data-path: ignored: no effect on a simulated step" in line for line in err) == 1
    written = out.read_text()
    assert load_scenario(out).layout.ep == 8
    # no overwrite without --force: one line, the file untouched
    assert main(["import", "megatron", str(args), "--out", str(out), "--nodes", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and out.read_text() == written
    assert main(["import", "megatron", str(args), "--out", str(out), "--nodes", "4", "--force"]) == 0
    assert load_scenario(out).cluster.nodes == 4
    assert main(["import", "megatron", str(args), "--out", str(tmp_path)]) == 2  # a directory is never replaced
    assert "a file path, not a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixtral.sh", "mixtral.yaml"]  # no temporary left


def test_cli_names_a_profile_path_relative_to_the_scenario(tmp_path, capsys):
    args = tmp_path / "a.txt"
    args.write_text(BASE)
    (tmp_path / "sub").mkdir()
    profile = ROOT / "hw_profiles" / "dgx-h100.yaml"
    assert main(["import", "megatron", str(args), "--out", str(tmp_path / "sub" / "s.yaml"), "--nodes", "1",
                 "--profile", str(profile)]) == 0
    assert load_scenario(tmp_path / "sub" / "s.yaml").cluster.profile.name == "dgx-h100"
    assert "profile: /" not in (tmp_path / "sub" / "s.yaml").read_text()  # written relative


def test_an_integer_moe_layer_freq_and_windows_read_as_megatron_defines_them():
    """--moe-layer-freq N: layer i is MoE when i % N == 0; --window-size L,0 is a window of L + 1 keys; with
    --window-attn-skip-freq N every N-th layer keeps full attention; --softmax-type learnable is attention sinks."""
    model = _read(BASE + " --moe-layer-freq 2 --ffn-hidden-size 1024 --window-size 127,0 --window-attn-skip-freq 2 "
                         "--softmax-type learnable").scenario.model
    assert (model.first_k_dense, model.moe_every, model.dense_ffn_size) == (0, 2, 1024)
    assert [model.is_moe_layer(i) for i in range(4)] == [True, False, True, False]
    assert (model.sliding_window, model.full_attention_every, model.attention_sinks) == (128, 2, True)
    listed = _read(BASE + " --window-size '(127, 0)' --window-attn-skip-freq '[1,0]*2'").scenario.model
    assert (listed.sliding_window, listed.full_attention_every) == (128, 2)
