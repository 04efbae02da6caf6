"""A run directory is replaced whole or not at all; user directories are protected; paths come from --out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moesim.io.results import RUN_MARKER, WriteError
from moesim.io.staged_dir import check_out_dir, default_run_dir, recover_stale, safe_slug, staged_dir
from moesim.spec.errors import SpecError


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(text)


def test_new_directory_gets_files_and_marker_and_no_staging_left(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    with staged_dir(out) as staging:
        _write(staging, {"summary.json": "{}"})
        assert not out.exists()  # nothing visible until the run is complete
    assert _names(out) == [RUN_MARKER, "summary.json"]
    assert _names(tmp_path / "a") == ["b"]


def test_rerun_replaces_the_whole_previous_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_dir(out) as staging:
        _write(staging, {"old_only.csv": "1", "summary.json": "old"})
    with staged_dir(out) as staging:
        _write(staging, {"summary.json": "new"})
    assert _names(out) == [RUN_MARKER, "summary.json"]  # no stale file from the old run
    assert (out / "summary.json").read_text() == "new"
    assert _names(tmp_path) == ["run"]


def test_failure_inside_leaves_the_previous_run_untouched(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_dir(out) as staging:
        _write(staging, {"summary.json": "old"})
    with pytest.raises(RuntimeError), staged_dir(out) as staging:
        _write(staging, {"summary.json": "half"})
        raise RuntimeError("killed half-way")
    assert (out / "summary.json").read_text() == "old"
    assert _names(tmp_path) == ["run"]


def test_foreign_directory_is_refused_without_force(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(SpecError) as info:
        check_out_dir(tmp_path, force=False)
    err = info.value
    assert err.key == "--out" and err.value == str(tmp_path) and "--force" in err.expected
    assert "\n" not in str(err)
    with pytest.raises(SpecError), staged_dir(tmp_path) as staging:
        _write(staging, {"summary.json": "x"})
    assert _names(tmp_path) == ["thesis.tex"]


def test_forced_foreign_directory_keeps_user_files_and_is_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with staged_dir(tmp_path, force=True) as staging:
        _write(staging, {"summary.json": "x"})
    assert _names(tmp_path) == ["summary.json", "thesis.tex"]  # no marker: the next run must be forced again
    assert (tmp_path / "thesis.tex").read_text() == "precious"
    with pytest.raises(SpecError):
        check_out_dir(tmp_path, force=False)


@pytest.mark.parametrize("force", [False, True])
def test_existing_file_is_refused(tmp_path: Path, force: bool) -> None:
    path = tmp_path / "out"
    path.write_text("not a directory")
    with pytest.raises(SpecError, match="--out"):
        check_out_dir(path, force=force)
    assert path.read_text() == "not a directory"


def test_unwritable_places_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="could not write /proc/moesim-run"):
        check_out_dir(Path("/proc/moesim-run"), force=False)
    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(WriteError):
            check_out_dir(ro / "run", force=False)


def test_stale_staging_of_a_dead_process_is_removed_and_an_aside_run_restored(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    out = tmp_path / "run"
    stale = tmp_path / f".run.moesim-staging-{dead_pid}-abcd"
    aside = tmp_path / f".run.moesim-old-{dead_pid}-abcd"
    stale.mkdir()
    aside.mkdir()
    (aside / "summary.json").write_text("previous")
    recover_stale(out)
    assert _names(tmp_path) == ["run"] and (out / "summary.json").read_text() == "previous"


@pytest.mark.parametrize(("name", "slug"), [
    ("quickstart", "quickstart"),
    ("../../etc/passwd", "etc-passwd"),
    ("/abs/path", "abs-path"),
    ("a\x00b\nc\td", "a-b-c-d"),
    ("..", "scenario"),
    (".hidden", "hidden"),
    ("mixtral 8x7b [zipf]", "mixtral-8x7b-zipf"),
    ("x" * 300, "x" * 80),
])
def test_scenario_name_is_only_a_label(name: str, slug: str) -> None:
    assert safe_slug(name) == slug
    assert default_run_dir(name) == Path("runs") / slug


def test_a_symlinked_out_replaces_the_run_it_points_at(tmp_path: Path) -> None:
    real = tmp_path / "real" / "run"
    with staged_dir(real) as staging:
        _write(staging, {"summary.json": "old"})
    link = tmp_path / "link"
    link.symlink_to(real)
    with staged_dir(link) as staging:
        _write(staging, {"summary.json": "new"})
    assert link.is_symlink() and (link / "summary.json").read_text() == "new"
    assert _names(tmp_path) == ["link", "real"] and _names(tmp_path / "real") == ["run"]


@pytest.mark.parametrize("where", [".", "..", "sub/..", ""])
def test_the_current_directory_and_its_parents_are_refused_up_front(tmp_path: Path, monkeypatch, where: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(SpecError, match="not the current directory"):
        check_out_dir(Path(where), force=True)


def test_a_users_file_inside_a_previous_run_is_never_deleted_unasked(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_dir(out) as staging:
        _write(staging, {"summary.json": "old"})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="notes.txt"):
        check_out_dir(out, force=False)
    with staged_dir(out, force=True) as staging:
        _write(staging, {"summary.json": "new"})
    assert (out / "notes.txt").read_text() == "mine" and (out / "summary.json").read_text() == "new"


def test_glob_characters_in_the_name_touch_no_other_target(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345
    other_aside = tmp_path / f".a1.moesim-old-{dead_pid}-abcd"  # belongs to target "a1", not "a[1]"
    other_aside.mkdir()
    recover_stale(tmp_path / "a[1]")
    assert other_aside.is_dir() and not (tmp_path / "a[1]").exists()


def test_a_second_write_in_the_same_process_keeps_the_first_ones_staging(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_dir(out) as first:
        _write(first, {"summary.json": "first"})
        check_out_dir(out, force=False)  # cleans stale staging: must not take a live one of this process
        assert (first / "summary.json").is_file()
    assert (out / "summary.json").read_text() == "first"
