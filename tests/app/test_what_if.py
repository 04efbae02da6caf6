"""The What-if page (AppTest, no browser): the widgets move the numbers the way the physics says, and bad input
shows the CLI's one-line error, never an exception."""

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from moesim.cli import _main

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "what_if.py")
QUICKSTART = (Path(PAGE).parents[2] / "scenarios" / "quickstart.yaml").read_text()


def seconds(at: AppTest, label: str = "Step time p50") -> float:
    return float(next(m for m in at.metric if m.label == label).value.removesuffix(" s"))


def percent(at: AppTest, label: str) -> float:
    return float(next(m for m in at.metric if m.label == label).value.removesuffix("%"))


@pytest.fixture
def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and not at.error
    return at


def test_quickstart_as_the_cli_predicts(page, capsys):
    assert _main(["run", "scenarios/quickstart.yaml", "--no-files"]) == 0
    cli = capsys.readouterr().out
    assert f"p50 {seconds(page):.4f} s" in cli  # the same number as `moesim run`
    assert page.session_state["scenario_yaml"] == QUICKSTART  # nothing edited: the file as written


def test_more_skew_longer_step(page):
    before = seconds(page)
    page.slider(key="whatif_skew_zipf_s").set_value(1.2).run()
    assert not page.exception and not page.error
    assert seconds(page) > before * 1.1
    assert "zipf_s: 1.2" in page.session_state["scenario_yaml"]


def test_capacity_factor_drops_tokens(page):
    assert percent(page, "Dropped tokens") == 0.0  # dropless
    page.checkbox(key="whatif_dropless").uncheck().run()
    page.number_input(key="whatif_capacity_factor").set_value(1.0).run()
    assert not page.exception and not page.error
    assert percent(page, "Dropped tokens") > 0.0  # zipf 0.5 overflows experts at capacity factor 1


def test_baseline_side_by_side(page):
    page.button(key="whatif_pin").click().run()
    page.slider(key="whatif_skew_zipf_s").set_value(1.0).run()
    assert not page.exception
    step = next(m for m in page.metric if m.label == "Step time p50")
    assert step.delta.startswith("+")  # longer than the pinned baseline
    table = page.dataframe[0].value
    assert list(table.columns) == ["baseline", "current", "difference"]
    assert table.loc["step time p50 (s)", "difference"] > 0
    page.button(key="whatif_unpin").click().run()
    assert all(not m.delta for m in page.metric)


def test_impossible_layout_is_the_cli_line(page, tmp_path, capsys):
    page.number_input(key="whatif_dp").set_value(3).run()
    assert not page.exception
    [shown] = [e.value for e in page.error]
    assert not page.metric  # nothing stale on screen
    # the file on screen, validated by the CLI, gives the same line (after the file name)
    scenario = tmp_path / "quickstart.yaml"
    scenario.write_text(page.session_state["scenario_yaml"])
    assert _main(["validate", str(scenario)]) == 2
    cli = capsys.readouterr().err.strip().removeprefix(f"moesim: error: {scenario}: ")
    assert shown == f"quickstart.yaml: {cli}"
    assert "layout" in shown


@pytest.mark.parametrize("text, start", [
    ("cluster: [oops", "edited.yaml: <top level>: got "),
    (QUICKSTART.replace("routing: {distribution: zipf, zipf_s: 0.5}", "routing: {trace: /etc/passwd}"),
     "edited.yaml: routing.trace: got '/etc/passwd'; expected a path inside scenarios/"),
    (QUICKSTART.replace("routing: {distribution: zipf, zipf_s: 0.5}",  # allowed, but not a trace: the
                        "routing: {trace: ../scenarios/quickstart.yaml}"),  # error names the file, as the CLI
     str(Path(PAGE).parents[2] / "scenarios" / ".." / "scenarios" / "quickstart.yaml") + ": <top level>: got "),
])
def test_bad_yaml_text_is_one_line(page, text, start):
    page.radio(key="whatif_source").set_value("YAML text").run()
    page.text_area(key="whatif_text").set_value(text).run()
    assert not page.exception
    [shown] = [e.value for e in page.error]
    assert shown.startswith(start) and "\n" not in shown and "Traceback" not in shown


def test_trace_and_preset_routing(page):
    page.radio(key="whatif_routing_mode").set_value("trace").run()
    assert not page.exception and not page.error
    assert "trace: ../traces/tiny-moe-stdlib.parquet" in page.session_state["scenario_yaml"]
    page.radio(key="whatif_routing_mode").set_value("preset").run()
    page.selectbox(key="whatif_routing_preset").set_value("no-aux-collapse").run()
    assert not page.exception and not page.error
    collapsed = seconds(page)
    page.selectbox(key="whatif_routing_preset").set_value("balanced").run()
    assert seconds(page) < collapsed  # a collapsed router makes the busiest expert the bottleneck


def test_another_base_scenario_resets_the_widgets(page):
    page.slider(key="whatif_skew_zipf_s").set_value(1.0).run()
    page.selectbox(key="whatif_shipped").set_value("placement-compare").run()  # a sweep file of 60 steps
    assert not page.exception and not page.error
    assert page.slider(key="whatif_steps").value == 60
    assert "sweep" not in page.session_state["scenario_yaml"]  # the page simulates the file's own values
    page.selectbox(key="whatif_shipped").set_value("quickstart").run()
    assert page.slider(key="whatif_skew_zipf_s").value == 0.5
    assert page.session_state["scenario_yaml"] == QUICKSTART


def test_choices_survive_a_visit_to_another_page():
    at = AppTest.from_file(str(Path(PAGE).parents[1] / "main.py"), default_timeout=120).run()
    at.slider(key="whatif_skew_zipf_s").set_value(1.0).run()
    edited = at.session_state["scenario_yaml"]
    at.session_state["placement_policies"] = ["static"]  # a quick visit: one policy, few steps
    at.session_state["placement_steps"] = 5
    at.switch_page("pages/placement.py").run()
    assert at.title[0].value == "Placement" and not at.exception
    at.switch_page("pages/what_if.py").run()
    assert not at.exception
    assert at.slider(key="whatif_skew_zipf_s").value == 1.0
    assert at.session_state["scenario_yaml"] == edited


def test_an_uploaded_scenario_is_simulated_and_a_bad_one_is_one_line(page):
    page.radio(key="whatif_source").set_value("uploaded YAML").run()
    assert not page.exception and not page.metric  # nothing uploaded yet
    skewed = QUICKSTART.replace("zipf_s: 0.5", "zipf_s: 1.0")
    page.file_uploader(key="whatif_upload").set_value(("mine.yaml", skewed.encode(), "application/x-yaml")).run()
    assert not page.exception and not page.error
    assert page.session_state["scenario_yaml"] == skewed and seconds(page) > 0
    outside = QUICKSTART.replace("routing: {distribution: zipf, zipf_s: 0.5}", "routing: {trace: /etc/passwd}")
    for name, data, start in [
        ("evil.yaml", outside.encode(), "evil.yaml: routing.trace: got '/etc/passwd'; expected a path inside "),
        ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "latin1.yaml: <top level>: got 'UnicodeDecodeError"),
    ]:
        page.file_uploader(key="whatif_upload").set_value((name, data, "application/x-yaml")).run()
        assert not page.exception
        [shown] = [e.value for e in page.error]
        assert shown.startswith(start) and "\n" not in shown
        assert not page.metric  # nothing stale on screen


def test_a_hugging_face_config_of_the_same_model_predicts_the_same_step(page):
    """Mixtral-8x7B's config.json (the keys moesim reads, as the file spells them) is the quickstart's preset: the
    same model, the same step time; the scenario on screen names the uploaded file."""
    before = seconds(page)
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None,
              "vocab_size": 32000, "hidden_act": "silu", "tie_word_embeddings": False}
    page.file_uploader(key="whatif_hf_config").set_value(("config.json", json.dumps(config).encode(),
                                                          "application/json")).run()
    assert not page.exception and not page.error
    assert "hf_config:" in page.session_state["scenario_yaml"] and "preset" not in page.session_state["scenario_yaml"]
    assert seconds(page) == before
    config["num_local_experts"] = 16  # twice the experts, the same top-2: each expert's GEMMs get half the rows
    page.file_uploader(key="whatif_hf_config").set_value(("config.json", json.dumps(config).encode(),
                                                          "application/json")).run()
    assert not page.exception and not page.error
    assert seconds(page) != before
