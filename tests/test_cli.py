"""The command line on the shipped scenarios."""

import json
from pathlib import Path

import pandas as pd

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
