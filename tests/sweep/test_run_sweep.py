"""`moesim run` on a sweep file is `moesim sweep`: the same directory (runs/<name>-sweep by default), the same
point files, and each resumes what the other left; with --no-files it writes nothing at all."""

from __future__ import annotations

import tempfile
from pathlib import Path

from moesim.cli import main


def _points(out: Path) -> dict[str, int]:
    """point file name -> modification time (ns): a rewritten file shows."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "points").glob("*.parquet"))}


def test_run_and_sweep_share_the_directory_and_resume_each_other(tiny_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default directory is relative: runs/tiny-sweep
    out = tmp_path / "runs" / "tiny-sweep"
    assert main(["run", str(tiny_sweep), "--jobs", "2"]) == 0
    first = _points(out)
    assert len(first) == 6 and (out / "sweep.csv").is_file() and (out / ".moesim-sweep").is_file()
    capsys.readouterr()

    assert main(["sweep", str(tiny_sweep), "--jobs", "2"]) == 0  # finds run's points: nothing to simulate
    assert "0 points simulated" in capsys.readouterr().out
    assert _points(out) == first

    lost = sorted(first)[:2]
    for name in lost:
        (out / "points" / name).unlink()
    assert main(["run", str(tiny_sweep), "--jobs", "1"]) == 0  # resumes: only the two missing points
    out_text = capsys.readouterr().out
    assert "2 points simulated" in out_text and "4 already done" in out_text
    after = _points(out)
    assert set(after) == set(first)
    assert {n for n in after if after[n] != first.get(n)} == set(lost)  # only the missing ones, once each


def test_run_prints_the_same_table_as_sweep(tiny_sweep, tmp_path, capsys):
    assert main(["sweep", str(tiny_sweep), "--jobs", "2", "--out", str(tmp_path / "a")]) == 0
    swept = capsys.readouterr().out
    assert main(["run", str(tiny_sweep), "--jobs", "2", "--out", str(tmp_path / "b")]) == 0
    ran = capsys.readouterr().out
    assert swept.split("\n6 points simulated")[0] == ran.split("\n6 points simulated")[0]
    assert (tmp_path / "a" / "sweep.csv").read_text() == (tmp_path / "b" / "sweep.csv").read_text()


def test_no_files_runs_the_sweep_in_a_temporary_directory_and_removes_it(tiny_sweep, tmp_path, monkeypatch,
                                                                        capsys):
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["run", str(tiny_sweep), "--jobs", "2", "--no-files", "--out", str(tmp_path / "ignored")]) == 0
    out = capsys.readouterr().out
    assert "6 points simulated" in out and "dropless" in out and "wrote" not in out
    assert list(work.iterdir()) == []
    # the sweep's temporary directory is gone (multiprocessing's own pymp-* directory goes when Python exits)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("pymp-")] == []
    assert not (tmp_path / "ignored").exists()


def test_a_sweep_file_with_a_foreign_out_directory_is_refused_by_run_too(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(tiny_sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
