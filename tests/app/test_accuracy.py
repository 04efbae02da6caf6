"""The Accuracy page (AppTest, no browser): the summary it shows is docs/accuracy.json's, and a bad record is one
line in the page."""

import json
import statistics
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "app" / "pages" / "accuracy.py")


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception, at.exception
    return at


def test_the_summary_shown_is_the_records():
    doc = json.loads((ROOT / "docs" / "accuracy.json").read_text())
    errors = [row["error"] for row in doc.values()]
    at = _page()
    shown = _metrics(at)
    assert shown["runs"] == str(len(doc))
    assert shown["median |error|"] == f"{100 * statistics.median(abs(e) for e in errors):.1f} %"
    assert shown["max |error|"] == f"{100 * max(abs(e) for e in errors):.1f} %"
    assert shown["signed mean error"] == f"{100 * statistics.fmean(errors):+.1f} %"
    table = at.dataframe[0].value
    assert list(table["run"]) == list(doc)
    assert table["error"].tolist() == pytest.approx(errors)


def test_an_uploaded_record_moves_the_summary_and_a_bad_one_is_one_line():
    at = _page()
    record = {"a": {"published_step_s": 2.0, "predicted_step_s": 2.2, "error": 0.1, "fits": True,
                    "simulated_micro_batches": [8]},
              "b": {"published_step_s": 1.0, "predicted_step_s": 0.7, "error": -0.3, "fits": True,
                    "simulated_micro_batches": [16, 32]}}
    at.file_uploader[0].set_value(("mine.json", json.dumps(record).encode(), "application/json")).run()
    assert not at.exception and not at.error
    shown = _metrics(at)
    assert shown["median |error|"] == "20.0 %" and shown["max |error|"] == "30.0 %"
    assert shown["signed mean error"] == "-10.0 %"
    at.file_uploader[0].set_value(("broken.json", b'{"a": {"error": "x"}}', "application/json")).run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert "published_step_s" in at.error[0].value
    assert at.error[0].value.startswith("broken.json: ")  # the upload's name, not the server's copy of it
