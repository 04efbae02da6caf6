"""A sweep directory on disk: the marker that says a directory is a sweep's, and its point files (one Parquet
row per finished point, written by moesim.sweep.worker), read back as one table."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moesim.spec.errors import SpecError

SWEEP_MARKER = ".moesim-sweep"
POINTS_DIR = "points"
# the row layout's fixed names (moesim.sweep.rows writes the rows; moesim.report reads them)
SCENARIO_PREFIX = "scenario."  # every resolved parameter: scenario.<dotted path>
SWEPT_KEYS = "swept_keys"  # JSON list of the swept key paths, in the sweep file's order
POINT_KEY = "point_key"
_NOT_A_SWEEP = "a sweep directory: one written by `moesim sweep` (or `moesim run` on a sweep file), holding " \
               f"{SWEEP_MARKER} and {POINTS_DIR}/*.parquet"


def point_files(sweep_dir: Path, key: str = "DIR") -> list[Path]:
    """The point files of a sweep directory, sorted by name (the point key); a directory that is not a sweep's,
    or a sweep with no finished point, is a SpecError naming `key` (the flag or argument that gave it)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir() or not (sweep_dir / SWEEP_MARKER).is_file():
        raise SpecError(key, str(sweep_dir), _NOT_A_SWEEP)
    files = sorted((sweep_dir / POINTS_DIR).glob("*.parquet"))
    if not files:
        raise SpecError(key, str(sweep_dir), f"{_NOT_A_SWEEP}; this one has no finished point yet")
    return files


def read_points(files: list[Path]) -> pa.Table:
    """All point rows as one table. Columns missing from some files are null there; a column typed null in
    one file (a sweep whose values were all null) takes the type of the others."""
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as exc:
            raise SpecError("point file", str(path), f"a Parquet file moesim can read ({' '.join(str(exc).split())}"
                            "); delete it and rerun the sweep to simulate that point again") from None
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise SpecError("point files", str(files[0].parent), "rows with one type per column (different "
                        f"sweeps share this directory: {' '.join(str(exc).split())})") from None
