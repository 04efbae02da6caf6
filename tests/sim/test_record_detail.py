"""simulation.records: full | per_rank | summary keep less detail and the same summary; the run's files follow."""

from __future__ import annotations

import pytest

from moesim.metrics.summary import per_rank_breakdown, summarize
from moesim.report.run_dir import write_run
from moesim.sim.simulate import simulate
from moesim.spec import ParallelLayout
from moesim.spec.simulation import RecordDetail

from helpers import scenario


def _with(detail: RecordDetail):
    sc = scenario(zipf_s=1.2, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2), steps=3)
    return sc.replace(simulation=sc.simulation.replace(records=detail))


def _numbers(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix.rstrip("."), value


@pytest.mark.parametrize("detail", [RecordDetail.PER_RANK, RecordDetail.SUMMARY])
def test_summed_records_give_the_same_summary(detail):
    full, summed = simulate(_with(RecordDetail.FULL)), simulate(_with(detail))
    assert len(summed.records) < len(full.records) / 10
    assert (summed.step_times_s == full.step_times_s).all()
    want = dict(_numbers(summarize(full).to_dict()))
    got = dict(_numbers(summarize(summed).to_dict()))
    assert want.keys() == got.keys()
    for key, value in want.items():
        if key.startswith("provenance."):
            continue  # the resolved scenario says which detail was kept
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert per_rank_breakdown(summed).to_numpy() == pytest.approx(per_rank_breakdown(full).to_numpy(), rel=1e-12)


@pytest.mark.parametrize("detail,records_file,trace_file", [(RecordDetail.FULL, True, True),
                                                            (RecordDetail.PER_RANK, True, False),
                                                            (RecordDetail.SUMMARY, False, False)])
def test_run_files_follow_the_detail(detail, records_file, trace_file, tmp_path):
    result = simulate(_with(detail))
    names = {p.name for p in write_run(tmp_path / "run", result, summarize(result))}
    assert ("records.parquet" in names) is records_file
    assert ("trace.json" in names) is trace_file
    assert {"summary.json", "breakdown_per_rank.csv", "breakdown.png"} <= names
