"""Atomic result writes and the output-directory guard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.io.results import WriteError, write_bytes_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_text_write_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.txt"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n"
    assert _names(tmp_path) == ["summary.txt"]


def test_new_file_gets_umask_permissions_not_mkstemp_0600(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    write_bytes_atomic(target, b"\x00\x01")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.read_bytes() == b"\x00\x01"
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640


def test_json_converts_numpy_and_ends_with_newline(tmp_path: Path) -> None:
    target = tmp_path / "out" / "summary.json"  # parent directories are created
    obj = {"p50_step_s": np.float32(1.5), "ranks": np.int64(8), "loads": np.arange(3), "ok": np.bool_(True)}
    write_json_atomic(target, obj)
    text = target.read_text()
    assert text.endswith("}\n") and '\n  "p50_step_s": 1.5' in text  # indent=2, key order kept
    assert json.loads(text) == {"p50_step_s": 1.5, "ranks": 8, "loads": [0, 1, 2], "ok": True}
    write_json_atomic(target, {"a": [1, 2]}, indent=None)
    assert target.read_text() == '{"a":[1,2]}\n'


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": np.array([1.0, np.inf])}, {"x": object()}])
def test_failed_json_serialisation_keeps_old_file_and_leaves_no_temp(tmp_path: Path, bad: dict) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"x": 1})
    with pytest.raises((ValueError, TypeError)):
        write_json_atomic(target, bad)
    assert json.loads(target.read_text()) == {"x": 1}
    assert _names(tmp_path) == ["summary.json"]


def test_failure_while_writing_removes_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "records.parquet"
    target.write_bytes(b"old")

    class Boom(pd.DataFrame):
        def to_parquet(self, *args, **kwargs):  # type: ignore[override]
            args[0].write(b"partial")
            raise OSError("disk full")

    with pytest.raises(WriteError, match=r"could not write .*records.parquet: disk full; nothing there was changed"):
        write_parquet_atomic(target, Boom({"a": [1]}))
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["records.parquet"]


def test_parquet_round_trip(tmp_path: Path) -> None:
    df = pd.DataFrame({"rank": np.arange(4, dtype=np.int32), "start_s": [0.0, 0.5, 1.0, 1.5]}, index=[9, 8, 7, 6])
    target = tmp_path / "r.parquet"
    write_parquet_atomic(target, df)
    back = pd.read_parquet(target)
    assert list(back.columns) == ["rank", "start_s"]  # no index column
    pd.testing.assert_frame_equal(back, df.reset_index(drop=True))
    assert _names(tmp_path) == ["r.parquet"]
