"""docs/accuracy.json read back, every flaw one line naming the file; its summary is docs/accuracy.md's."""

import json
import re
from pathlib import Path

import pytest

from moesim.io.accuracy_record import ACCURACY_COLUMNS, MAX_ACCURACY_BYTES, read_accuracy_record
from moesim.metrics.error_summary import error_summary
from moesim.spec.errors import SpecError

DOCS = Path(__file__).resolve().parents[2] / "docs"
GOOD = {"published_step_s": 2.0, "predicted_step_s": 1.5, "error": -0.25, "fits": True,
        "simulated_micro_batches": [16, 32]}


def test_the_committed_record_reads_and_summarises_as_the_table_says():
    frame = read_accuracy_record(DOCS / "accuracy.json")
    assert tuple(frame.columns) == ACCURACY_COLUMNS and len(frame) == len(json.loads((DOCS / "accuracy.json")
                                                                                     .read_text()))
    stats = error_summary(dict(zip(frame["run"], frame["error"])))
    line = next(line for line in (DOCS / "accuracy.md").read_text().splitlines() if line.startswith("**"))
    median, worst, run, mean = re.search(r"median \|error\| ([0-9.]+) %, max \|error\| ([0-9.]+) % \((\S+)\), "
                                         r"signed mean ([-+0-9.]+) %", line).groups()
    assert f"{100 * stats.median_abs_error:.1f}" == median and f"{100 * stats.max_abs_error:.1f}" == worst
    assert stats.max_abs_error_run == run and f"{100 * stats.signed_mean_error:+.1f}" == mean


@pytest.mark.parametrize("content, expected", [
    (b"{not json", "a JSON object"),
    (b"[]", "a non-empty JSON object"),
    (json.dumps({"r": {**GOOD, "error": "x"}}).encode(), "r.error"),
    (json.dumps({"r": {**GOOD, "published_step_s": 0}}).encode(), "r.published_step_s"),
    (json.dumps({"r": {**GOOD, "fits": 1}}).encode(), "r.fits"),
    (json.dumps({"r": {**GOOD, "simulated_micro_batches": [0]}}).encode(), "r.simulated_micro_batches"),
    (json.dumps({"r": [1]}).encode(), "r: got"),
    (b" " * (MAX_ACCURACY_BYTES + 1), "at most"),
])
def test_a_bad_record_is_one_line_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "accuracy.json"
    path.write_bytes(content)
    with pytest.raises(SpecError) as err:
        read_accuracy_record(path)
    line = err.value.one_line()
    assert "\n" not in line and line.startswith(str(path)) and expected in line


def test_a_missing_record_and_an_empty_summary_are_one_line(tmp_path):
    with pytest.raises(SpecError, match="an existing accuracy record"):
        read_accuracy_record(tmp_path / "none.json")
    with pytest.raises(SpecError, match="at least one run"):
        error_summary({})
    stats = error_summary({"a": 0.1, "b": -0.3, "c": 0.3})
    assert stats.max_abs_error_run == "b" and stats.median_abs_error == pytest.approx(0.3)
    assert stats.signed_mean_error == pytest.approx(0.1 / 3)
