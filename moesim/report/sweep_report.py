"""`moesim report DIR`: a sweep directory's point rows -> figures and report.md.

- step_time.png: step time p50 (solid) and p95 (dashed) against the first swept key, one line per value of
  the other swept keys;
- balance_ratio.png: the GPU balance ratio (max/mean expert rows after placement), the same way;
- dropped_vs_capacity_factor.png, when gate.capacity_factor is swept: dropped assignments against it;
- report.md: what was swept, a grid of the two swept axes (when there are two), every point, figures linked.

A directory can hold the points of several sweeps (another --steps or --seed, an edited file). Resolved
parameters that differ between points with the same swept values are added to the swept ones, so such points
get their own lines and rows instead of being mixed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from moesim.io.results import write_figure_atomic, write_text_atomic
from moesim.io.sweep_points import SCENARIO_PREFIX, SWEPT_KEYS, point_files, read_points
from moesim.spec.errors import SpecError
from moesim.viz.sweep import Series, lines_figure

REPORT_MD = "report.md"
STEP_TIME_PNG = "step_time.png"
BALANCE_PNG = "balance_ratio.png"
DROPPED_PNG = "dropped_vs_capacity_factor.png"
CAPACITY_FACTOR = "gate.capacity_factor"


@dataclass(frozen=True)
class SweepRows:
    rows: list[dict]    # one per point, sorted by the swept values (then the extra ones)
    keys: list[str]     # swept key paths in the sweep file's order; the first is the x axis
    extra: list[str]    # resolved columns that differ between points with the same swept values
    source: str         # the directory, as given

    @property
    def dims(self) -> list[str]:
        return [*self.keys, *self.extra]


def show(key: str, value) -> str:
    """A swept value as users read it: a null capacity factor is `dropless`, other nulls `null`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "dropless" if key.endswith("capacity_factor") else "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _order(value) -> tuple:
    """Sort key for values of mixed kinds: numbers ascending, then text, then null (dropless last)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def load_sweep_rows(sweep_dir: Path, key: str = "DIR") -> SweepRows:
    table = read_points(point_files(sweep_dir, key))
    rows = table.to_pylist()  # Python values: a null stays None, an int stays an int
    keys = _swept_keys(rows, table.column_names)
    if not keys:
        raise SpecError(key, str(sweep_dir), "a sweep directory whose points record their swept keys")
    extra = _extra_dims(rows, keys, table.column_names)
    rows.sort(key=lambda r: tuple(_order(r.get(k)) for k in (*keys, *extra)))
    return SweepRows(rows, keys, extra, str(sweep_dir))


def _swept_keys(rows: list[dict], columns: list[str]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        if row.get(SWEPT_KEYS):
            keys += [k for k in json.loads(row[SWEPT_KEYS]) if k not in keys]
    if not keys:  # rows written before the swept keys were recorded: the dotted columns outside scenario.*
        keys = [c for c in columns if "." in c and not c.startswith(SCENARIO_PREFIX)]
    return keys


def _extra_dims(rows: list[dict], keys: list[str], columns: list[str]) -> list[str]:
    """Resolved parameters (and the moesim version) that take more than one value among points with the same
    swept values: the points of different sweeps. The point's name follows from its swept values."""
    candidates = [c for c in columns if c.startswith(SCENARIO_PREFIX) and c != f"{SCENARIO_PREFIX}name"]
    candidates.append("moesim_version")
    seen: dict[str, dict[tuple, str]] = {c: {} for c in candidates}
    extra = []
    for row in rows:
        signature = tuple(show(k, row.get(k)) for k in keys)
        for c in candidates:
            if c in extra:
                continue
            value = json.dumps(row.get(c), sort_keys=True)
            if seen[c].setdefault(signature, value) != value:
                extra.append(c)
    return [c for c in candidates if c in extra]  # in column order


def _axis(sweep: SweepRows, x_key: str):
    """(x position of a value, tick labels, whether the values are ordered): the values themselves when they
    are all numbers, else positions 0, 1, ... in sorted order (a null capacity factor, `dropless`, last);
    text such as policy names has no order."""
    values = [r.get(x_key) for r in sweep.rows]
    numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
    if all(numbers) and all(math.isfinite(v) for v in values):
        return float, None, True
    labels = sorted({show(x_key, v): _order(v) for v in values}.items(), key=lambda item: item[1])
    index = {label: float(i) for i, (label, _) in enumerate(labels)}
    ordered = all(n or v is None for n, v in zip(numbers, values))
    return (lambda v: index[show(x_key, v)]), [label for label, _ in labels], ordered


def label_of(key: str) -> str:
    """A dimension's short name in legends: the last part of its key path."""
    return key.removeprefix(SCENARIO_PREFIX).rsplit(".", 1)[-1]


def _follows(sweep: SweepRows, key: str, x_key: str) -> bool:
    """True when `key` takes one value per value of `x_key` (zipped with it, or fixed): it would split the
    lines into single points without telling them apart."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(show(x_key, r.get(x_key)), show(key, r.get(key))) == show(key, r.get(key))
               for r in sweep.rows)


def _series(sweep: SweepRows, x_key: str, y: str, dashed: str | None = None, scale: float = 1.0
            ) -> tuple[list[Series], dict]:
    """The lines of `y` against `x_key`, and lines_figure's axis arguments."""
    position, ticks, ordered = _axis(sweep, x_key)
    line_keys = [k for k in sweep.dims if k != x_key and not _follows(sweep, k, x_key)]
    lines: dict[str, list[dict]] = {}
    for row in sorted(sweep.rows, key=lambda r: tuple(_order(r.get(k)) for k in (*line_keys, x_key))):
        label = ", ".join(f"{label_of(k)}={show(k, row.get(k))}" for k in line_keys)
        lines.setdefault(label, []).append(row)
    series = []
    for label, rows in lines.items():
        rows = [r for r in rows if r.get(y) is not None]
        series.append(Series(label, [position(r.get(x_key)) for r in rows],
                             [scale * r[y] for r in rows],
                             None if dashed is None else [scale * (r.get(dashed) or math.nan) for r in rows]))
    return series, {"x_ticks": ticks, "connect": ordered}


def _figures(sweep: SweepRows, title: str) -> dict[str, tuple[str, object]]:
    """file name -> (caption, figure)."""
    x = sweep.keys[0]
    out = {}
    series, axis = _series(sweep, x, "step_time_s", "step_time_p95_s")
    how = "p50 solid, p95 dashed" if axis["connect"] else "p50 dots, p95 bars"
    out[STEP_TIME_PNG] = (f"step time ({how})", lines_figure(series, x, f"step time (s): {how}", title, **axis))
    series, axis = _series(sweep, x, "balance_ratio")
    out[BALANCE_PNG] = ("balance ratio (GPU max/mean expert rows after placement)",
                        lines_figure(series, x, "balance ratio: GPU max/mean rows", title, **axis))
    if CAPACITY_FACTOR in sweep.keys:
        series, axis = _series(sweep, CAPACITY_FACTOR, "dropped_fraction", "dropped_first_choice_fraction", 100)
        out[DROPPED_PNG] = ("dropped assignments (solid) and dropped first choices (dashed) against the "
                            "capacity factor",
                            lines_figure(series, CAPACITY_FACTOR, "dropped (%): all assignments solid, first "
                                         "choices dashed", title, **axis))
    return out


def report_files(sweep: SweepRows) -> list[str]:
    names = [STEP_TIME_PNG, BALANCE_PNG] + ([DROPPED_PNG] if CAPACITY_FACTOR in sweep.keys else [])
    return [*names, REPORT_MD]


def _refuse_existing(out_dir: Path, names: list[str], force: bool, flag: str) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError(flag, str(out_dir), "a directory for the report, not a file")
    existing = [n for n in names if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    if existing and not force:
        raise SpecError(flag, str(out_dir), f"a directory without report files ({', '.join(existing)} "
                                            "already there); pass --force to replace them")


def write_sweep_report(sweep_dir: Path, out_dir: Path | None = None, force: bool = False) -> list[Path]:
    """Write the report of `sweep_dir` into `out_dir` (default: the sweep directory) and return the files, the
    figures first and report.md last, so report.md never links a figure that is not there yet."""
    sweep = load_sweep_rows(sweep_dir)
    target = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    names = report_files(sweep)
    _refuse_existing(target, names, force, "--out" if out_dir is not None else "DIR")
    title = f"{_name(sweep)}: {len(sweep.rows)} points"
    figures = _figures(sweep, title)
    paths = [write_figure_atomic(target / name, fig) for name, (_, fig) in figures.items()]
    captions = {name: caption for name, (caption, _) in figures.items()}
    paths.append(write_text_atomic(target / REPORT_MD, report_markdown(sweep, captions)))
    return paths


def _name(sweep: SweepRows) -> str:
    names = {str(r.get(f"{SCENARIO_PREFIX}name") or "sweep").split("[", 1)[0] for r in sweep.rows}
    return ", ".join(sorted(names))


# ------------------------------------------------------------------------------------------------ report.md

def _cell(value) -> str:
    return str(value).replace("|", "\\|")  # a JSON value may hold a pipe


def _distinct(sweep: SweepRows, column: str) -> str:
    values = sorted({r.get(column) for r in sweep.rows}, key=_order)
    return ", ".join(show(column, v) for v in values)


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


_POINT_COLUMNS = (  # header, column, format
    ("step p50 (s)", "step_time_s", "#.4g"), ("step p95 (s)", "step_time_p95_s", "#.4g"),
    ("tokens/s", "tokens_per_s", ",.0f"), ("MFU (%)", "mfu", "%"), ("dropped (%)", "dropped_fraction", "%"),
    ("dropped first choices (%)", "dropped_first_choice_fraction", "%"), ("balance ratio", "balance_ratio", ".2f"),
    ("expert max/mean", "expert_load_max_over_mean", ".2f"), ("placement changes", "placement_changes", ",d"),
    ("fits in memory", "fits_in_memory", ""))


def _points_table(sweep: SweepRows) -> list[str]:
    head = [k.removeprefix(SCENARIO_PREFIX) for k in sweep.dims] + [h for h, _, _ in _POINT_COLUMNS]
    head += ["peak memory (GiB)", "point key"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sweep.rows:
        cells = [show(k, r.get(k)) for k in sweep.dims]
        for _, column, fmt in _POINT_COLUMNS:
            value = r.get(column)
            cells.append(_pct(value) if fmt == "%" else show(column, value) if not fmt else _num(value, fmt))
        peak = r.get("peak_memory_bytes_max")
        cells += [_num(None if peak is None else peak / 2**30, ".1f"), f"`{str(r.get('point_key'))[:12]}`"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _grid(sweep: SweepRows) -> list[str]:
    """With two dimensions: rows = the first, columns = the second; each cell step time p50 and, when the
    capacity factor is swept, dropped assignments, else the balance ratio."""
    if len(sweep.dims) != 2:
        return []
    row_key, col_key = sweep.dims
    drops = CAPACITY_FACTOR in sweep.keys
    cells: dict[tuple[str, str], str] = {}
    for r in sweep.rows:
        text = f"{_num(r.get('step_time_s'), '#.4g')} / {_pct(r.get('dropped_fraction'))} %" if drops else \
            f"{_num(r.get('step_time_s'), '#.4g')} ({_num(r.get('balance_ratio'), '.2f')})"
        cells.setdefault((show(row_key, r.get(row_key)), show(col_key, r.get(col_key))), text)
    row_values = list(dict.fromkeys(show(row_key, r.get(row_key)) for r in sweep.rows))
    col_values = [show(col_key, v) for v in sorted({r.get(col_key) for r in sweep.rows}, key=_order)]
    what = "dropped assignments (%)" if drops else "balance ratio in brackets"
    lines = [f"Step time p50 in s / {what}; rows: `{row_key}`, columns: `{col_key}`.", "",
             "| " + " | ".join([label_of(row_key), *col_values]) + " |", "|" + "---|" * (len(col_values) + 1)]
    for rv in row_values:
        lines.append("| " + " | ".join(_cell(c) for c in [rv, *(cells.get((rv, cv), "—") for cv in col_values)])
                     + " |")
    return lines


def report_markdown(sweep: SweepRows, captions: dict[str, str]) -> str:
    model = _distinct(sweep, f"{SCENARIO_PREFIX}model.name")
    profile = _distinct(sweep, f"{SCENARIO_PREFIX}cluster.profile.name")
    lines = [f"# Sweep report: {_name(sweep)}", "",
             f"{len(sweep.rows)} points from `{sweep.source}/points`: {model} on {_distinct(sweep, 'gpus')} GPUs "
             f"(profile {profile}), {_distinct(sweep, 'measured_steps')} measured steps per point, moesim "
             f"{_distinct(sweep, 'moesim_version')}.", ""]
    for i, key in enumerate(sweep.keys):
        lines.append(f"- `{key}`{' (x axis)' if i == 0 else ''}: {_distinct(sweep, key)}")
    for key in sweep.extra:
        lines.append(f"- also different between points with the same swept values (points of several sweeps): "
                     f"`{key.removeprefix(SCENARIO_PREFIX)}`: {_distinct(sweep, key)}")
    grid = _grid(sweep)
    if grid:
        lines += ["", *grid]
    for name, caption in captions.items():
        lines += ["", f"![{caption}]({name})"]
    lines += ["", "## Every point", "", *_points_table(sweep)]
    return "\n".join(lines) + "\n"
