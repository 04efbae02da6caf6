"""The command line on the shipped scenarios."""

import json
from pathlib import Path

import pandas as pd
import pytest

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def test_run_quickstart_writes_every_output(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["run", str(QUICKSTART), "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "step time" in printed and "MFU" in printed
    summary = json.loads((out / "summary.json").read_text())
    for key in ("step_time_s", "tokens_per_s", "mfu", "breakdown_s", "peak_memory_bytes",
                "expert_load_max_over_mean"):
        assert key in summary
    assert summary["step_time_s"] > 0 and 0 < summary["mfu"] < 1
    assert len(summary["peak_memory_bytes"]) == summary["gpus"] == 16
    for bucket in ("compute", "all_to_all", "pipeline_bubble", "dp_sync"):
        assert bucket in summary["breakdown_s"]
    records = pd.read_parquet(out / "records.parquet")
    assert set(records["rank"]) == set(range(16))
    trace = json.loads((out / "trace.json").read_text())
    lanes = {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert lanes == set(range(16))
    assert (out / "breakdown.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "breakdown_per_rank.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "a2a_heatmap.png").read_bytes().startswith(b"\x89PNG")
    matrices = pd.read_parquet(out / "a2a_matrices.parquet")
    assert set(matrices.columns) == {"layer", "src", "dst", "bytes"} and len(matrices) == 32 * 8 * 8
    net = summary["network"]
    assert net["model"] == "flow" and net["a2a_bytes_per_step"]["nvlink"] > 0
    assert net["a2a_bytes_per_step"]["nic"] == 0  # the quickstart's EP groups stay inside a node
    # a second run into moesim's own directory is allowed and gives the same numbers
    assert main(["run", str(QUICKSTART), "--out", str(out), "--steps", "2"]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary


def test_run_refuses_a_directory_with_user_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["run", str(QUICKSTART), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_flag_is_one_line(capsys):
    assert main(["run", str(QUICKSTART), "--steps", "0", "--no-files"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps" in err[0]
    assert main(["frobnicate"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_validate_and_list(capsys):
    assert main(["validate", str(QUICKSTART), str(ROOT / "scenarios" / "deepseek-v3-256.yaml")]) == 0
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "dgx-h100" in out and "deepseek-v3" in out
    assert "  cpu-gloo-2c-2r-xeon  2 x CPU rank:" in out  # the longest name keeps its column apart


def _quickstart_named(tmp_path: Path, name: str) -> Path:
    text = QUICKSTART.read_text().replace("name: quickstart", f"name: {json.dumps(name)}")
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize(("name", "slug"), [("../../escape", "escape"), ("/tmp/abs", "tmp-abs"),
                                            ("a/../../b\x01c", "a-b-c"), ("..", "scenario")])
def test_a_scenario_name_never_chooses_where_files_go(tmp_path, monkeypatch, capsys, name, slug):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    scenario = _quickstart_named(tmp_path, name)
    before = _files_under(tmp_path)
    assert main(["run", str(scenario), "--steps", "1"]) == 0
    written = _files_under(tmp_path) - before
    assert written and all(p.is_relative_to(work / "runs" / slug) or p in (work / "runs",) for p in written)
    assert json.loads((work / "runs" / slug / "summary.json").read_text())["scenario"] == name


def test_unwritable_out_fails_before_simulating_with_exit_1(tmp_path, capsys):
    assert main(["run", str(QUICKSTART), "--out", "/proc/moesim-out", "--steps", "1"]) == 1
    captured = capsys.readouterr()
    assert "step time" not in captured.out  # refused before the simulation
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "/proc/moesim-out" in err[0]


def test_cost_limits_refuse_before_simulating(capsys):
    assert main(["run", str(QUICKSTART), "--no-files", "--max-wall-s", "0.001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-wall-s" in err[0] and "needs about" in err[0]
    assert main(["run", str(QUICKSTART), "--no-files", "--max-memory-GiB", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-memory-GiB" in err[0] and "GiB" in err[0]
    assert main(["run", str(QUICKSTART), "--no-files", "--max-wall-s", "nan"]) == 2


def test_trace_fit_csv_refuses_to_overwrite_before_any_work(tmp_path, capsys):
    csv = tmp_path / "fit.csv"
    csv.write_text("mine")
    trace = ROOT / "traces" / "tiny-moe-stdlib.parquet"
    assert main(["trace", "fit", str(trace), "--csv", str(csv)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--force" in captured.err and csv.read_text() == "mine"
    assert main(["trace", "fit", str(trace), "--csv", str(tmp_path)]) == 2  # a directory, even with --force
    assert "not a directory" in capsys.readouterr().err
    assert main(["trace", "fit", str(trace), "--csv", str(csv), "--force"]) == 0
    assert csv.read_text() != "mine"


def test_calibrate_timeout_is_checked_up_front(tmp_path, capsys):
    for bad in ("-1", "0", "nan", "inf"):
        assert main(["calibrate", "--out", str(tmp_path / "p.yaml"), "--timeout", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--timeout" in err[0]
    assert not (tmp_path / "p.yaml").exists()


def test_validate_reports_every_bad_file(tmp_path, capsys):
    bad1, bad2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    bad1.write_text("name: [unclosed\n")
    bad2.write_text("name: x\nname: y\n")
    assert main(["validate", str(bad1), str(QUICKSTART), str(bad2)]) == 2
    captured = capsys.readouterr()
    assert "quickstart.yaml: ok" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 3 and str(bad1) in err[0] and str(bad2) in err[1] and "2 of 3" in err[2]
