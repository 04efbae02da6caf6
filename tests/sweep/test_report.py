"""`moesim report DIR`: figures and report.md from a real (tiny) sweep's Parquet rows; refuses to overwrite an
earlier report without --force; a directory that is not a sweep's is one line and exit 2."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from moesim.cli import main

PNG = b"\x89PNG"
GRID_SWEEP = "sweep:\n  routing.zipf_s: [0.0, 1.5]\n  placement.policy: [static, smartmoe]\n"


@pytest.fixture
def swept(tiny_sweep_dir) -> Path:
    return tiny_sweep_dir


def _rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "points").glob("*.parquet"))])


def _table(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_report_draws_the_sweep_and_tabulates_every_point(swept, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(swept), "--out", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "step_time.png", "balance_ratio.png", "dropped_vs_capacity_factor.png"}
    for name in names - {"report.md"}:
        assert (out / name).read_bytes().startswith(PNG), name
    md = (out / "report.md").read_text()
    assert set(re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)) == names - {"report.md"}  # every figure linked
    assert "`simulation.seed` (x axis): 0, 1" in md and "`gate.capacity_factor`: 1, 1.25, dropless" in md
    table = _table(md, "simulation.seed")
    rows = _rows(swept)
    assert len(table) == len(rows) == 6
    # each line is its point: the p50 step time in the table is the Parquet row's
    by_key = {r["point_key"][:12]: r for r in rows.to_dict("records")}
    for cells in table:
        row = by_key[cells[-1].strip("`")]
        assert cells[0] == str(row["simulation.seed"])
        assert cells[2] == ("dropless" if pd.isna(row["gate.capacity_factor"]) else f"{row['gate.capacity_factor']:g}")
        assert float(cells[3]) == pytest.approx(row["step_time_s"], rel=1e-3)
        assert float(cells[7]) == pytest.approx(100 * row["dropped_fraction"], abs=0.051)
    assert [c[0] for c in table] == ["0", "0", "0", "1", "1", "1"]  # sorted by the swept values
    assert not (swept / "report.md").exists()  # --out: nothing written into the sweep directory


def test_an_existing_report_is_kept_without_force(tiny_sweep_dir, tmp_path, capsys):
    swept = Path(shutil.copytree(tiny_sweep_dir, tmp_path / "sweep"))  # the report goes into the sweep's directory
    assert main(["report", str(swept)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in swept.iterdir() if p.is_file()}
    text = (swept / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", str(swept)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "report.md" in err and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in swept.iterdir() if p.is_file()} == before
    assert main(["report", str(swept), "--force"]) == 0
    assert (swept / "report.md").read_text() == text  # same rows, same report


def test_a_two_axis_sweep_gets_a_grid_and_points_of_two_sweeps_stay_apart(tiny_sweep, tmp_path, capsys):
    tiny_sweep.write_text(tiny_sweep.read_text().split("sweep:")[0] + GRID_SWEEP)
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny_sweep), "--jobs", "2", "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert not (out / "dropped_vs_capacity_factor.png").exists()  # no capacity factor swept
    grid = _table(md, "zipf_s")
    assert [row[0] for row in grid] == ["0", "1.5"] and all(len(row) == 3 for row in grid)
    assert all(re.fullmatch(r"[0-9.]+ \([0-9.]+\)", cell) for row in grid for cell in row[1:])  # p50 (balance)

    # the same sweep with --steps 2 into the same directory: the report tells the two apart
    assert main(["sweep", str(tiny_sweep), "--jobs", "2", "--out", str(out), "--steps", "2"]) == 0
    assert main(["report", str(out), "--force"]) == 0
    md = (out / "report.md").read_text()
    assert "`simulation.steps`: 1, 2" in md
    assert len(_table(md, "routing.zipf_s")) == 8 and not _table_or_none(md, "zipf_s")  # 3 dimensions: no grid


def _table_or_none(md: str, header_start: str):
    try:
        return _table(md, header_start)
    except StopIteration:
        return None


@pytest.mark.parametrize("make", ["missing", "file", "foreign", "empty_sweep"])
def test_a_directory_that_is_not_a_sweeps_is_one_line(tmp_path, capsys, make):
    target = tmp_path / "d"
    if make == "file":
        target.write_text("x")
    elif make == "foreign":
        target.mkdir()
        (target / "points").mkdir()
        (target / "points" / "a.parquet").write_text("x")  # looks like one, but no .moesim-sweep marker
    elif make == "empty_sweep":
        target.mkdir()
        (target / ".moesim-sweep").write_text("")
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesim: error: DIR:") and err.count("\n") == 1 and "Traceback" not in err
    assert "sweep directory" in err
    assert not (tmp_path / "d" / "report.md").exists()


def test_a_damaged_point_file_is_one_line_naming_it(swept, tmp_path, capsys):
    copy = tmp_path / "copy"
    (copy / "points").mkdir(parents=True)
    (copy / ".moesim-sweep").write_text("")
    files = sorted((swept / "points").glob("*.parquet"))
    for f in files:
        (copy / "points" / f.name).write_bytes(f.read_bytes())
    (copy / "points" / files[0].name).write_bytes(b"PAR1 not really")
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert files[0].name in err and err.count("\n") == 1 and "Traceback" not in err
