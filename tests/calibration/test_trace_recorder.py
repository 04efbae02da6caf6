"""The trace recorder: a tiny real MoE model trained with torch on CPU records a valid moesim trace, quickly."""

import subprocess
import sys
import time

import numpy as np
import pytest

from moesim.io.traces import read_trace, write_trace
from moesim.calibration.trace_recorder import RecorderConfig, load_corpus, record_trace, text_files
from moesim.spec.errors import SpecError

pytest.importorskip("torch")

TINY = RecorderConfig(num_layers=2, hidden_size=32, num_heads=2, num_experts=4, top_k=2, expert_ffn_size=64,
                      seq_len=32, micro_batch_size=4, num_micro_batches=2, num_sources=2, steps=3,
                      warmup_steps=1, text_budget_bytes=200_000, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def tiny_trace():
    start = time.perf_counter()
    trace = record_trace(TINY)
    return trace, time.perf_counter() - start


def test_tiny_recording_is_a_valid_trace_made_quickly(tiny_trace):
    trace, wall_s = tiny_trace
    assert wall_s < 30  # a few seconds on 2 CPU cores, torch import and first-call warm-up included
    assert trace.counts.shape == (3, 2, 2, 2, 4)  # step, layer, micro_batch, src_rank, expert
    assert trace.counts.dtype == np.int64 and trace.counts.min() >= 0
    assert np.all(trace.counts.sum(axis=-1) == TINY.tokens_per_shard * TINY.top_k)  # 2 seqs x 32 bytes x top-2
    assert TINY.tokens_per_shard == 64
    assert trace.steps.tolist() == [0, 1, 2]
    assert trace.top_k == 2
    assert "torch" in trace.source and "standard library" in trace.source


def test_same_seed_gives_identical_counts_and_another_seed_does_not(tiny_trace):
    trace, _ = tiny_trace
    again = record_trace(TINY)
    assert np.array_equal(again.counts, trace.counts)
    other = record_trace(RecorderConfig(**{**TINY.__dict__, "seed": 1}))
    assert not np.array_equal(other.counts, trace.counts)


def test_round_trips_through_the_parquet_format(tiny_trace, tmp_path):
    trace, _ = tiny_trace
    back = read_trace(write_trace(tmp_path / "tiny.parquet", trace))
    assert np.array_equal(back.counts, trace.counts)
    assert np.array_equal(back.steps, trace.steps)
    assert back.top_k == trace.top_k and back.source == trace.source


def test_record_every_keeps_the_last_step_and_progress_sees_every_step():
    cfg = RecorderConfig(**{**TINY.__dict__, "steps": 5, "record_every": 2, "aux_loss_coef": 0.01})
    seen = []
    trace = record_trace(cfg, progress=lambda step, loss: seen.append((step, loss)))
    assert trace.steps.tolist() == [0, 2, 4] == cfg.recorded_steps.tolist()
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(loss) and 0 < loss < 10 for _, loss in seen)
    assert np.all(trace.counts.sum(axis=-1) == cfg.tokens_per_shard * cfg.top_k)


def test_recording_leaves_the_callers_torch_settings_alone():
    import torch

    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    record_trace(RecorderConfig(**{**TINY.__dict__, "steps": 1}))
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_text_file_can_be_the_corpus(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 50, encoding="utf-8")
    assert text_files(str(path)) == [path]
    corpus = load_corpus(str(path), 1000)
    assert len(corpus.data) == 1000 and corpus.num_files == 1
    trace = record_trace(RecorderConfig(**{**TINY.__dict__, "steps": 1, "text_source": str(path)}))
    assert str(path) in trace.source


def test_stdlib_corpus_is_python_source_in_a_fixed_order():
    files = text_files("stdlib")
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)
    a, b = load_corpus("stdlib", 50_000), load_corpus("stdlib", 50_000)
    assert a == b and len(a.data) == 50_000 and b"def " in a.data


@pytest.mark.parametrize("field,value", [
    ("num_experts", 0), ("top_k", 5), ("micro_batch_size", 3), ("hidden_size", 33), ("steps", True),
    ("learning_rate", 0.0), ("aux_loss_coef", -0.1), ("device", "tpu"), ("seq_len", 2.5),
    ("text_budget_bytes", 10), ("text_source", ""), ("seed", -1), ("record_every", 0), ("num_threads", -1),
    ("warmup_steps", 0),
])
def test_bad_fields_raise_spec_errors_naming_them(field, value):
    with pytest.raises(SpecError) as err:
        RecorderConfig(**{**TINY.__dict__, field: value})
    assert err.value.key == field


def test_a_missing_text_source_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="text_source"):
        record_trace(RecorderConfig(**{**TINY.__dict__, "text_source": str(tmp_path / "nope")}))


def test_importing_the_recorder_does_not_import_torch():
    code = "import sys, moesim.calibration.trace_recorder; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
