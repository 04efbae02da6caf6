"""RecordLog: canonical order whatever the append order, blocks of ranks, compact typed columns, per-rank sums."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.sim.records import RECORD_BYTES, RECORD_COLUMNS, OpKind, Phase, RecordLog
from moesim.spec.simulation import RecordDetail


def test_records_come_out_by_step_then_rank_in_program_order():
    log = RecordLog()
    # SimPy interleaves ranks: rank 1 records before rank 0, and their ops alternate
    for i, rank in enumerate([1, 0, 1, 0]):
        log.add(0, rank, i, 7, Phase.FORWARD, OpKind.ATTENTION, float(i), float(i) + 0.5)
    log.add(1, 0, -1, -1, Phase.STEP, OpKind.OPTIMIZER, 0.0, 1.0)
    assert len(log) == 5
    frame = log.to_frame()
    assert list(frame.columns) == list(RECORD_COLUMNS)
    assert frame[["step", "rank", "micro_batch"]].to_numpy().tolist() == [[0, 0, 1], [0, 0, 3], [0, 1, 0],
                                                                          [0, 1, 2], [1, 0, -1]]
    assert frame["op"].tolist() == ["attention"] * 4 + ["optimizer"]
    assert frame["phase"].tolist() == ["fwd"] * 4 + ["step"]


def test_frame_has_the_documented_dtypes_and_the_log_starts_over():
    log = RecordLog()
    blk = log.block(3, 2, 1)
    blk.add(0, 1, Phase.BACKWARD, OpKind.DISPATCH, 1.0, 2.5, nbytes=4096.0, rows=12, wait_s=0.25)
    frame = log.to_frame()
    assert frame.dtypes.astype(str).tolist() == ["int32", "int32", "int32", "int32", "category", "category",
                                                 "float64", "float64", "float64", "int64", "float64", "float64"]
    assert list(frame["op"].cat.categories) == [o.value for o in OpKind]
    assert frame.iloc[0][["bytes", "rows", "wait_s"]].tolist() == [4096.0, 12, 0.25]
    assert len(log) == 0 and len(log.to_frame()) == 0
    pd.testing.assert_frame_equal(RecordLog().to_frame(), frame.iloc[:0])


def test_steps_are_appended_in_order():
    log = RecordLog()
    log.add(2, 0, 0, 0, Phase.FORWARD, OpKind.EXPERT, 0.0, 1.0)
    log.add(3, 0, 0, 0, Phase.FORWARD, OpKind.EXPERT, 0.0, 1.0)  # flushes step 2
    with pytest.raises(ValueError, match="in order"):
        log.add(2, 1, 0, 0, Phase.FORWARD, OpKind.EXPERT, 0.0, 1.0)
    assert np.array_equal(log.to_frame()["step"].to_numpy(), [2, 3])


def test_a_record_costs_record_bytes():
    def frame_bytes(n: int) -> int:
        log = RecordLog()
        for i in range(n):
            log.add(0, i % 4, i, 0, Phase.FORWARD, OpKind.EXPERT, 0.0, 1.0, rows=i)
        return int(log.to_frame().memory_usage(index=False).sum())

    assert frame_bytes(2000) - frame_bytes(1000) == 1000 * RECORD_BYTES  # no Python object per record


def test_a_block_is_rank_major_and_keep_drops_ranks():
    log = RecordLog()
    blk = log.block(0, 4, 3)  # ranks 4, 5, 6
    blk.add(0, 1, Phase.FORWARD, OpKind.ATTENTION, np.zeros(3), np.array([1.0, 2.0, 3.0]))
    blk.add(0, -1, Phase.FORWARD, OpKind.PP_WAIT, np.array([1.0, 2.0, 3.0]), 2.5, keep=np.array([True, False, False]))
    blk.add(0, 1, Phase.FORWARD, OpKind.DISPATCH, 2.5, 4.0, nbytes=np.array([8.0, 9.0, 10.0]), rows=5)
    log.add(0, 0, -1, -1, Phase.STEP, OpKind.OPTIMIZER, 0.0, 1.0)  # a block of one rank, before the others
    assert len(log) == 8
    frame = log.to_frame()
    assert frame["rank"].tolist() == [0, 4, 4, 4, 5, 5, 6, 6]
    assert frame["op"].tolist() == ["optimizer"] + ["attention", "pp_wait", "dispatch"] + ["attention", "dispatch"] * 2
    assert frame["end_s"].tolist() == [1.0, 1.0, 2.5, 4.0, 2.0, 4.0, 3.0, 4.0]
    assert frame["bytes"].tolist() == [0.0, 0.0, 0.0, 8.0, 0.0, 9.0, 0.0, 10.0]
    assert frame["rows"].tolist() == [0, 0, 0, 5, 0, 5, 0, 5]


def test_overlapping_blocks_are_a_bug():
    log = RecordLog()
    log.block(0, 0, 4).add(0, 0, Phase.FORWARD, OpKind.EXPERT, 0.0, 1.0)
    log.block(0, 2, 1).add(0, 0, Phase.FORWARD, OpKind.EXPERT, 0.0, 1.0)
    with pytest.raises(AssertionError, match="overlap"):
        log.flush()


@pytest.mark.parametrize("detail", [RecordDetail.PER_RANK, RecordDetail.SUMMARY])
def test_summed_records_keep_every_total_per_rank_and_op(detail):
    full, summed = RecordLog(), RecordLog(detail)
    for log in (full, summed):
        gen = np.random.default_rng(0)
        for step in range(2):
            blk = log.block(step, 0, 4)
            for i in range(30):
                op = (OpKind.EXPERT, OpKind.DISPATCH, OpKind.PP_WAIT)[i % 3]
                start = gen.random(4)
                keep = gen.random(4) < 0.5 if op is OpKind.PP_WAIT else None
                blk.add(i, 0, Phase.FORWARD if i < 20 else Phase.BACKWARD, op, start, start + gen.random(4),
                        gen.random(4), gen.integers(0, 9, 4), gen.random(4) * 0.1, keep=keep)
    a, b = full.to_frame(), summed.to_frame()
    a["busy"], b["busy"] = a.end_s - a.start_s, b.end_s - b.start_s
    keys = ["step", "rank", "phase", "op"]
    want = a.groupby(keys, observed=True)[["busy", "wait_s", "bytes", "rows"]].sum()
    got = b.set_index(keys)[["busy", "wait_s", "bytes", "rows"]].sort_index()
    assert len(b) == len(want) > 2 * 4 * 5
    assert (b.micro_batch == -1).all() and (b.layer == -1).all() and (b.start_s == 0.0).all()
    pd.testing.assert_frame_equal(got, want.sort_index(), check_exact=False, rtol=1e-12)
