"""`moesim sweep`: parallel points, one Parquet row per point, resume, zipped grids, refused directories."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from moesim.cli import main
from moesim.loader import load_scenarios

SWEPT = ["simulation.seed", "routing.zipf_s", "gate.capacity_factor"]


def _points(out: Path) -> dict[str, int]:
    """point file name -> modification time (ns): a rewritten file shows."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "points").iterdir())}


def _rows(out: Path) -> pd.DataFrame:
    table = pd.concat([pd.read_parquet(p) for p in sorted((out / "points").glob("*.parquet"))])
    return table.sort_values("point_key").reset_index(drop=True)


def test_parallel_sweep_writes_one_row_per_point_and_a_rerun_skips_them(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(tiny_sweep), "--jobs", "2", "--out", str(out)]) == 0
    points = _points(out)
    assert len(points) == 6 and all(name.endswith(".parquet") for name in points)
    rows = _rows(out)
    assert len(rows) == 6 and rows["point_key"].is_unique
    assert {f"{k}.parquet" for k in rows["point_key"]} == set(points)
    for column in [*SWEPT, "step_time_s", "tokens_per_s", "peak_memory_bytes_max", "all_to_all_s",
                   "migration_s", "a2a_nvlink_GB"]:
        assert column in rows.columns
    assert (rows["step_time_s"] > 0).all()
    # zipped: capacity factor follows zipf_s; null (dropless) stays missing, not a number
    pairs = {(z, None if pd.isna(c) else c) for z, c in zip(rows["routing.zipf_s"], rows["gate.capacity_factor"])}
    assert pairs == {(0.5, 1.0), (1.0, 1.25), (1.5, None)}
    csv = pd.read_csv(out / "sweep.csv")
    assert len(csv) == 6 and (out / "sweep.png").stat().st_size > 0
    capsys.readouterr()

    assert main(["sweep", str(tiny_sweep), "--jobs", "2", "--out", str(out)]) == 0
    assert "0 points simulated" in capsys.readouterr().out
    assert _points(out) == points  # nothing simulated or rewritten
    pd.testing.assert_frame_equal(_rows(out), rows)


def test_a_new_seed_is_new_points_beside_the_old(tiny_sweep, tmp_path):
    out = tmp_path / "out"
    assert main(["sweep", str(tiny_sweep), "--jobs", "1", "--out", str(out), "--steps", "1"]) == 0
    assert main(["sweep", str(tiny_sweep), "--jobs", "1", "--out", str(out), "--steps", "2"]) == 0
    assert len(_points(out)) == 12  # --steps is part of every point's key
    assert len(pd.read_csv(out / "sweep.csv")) == 6  # the table holds this sweep's points only


def test_a_foreign_directory_is_refused_without_force(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["sweep", str(tiny_sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("sweep, message", [
    ("{zip: {routing.zipf_s: [0.5, 1.0], gate.capacity_factor: [1.0]}}", "as many values as"),
    ("{zip: {routing.zipf_s: [0.5, 1.0]}, routing.zipf_s: [2.0]}", "swept once"),
    ("{zip: [1, 2]}", "lists of equal length"),
    ("{zip: {}}", "lists of equal length"),
    ("{zip: {routing.zipf_s: []}}", "non-empty list"),
    ("{zip: {zipf_s: [1.0]}}", "dotted key paths"),
])
def test_bad_zipped_grids_are_one_line_errors_before_anything_runs(tiny_sweep, tmp_path, capsys, sweep, message):
    text = tiny_sweep.read_text().split("sweep:")[0] + f"sweep: {sweep}\n"
    tiny_sweep.write_text(text)
    out = tmp_path / "out"
    assert main(["sweep", str(tiny_sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_zipped_group_is_one_axis_of_the_product(tiny_sweep):
    keys, points = load_scenarios(tiny_sweep)
    assert keys == SWEPT
    assert [tuple(v.values()) for v, _ in points] == [
        (0, 0.5, 1.0), (0, 1.0, 1.25), (0, 1.5, None), (1, 0.5, 1.0), (1, 1.0, 1.25), (1, 1.5, None)]


def test_a_file_without_sweep_and_bad_jobs_are_refused(tmp_path, capsys, monkeypatch):
    root = Path(__file__).resolve().parents[2]
    assert main(["sweep", str(root / "scenarios" / "quickstart.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "a sweep: section" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    for command in ("sweep", "run"):
        assert main([command, str(root / "scenarios" / "skew-sweep.yaml"), "--jobs", "0"]) == 2
        assert "--jobs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before the default directory is made
