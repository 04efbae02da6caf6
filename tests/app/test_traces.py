"""The Traces page (AppTest, no browser): a more skewed layer shows a larger expert max/mean, the fit is shown
against the data, and a malformed upload is one line naming the upload."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from moesim.io.traces import write_trace
from moesim.spec.trace import RoutingTrace

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "traces.py")


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _per_layer(at):
    return next(d.value for d in at.dataframe if d.value.index.name == "layer")


def test_the_recorded_traces_later_layers_are_more_skewed_and_are_fitted():
    at = _page()  # the shipped trace, traces/tiny-moe-stdlib.parquet: no load-balancing loss
    assert _metric(at, "layers") == "4" and _metric(at, "top_k") == "2"
    first = float(_metric(at, "expert max/mean, mean over steps"))
    at.selectbox(key="layer").set_value(3).run()
    last = float(_metric(at, "expert max/mean, mean over steps"))
    assert 1.0 < first < last <= 16 / 2  # E / top_k is the most one expert can hold
    per_layer = _per_layer(at)
    assert per_layer.loc[3, "expert max/mean, mean over steps"] == pytest.approx(last, abs=0.005)
    assert set(per_layer["best fit"].str.split().str[0]) <= {"zipf", "dirichlet", "lognormal"}
    assert _metric(at, "best fit") in {"zipf", "dirichlet", "lognormal"}


def _uploaded_trace(tmp_path) -> bytes:
    """Two layers of 8 experts, top-2, 2 source ranks: layer 0 spread evenly, layer 1 halving expert by expert."""
    even = np.full(8, 16)
    skewed = np.array([64, 32, 16, 8, 4, 2, 1, 1])
    counts = np.zeros((6, 2, 1, 2, 8), dtype=np.int32)
    counts[:, 0], counts[:, 1] = even, skewed
    path = write_trace(tmp_path / "two-layers.parquet",
                       RoutingTrace(counts, np.arange(6, dtype=np.int64), top_k=2, source="test: two layers"))
    return path.read_bytes()


def test_an_uploaded_trace_shows_its_skewed_layer_and_a_broken_one_is_one_line(tmp_path):
    at = _page()
    at.file_uploader(key="trace_upload").set_value(("two-layers.parquet", _uploaded_trace(tmp_path),
                                                    "application/octet-stream")).run()
    assert not at.exception and not at.error
    assert _metric(at, "layers") == "2" and _metric(at, "experts") == "8"
    per_layer = _per_layer(at)["expert max/mean, mean over steps"]
    assert per_layer[0] == pytest.approx(1.0) and per_layer[1] == pytest.approx(64 / 16)
    at.selectbox(key="layer").set_value(1).run()
    assert float(_metric(at, "expert max/mean, mean over steps")) == pytest.approx(4.0)
    at.file_uploader(key="trace_upload").set_value(("broken.parquet", b"PAR1 not a trace",
                                                    "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1
    line = at.error[0].value
    assert "\n" not in line and line.startswith("broken.parquet: ") and "Parquet" in line
