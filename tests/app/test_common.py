"""app/common.py: reading a scenario text safely, the cost guard, the cache, the one-line errors."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from app import common
from moesim.loader import load_scenario
from moesim.spec.errors import SpecError

QUICKSTART = common.DEFAULT_SCENARIO.read_text()


def test_paths_and_shipped_files():
    assert (common.ROOT / "moesim" / "cli.py").is_file()
    assert common.shipped_scenarios()["quickstart"] == common.DEFAULT_SCENARIO
    assert "tiny-moe-stdlib.parquet" in common.shipped_traces()
    assert "dgx-h100" in common.profile_names()


def test_scenario_from_text_is_the_cli_scenario():
    sc = common.scenario_from_text(QUICKSTART, "quickstart")
    assert sc == load_scenario(common.DEFAULT_SCENARIO)
    assert common.scenario_from_text(QUICKSTART, "quickstart") is sc  # cached by the text


@pytest.mark.parametrize("text, line", [
    ("name: [unclosed", "edited.yaml: <top level>: got "),
    ("- a list", "edited.yaml: <top level>: got ['a list']; expected a mapping of keys at the top of the scenario"),
    ("", "edited.yaml: <top level>: got an empty document; expected a mapping"),
    (QUICKSTART + "sweep: {routing.zipf_s: [0, 1]}\n", "edited.yaml: sweep: got "),
    (QUICKSTART.replace("routing: {distribution: zipf, zipf_s: 0.5}", "routing: {trace: /etc/passwd}"),
     "edited.yaml: routing.trace: got '/etc/passwd'; expected a path inside scenarios/, hw_profiles/, traces/, "
     "the upload area (this server reads no other files)"),
    (QUICKSTART.replace("profile: dgx-h100", "profile: ../../../etc/x.yaml"), "edited.yaml: cluster.profile: got "),
])
def test_bad_text_is_one_line(text, line):
    with pytest.raises(SpecError) as err:
        common.scenario_from_text(text, "edited")
    message = err.value.one_line()
    assert message.startswith(line) and "\n" not in message


def test_size_limit():
    big = QUICKSTART + "#" * common.MAX_SCENARIO_BYTES
    with pytest.raises(SpecError, match="a scenario of at most"):
        common.scenario_from_text(big)


def test_shipped_trace_by_relative_path_and_upload_by_absolute_path():
    text = QUICKSTART.replace("routing: {distribution: zipf, zipf_s: 0.5}",
                              "routing: {trace: ../traces/tiny-moe-stdlib.parquet}")
    assert common.scenario_from_text(text).routing.trace is not None
    data = (common.TRACES_DIR / "tiny-moe-stdlib.parquet").read_bytes()
    saved = common.save_upload("../../evil name.parquet", data)
    assert saved.parent == common.upload_dir() and saved.name.endswith("-evil_name.parquet")
    assert common.save_upload("../../evil name.parquet", data) == saved  # the same content, the same file
    text = text.replace("../traces/tiny-moe-stdlib.parquet", str(saved))
    assert common.scenario_from_text(text).routing.trace is not None
    with pytest.raises(SpecError, match="a file of at most 10 bytes"):
        common.save_upload("x.parquet", data, max_bytes=10)


def test_malformed_uploaded_trace_is_one_line():
    saved = common.save_upload("broken.parquet", b"PAR1 this is not a parquet file")
    text = QUICKSTART.replace("routing: {distribution: zipf, zipf_s: 0.5}", f"routing: {{trace: {saved}}}")
    with pytest.raises(SpecError) as err:
        common.scenario_from_text(text)
    line = err.value.one_line()
    assert line.startswith(f"{saved}: ") and "\n" not in line


def test_with_values_copies():
    doc = {"layout": {"tp": 2}, "gate": None}
    out = common.with_values(doc, {("layout", "tp"): 4, ("gate", "capacity_factor"): 1.0, ("a", "b", "c"): 1})
    assert out == {"layout": {"tp": 4}, "gate": {"capacity_factor": 1.0}, "a": {"b": {"c": 1}}}
    assert doc == {"layout": {"tp": 2}, "gate": None}
    assert common.scenario_document(common.document_text(out)) == out


def test_simulate_cached_overrides_and_cache():
    result, summary = common.simulate_cached(QUICKSTART, steps=2, seed=3, name="quickstart")
    assert summary.measured_steps == 2 and result.scenario.simulation.seed == 3
    run = common.simulate_run(QUICKSTART, steps=2, seed=3, name="quickstart")
    assert run.result is result  # a cache hit: the same objects
    assert run.expert_loads["assignments_per_step"].gt(0).all()


def test_run_cache_bounds_count_and_bytes():
    run = common.simulate_run(QUICKSTART, steps=1, seed=5)
    cache = common._RunCache(max_entries=2, max_bytes=10**12)
    for i in range(3):
        cache.put((i,), run)
    assert len(cache) == 2 and cache.get((0,)) is None and cache.get((2,)) is run
    tiny = common._RunCache(max_entries=10, max_bytes=1)  # every run is over: only the newest is kept
    tiny.put((0,), run)
    tiny.put((1,), run)
    assert len(tiny) == 1 and tiny.get((1,)) is run


def test_cost_guard_refuses_with_the_cli_line(monkeypatch):
    monkeypatch.setenv(common.MAX_WALL_ENV, "0.001")
    assert common.cost_limits() == (0.001, None)
    with pytest.raises(SpecError) as err:
        common.simulate_run(QUICKSTART, steps=4, seed=11)
    assert err.value.one_line().startswith("--max-wall-s: got 0.001; expected a run estimated to fit")
    monkeypatch.setenv(common.MAX_WALL_ENV, "nonsense")
    assert common.cost_limits() == (common.DEFAULT_MAX_WALL_S, None)


def _show(kind: str) -> None:
    from app.common import show_error
    from moesim.metrics.errors import ResultError
    from moesim.spec.errors import SpecError

    show_error(SpecError("layout.tp", 3, "a divisor of 8", source="x.yaml") if kind == "spec"
               else ResultError("summary mfu is nan:\n  not a finite number"))


@pytest.mark.parametrize("kind, line", [("spec", "x.yaml: layout.tp: got 3; expected a divisor of 8"),
                                        ("result", "summary mfu is nan: not a finite number")])
def test_show_error_is_the_cli_line(kind, line):
    at = AppTest.from_function(_show, args=(kind,)).run()
    assert not at.exception
    assert [e.value for e in at.error] == [line]


def test_app_main_lists_the_pages_there_are():
    at = AppTest.from_file(str(Path(common.ROOT, "app", "main.py")), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "What-if"  # the default page
