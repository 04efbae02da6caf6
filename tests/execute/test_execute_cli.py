"""`moesim execute` and `moesim accuracy --execute` from the command line: a real 2-rank gloo run of a plan, its
files in the simulator's format, and the refusals (one line each, before any rank starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("torch")

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _moesim(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "import sys; from moesim.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)


def _plan(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["cluster"]["profile"] = str(ROOT / "hw_profiles" / "dgx-h100.yaml")
    doc["routing"] = {"preset": "no-aux-collapse"}
    doc["gate"] = {"capacity_factor": 1.0}
    doc.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_execute_runs_a_plan_and_writes_measured_records(tmp_path):
    from moesim.metrics.summary import records_breakdown
    from moesim.sim.records import RECORD_COLUMNS

    out = tmp_path / "run"
    done = _moesim("execute", str(_plan(tmp_path)), "--steps", "1", "--nproc", "2", "--compare", "cpu-gloo-2c",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    # the plan's two pipeline stages run; tensor parallelism is not executed: said
    assert "layout.tp: 2 -> 1" in printed and "layout.pp" not in printed and "layout.ep: 8 -> 1" in printed
    assert "step time (median)" in printed and "pipeline wait" in printed
    summary = json.loads((out / "execute.json").read_text())
    assert summary["ranks"] == 2 and summary["layout"] == {"pp": 2, "dp": 1, "ep": 1, "edp": 1}
    assert summary["measured_steps"] == 1 and summary["step_time_s"] > 0
    records = pd.read_parquet(out / "records.parquet")
    assert tuple(records.columns) == RECORD_COLUMNS
    assert set(records["rank"]) == {0, 1} and set(records["step"]) == {0, 1}  # the warm-up step, then one
    ops = set(records["op"].astype(str))
    assert {"attention", "router", "dispatch", "expert", "combine", "lm_head", "pp_wait", "optimizer"} <= ops
    stage_ops = records[records["step"] == 1].groupby("rank")["op"].agg(lambda o: set(o.astype(str)))
    assert "lm_head" not in stage_ops[0] and "lm_head" in stage_ops[1]  # the head is on the last stage
    predicted = pd.read_parquet(out / "predicted_records.parquet")
    assert tuple(predicted.columns) == RECORD_COLUMNS
    # the same breakdown code reads both; a rank's buckets add up to about its step (the untimed gaps between
    # ops are Python's own, well under a tenth of a step)
    per_rank = records_breakdown(records, [1], 2)
    assert (per_rank.sum(axis=1) <= summary["step_time_s"] * 1.001).all()
    assert (per_rank.sum(axis=1) >= summary["step_time_s"] * 0.9).all()
    trace = json.loads((out / "trace.json").read_text())
    assert {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}
    assert "step time (median)" in (out / "compare.md").read_text()
    # the dispatch moved the rows the simulator's routing says, rank by rank
    sent = records[(records["step"] == 1) & (records["op"] == "dispatch") & (records["phase"] == "fwd")]
    sim_sent = predicted[(predicted["step"] == 1) & (predicted["op"] == "dispatch") & (predicted["phase"] == "fwd")]
    assert sorted(sent["rows"]) == sorted(sim_sent["rows"])



def test_execute_refuses_a_directory_with_user_files_before_running(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")  # as `moesim run`: moesim's own run directory may be replaced
    assert main(["execute", str(_plan(tmp_path)), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("args", "key"), [
    (["--backend", "mpi"], "--backend"),
    (["--steps", "0"], "--steps"),
    (["--nproc", "0"], "--nproc"),
    (["--timeout", "-1"], "--timeout"),
])
def test_execute_refuses_bad_flags_in_one_line(tmp_path, capsys, args, key):
    assert main(["execute", str(_plan(tmp_path)), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]
    assert not (tmp_path / "o").exists()


def test_execute_runs_a_placement_with_replicas_and_says_how_it_scaled_it(tmp_path, capsys):
    plan = _plan(tmp_path, layout={"tp": 1, "pp": 1, "dp": 16, "ep": 8},
                 placement={"policy": "eplb", "slots_per_gpu": 4, "eplb": {"redundant_experts": 16,
                                                                          "period_steps": 1, "history_steps": 1}})
    assert main(["execute", str(plan), "--nproc", "2", "--steps", "2", "--out", str(tmp_path / "o")]) == 0
    said = capsys.readouterr().out
    # 8 experts over 8 ranks with 4 slots (3 spare) -> 4 per rank with 12 spare, at most the 8 experts
    assert "placement.slots_per_gpu: 4 -> 8" in said and "placement.eplb.redundant_experts: 16 -> 8" in said
    ops = set(pd.read_parquet(tmp_path / "o" / "records.parquet").op)
    assert {"replica_sync", "migration"} <= ops


def test_accuracy_execute_refuses_to_overwrite_before_running(tmp_path, capsys):
    out = tmp_path / "acc.md"
    out.write_text("mine")
    assert main(["accuracy", "--execute", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "mine"


def test_accuracy_execute_table_and_mape():
    from moesim.execute.matrix import Case, as_json, mape, markdown

    phases = {f"{d} {k}": (0.01, 0.02) for d in ("forward", "backward") for k in ("compute", "dispatch", "combine")}
    cases = [Case(2, "balanced", "h128-f256-s128", 2, 0.09, 0.1, -10.0, 1.1, phases, (0.1, 0.1)),
             Case(1, "collapse", "h128-f256-s128", 2, 0.12, 0.1, 20.0, 3.4, phases, (0.095, 0.105))]
    assert mape(cases) == pytest.approx(15.0)
    assert cases[1].spread_pct == pytest.approx(10.0)
    text = markdown(cases, "header", "cpu-gloo-2c")
    assert "15.0 %" in text and "| h128-f256-s128 | collapse | 1 | 3.40 | 120.0 | 100.0 | 10.0 % | +20.0 % |" in text
    assert "each case ran 2 time(s)" in text and "median 5.0 %, largest 10.0 %" in text
    assert json.loads(as_json(cases, "header", "cpu-gloo-2c"))["mape_pct"] == pytest.approx(15.0)


@pytest.mark.parametrize("flag", [["--steps", "2"], ["--passes", "2"], ["--nproc", "2"], ["--base", "x.yaml"],
                                  ["--profile", "cpu-gloo-2c-2r"]])
def test_accuracy_refuses_execute_flags_without_execute(flag, capsys):
    assert main(["accuracy", *flag]) == 2
    err = capsys.readouterr().err
    assert flag[0] in err and "--execute" in err and "Traceback" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_execute_on_gpus_with_nccl(tmp_path):
    import torch

    gpus = torch.cuda.device_count()
    out = tmp_path / "gpu"
    done = _moesim("execute", str(QUICKSTART), "--backend", "nccl", "--nproc", str(gpus), "--steps", "2",
                   "--compare", "dgx-h100", "--out", str(out), timeout_s=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "execute.json").read_text())
    assert summary["backend"] == "nccl" and summary["ranks"] == gpus and summary["step_time_s"] > 0
    assert "step time (median)" in (out / "compare.md").read_text()


def test_execute_under_torchrun_writes_from_rank_0(tmp_path):
    """Each rank is a torchrun process running the command; rank 0 gathers and writes."""
    torchrun, moesim = Path(sys.executable).with_name("torchrun"), Path(sys.executable).with_name("moesim")
    if not (torchrun.exists() and moesim.exists()):
        pytest.skip("torchrun and the moesim script are not installed beside this Python")
    out = tmp_path / "trun"
    from execute.gloo_ranks import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()),
                           str(moesim), "execute", str(_plan(tmp_path)), "--steps",
                           "1", "--out", str(out)], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("measured on CPU") == 1  # rank 0 reports, once
    summary = json.loads((out / "execute.json").read_text())
    assert summary["ranks"] == 2 and summary["layout"]["pp"] == 2


def test_accuracy_matrix_runs_each_case_per_pass_in_alternating_order(monkeypatch):
    """Two cases, three passes: executed A B, B A, A B; each case keeps its passes' step times and their median."""
    import pandas as pd

    from moesim.execute import matrix
    from moesim.execute.compare import Comparison
    from moesim.io.profile import load_profile, resolve_profile
    from moesim.loader import load_scenario

    monkeypatch.setattr(matrix, "ROUTINGS", {"balanced": "balanced"})
    monkeypatch.setattr(matrix, "SHAPES", {"h128-f256-s128": matrix.SHAPES["h128-f256-s128"]})
    order, times = [], iter([0.30, 0.10, 0.20, 0.40, 0.50, 0.60])

    def fake_execute(scaled, log, backend, threads, timeout_s):
        order.append(scaled.layout.ep)
        return scaled

    def fake_compare(run, predicted):
        rows = [("forward compute", 0.1, 0.2), ("  of which experts", 0.05, 0.08), ("backward compute", 0.3, 0.4),
                ("  of which experts", 0.15, 0.16)]
        table = pd.DataFrame([{"phase": p, "predicted_s": a, "measured_s": b, "error_pct": 0.0} for p, a, b in rows])
        return Comparison(table, 0.25, next(times))

    monkeypatch.setattr(matrix, "execute", fake_execute)
    monkeypatch.setattr(matrix, "comparison_of", fake_compare)
    cases = matrix.run_matrix(load_scenario(QUICKSTART), 2, load_profile(resolve_profile("cpu-gloo-2c-2r")), 1, 1,
                              60.0, passes=3)
    assert order == [1, 2, 2, 1, 1, 2]
    ep1, ep2 = cases
    assert ep1.measured_passes_s == (0.30, 0.40, 0.50) and ep1.measured_s == pytest.approx(0.40)
    assert ep2.measured_passes_s == (0.10, 0.20, 0.60) and ep2.measured_s == pytest.approx(0.20)
    assert ep2.spread_pct == pytest.approx(250.0) and ep1.error_pct == pytest.approx(-37.5)
    # each pass's experts keep their own entry (the table names both "of which experts")
    assert ep1.phases["forward experts"] == (0.05, 0.08) and ep1.phases["backward experts"] == (0.15, 0.16)
    assert list(ep1.phases) == ["forward compute", "forward experts", "backward compute", "backward experts"]


def test_accuracy_execute_says_the_machines_speed_against_the_profile_or_why_not():
    from moesim.calibration.drift import SpeedCheck
    from moesim.cli import _speed_text

    said = _speed_text(SpeedCheck(1.04, 8), SpeedCheck(1.11, 8))
    assert "8 samples" in said and "1.04 before the runs, 1.11 after" in said
    assert _speed_text("the profile has no expert FFN samples", SpeedCheck(1.0, 8)) == (
        "This machine's speed against the profile's was not checked: the profile has no expert FFN samples.")


def test_speed_check_against_the_committed_profile_or_why_not():
    from moesim.calibration.drift import SpeedCheck
    from moesim.cli import _speed_check
    from moesim.execute import matrix
    from moesim.io.profile import load_profile, resolve_profile

    path = resolve_profile("cpu-gloo-2c-2r")
    check = _speed_check(path, load_profile(path), matrix)
    assert isinstance(check, SpeedCheck) and check.samples == 8  # 2 shapes x 2 sizes x 2 passes
    old = resolve_profile("cpu-gloo-2c")
    assert _speed_check(old, load_profile(old), matrix) == "the profile has no expert FFN samples"


def test_the_speed_check_flushes_what_its_profile_was_calibrated_with(monkeypatch):
    from moesim.calibration import drift
    from moesim.cli import _speed_check
    from moesim.execute import matrix
    from moesim.io.profile import load_profile, resolve_profile

    flushes = []
    monkeypatch.setattr(drift, "speed_against", lambda samples, shapes, flush_bytes: flushes.append(flush_bytes))
    for name in ("cpu-gloo-2c-2r-xeon", "cpu-gloo-2c-2r"):
        path = resolve_profile(name)
        _speed_check(path, load_profile(path), matrix)
    assert flushes == [960 << 20, 64 << 20]  # twice the Xeon's 480 MiB L3 (host.json); 64 MiB before it was recorded
