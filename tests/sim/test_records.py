"""RecordLog: canonical order whatever the append order, compact typed columns, one frame without a copy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moesim.sim.records import RECORD_BYTES, RECORD_COLUMNS, OpKind, Phase, RecordLog


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
    buf = log.rank(3, 2)
    buf.add(0, 1, Phase.BACKWARD, OpKind.DISPATCH, 1.0, 2.5, nbytes=4096.0, rows=12, wait_s=0.25)
    frame = log.to_frame()
    assert frame.dtypes.astype(str).tolist() == ["int32", "int32", "int32", "int32", "category", "category",
                                                 "float64", "float64", "float64", "int64", "float64"]
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
