"""`moesim accuracy`: the validation set of published, measured MoE training runs, simulated and compared.

A validation set is a directory of runs, each a folder with `published.yaml` (the published figure, its source,
the configuration as published and `step_time_s`: the figure converted to one step's time, arithmetic shown) and
`scenario.yaml` (the closest scenario moesim can run). Each scenario is simulated; where its micro-batches are
too many to simulate whole, two smaller counts m1 < m2 (both at least the pipeline depth, so 1F1B is in its
steady state) are simulated and the step time, and each breakdown bucket, extended along the line through them:
a 1F1B step is affine in the micro-batch count when the micro-batches cost the same
(tests/report/test_accuracy.py shows the extrapolation equal to the full run).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moesim.io.results import write_json_atomic, write_text_atomic
from moesim.io.strict import finite_float, read_yaml_mapping
from moesim.loader import load_scenario
from moesim.metrics.error_summary import error_summary
from moesim.metrics.predict import DEFAULT_MAX_MICRO_BATCHES, Prediction, predict
from moesim.spec.errors import SpecError
from moesim.spec.scenario import Scenario

# published.yaml's keys (validation/README.md describes them); only `id`, `compare_group` and `step_time_s`
# are read, the rest is provenance for people
PUBLISHED_KEYS = ("id", "model", "cluster", "precision", "layout", "compare_group", "published", "source",
                  "software", "configuration", "step_time_s", "flops", "confidence", "moesim_routing",
                  "not_modelled_yet")


@dataclass(frozen=True)
class ValidationRun:
    run_id: str
    published_step_s: float
    compare_group: str  # runs of one model on one cluster whose measured order of layouts is compared
    model: str
    layout: str
    precision: str
    source: str
    scenario: Scenario


def load_validation_set(directory: Path) -> list[ValidationRun]:
    """Every run folder of `directory` (sorted by name); a folder with one of the two files and not the other,
    or a published.yaml that does not say what it must, is a SpecError naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError("", str(directory), "a validation set directory (folders with published.yaml and "
                                            "scenario.yaml)")
    runs = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        published, scenario = folder / "published.yaml", folder / "scenario.yaml"
        if not published.exists() and not scenario.exists():
            continue
        for path in (published, scenario):
            if not path.exists():
                raise SpecError("", str(path), "both published.yaml and scenario.yaml in a run folder",
                                source=str(folder))
        runs.append(_load_run(folder.name, published, load_scenario(scenario)))
    if not runs:
        raise SpecError("", str(directory), "a directory with at least one run folder (published.yaml + "
                                            "scenario.yaml)")
    return runs


def _load_run(name: str, path: Path, scenario: Scenario) -> ValidationRun:
    doc = read_yaml_mapping(path, "published run")
    source = str(path)
    unknown = sorted(set(doc) - set(PUBLISHED_KEYS))
    if unknown:
        raise SpecError(unknown[0], doc[unknown[0]], f"one of the keys {', '.join(PUBLISHED_KEYS)}", source=source)
    if doc.get("id") != name:
        raise SpecError("id", doc.get("id"), f"the folder's name, {name}", source=source)
    step = doc.get("step_time_s")
    value = finite_float(step.get("value")) if isinstance(step, dict) else None
    if value is None or value <= 0:
        raise SpecError("step_time_s.value", step.get("value") if isinstance(step, dict) else step,
                        "the published figure as seconds per step, a number > 0", source=source)
    group = doc.get("compare_group", name)
    if not isinstance(group, str) or not group.strip():
        raise SpecError("compare_group", group, "a non-empty name shared by runs whose order is compared",
                        source=source)
    src = doc.get("source", {})
    where = " ".join(str(src.get(k, "")) for k in ("repository", "file", "paper", "section")).strip() \
        if isinstance(src, dict) else str(src)
    return ValidationRun(name, value, group, str(doc.get("model", scenario.model.name)), str(doc.get("layout", "")),
                         str(doc.get("precision", scenario.training.dtype.value)), where, scenario)


@dataclass(frozen=True)
class AccuracyRow:
    run: ValidationRun
    prediction: Prediction

    @property
    def error(self) -> float:
        """(predicted - published) / published: negative = moesim is too fast (optimistic)."""
        return self.prediction.step_s / self.run.published_step_s - 1.0

    @property
    def fits(self) -> bool:
        return self.prediction.peak_memory_bytes <= self.prediction.hbm_bytes


def run_accuracy(runs: list[ValidationRun], max_micro_batches: int = DEFAULT_MAX_MICRO_BATCHES,
                 progress: Callable[[int, int], None] | None = None) -> list[AccuracyRow]:
    rows = []
    for i, run in enumerate(runs):
        rows.append(AccuracyRow(run, predict(run.scenario, max_micro_batches)))
        if progress is not None:
            progress(i + 1, len(runs))
    return rows


@dataclass(frozen=True)
class AccuracyStats:
    median_abs_error: float
    max_abs_error: float
    max_abs_error_run: str
    signed_mean_error: float
    orders: dict[str, tuple[list[str], list[str]]]  # group -> (measured order, predicted order), fastest first


def accuracy_stats(rows: list[AccuracyRow]) -> AccuracyStats:
    summary = error_summary({r.run.run_id: r.error for r in rows})
    orders = {}
    for group in sorted({r.run.compare_group for r in rows}):
        members = [r for r in rows if r.run.compare_group == group]
        if len(members) < 2:
            continue

        def tokens_per_gpu_s(r: AccuracyRow, step_s: float) -> float:
            sc = r.run.scenario
            return sc.training.global_batch_size * sc.training.seq_len / (step_s * sc.layout.world_size)

        measured = sorted(members, key=lambda r: -tokens_per_gpu_s(r, r.run.published_step_s))
        predicted = sorted(members, key=lambda r: -tokens_per_gpu_s(r, r.prediction.step_s))
        orders[group] = ([r.run.run_id for r in measured], [r.run.run_id for r in predicted])
    return AccuracyStats(summary.median_abs_error, summary.max_abs_error, summary.max_abs_error_run,
                         summary.signed_mean_error, orders)


_SHOWN_BUCKETS = ("compute", "memory_bound", "kernel_launch", "all_to_all", "straggler_wait", "tensor_parallel",
                  "context_parallel", "pipeline_bubble", "dp_sync")


def read_baseline(path: Path) -> dict[str, float]:
    """run id -> error of an earlier docs/accuracy.json (moesim accuracy --baseline); one line if unreadable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return {str(run): float(row["error"]) for run, row in doc.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise SpecError("--baseline", str(path), f"a docs/accuracy.json written by moesim accuracy ({err})") from None


def accuracy_markdown(rows: list[AccuracyRow], header: str, baseline: dict[str, float] | None = None) -> str:
    """docs/accuracy.md: the table, the statistics against the goal, the order of layouts per group; with a
    baseline (run id -> earlier error), each row's error before too."""
    st = accuracy_stats(rows)
    before = baseline is not None
    lines = [
        "# Accuracy against published MoE training runs", "",
        header, "",
        "Error = predicted / published step time - 1: negative means moesim is too fast (optimistic). The predicted "
        "breakdown is seconds per step, mean over ranks; `other` = optimizer + placement + idle. `simulated` says "
        "how many micro-batches per pipeline were simulated (two counts: extrapolated along the line through them "
        "to the run's count).", "",
        f"**{len(rows)} runs: median |error| {100 * st.median_abs_error:.1f} %, max |error| "
        f"{100 * st.max_abs_error:.1f} % ({st.max_abs_error_run}), signed mean {100 * st.signed_mean_error:+.1f} %.** "
        "Goal (issues 12 and 13): median <= 10 %, max <= 25 %, signed mean within +-5 %, layouts in the measured "
        "order.", "",
        "| run | model | GPUs | precision | published s | predicted s | error | "
        + ("error before | " if before else "") + " | ".join(b.replace("_", " ") for b in _SHOWN_BUCKETS)
        + " | other | peak memory / HBM | simulated |",
        "|---|---|---|---|---|---|---|" + ("---|" if before else "") + "---|" * (len(_SHOWN_BUCKETS) + 3),
    ]
    old = [baseline[r.run.run_id] for r in rows if r.run.run_id in baseline] if before else []
    if old:  # the statistics line gains the baseline's
        stats_line = next(i for i, line in enumerate(lines) if line.startswith("**"))
        lines[stats_line] += (f" Before (the baseline's errors of these {len(old)} runs): median |error| "
                              f"{100 * statistics.median(abs(e) for e in old):.1f} %, max "
                              f"{100 * max(abs(e) for e in old):.1f} %, signed mean "
                              f"{100 * statistics.fmean(old):+.1f} %.")
    for r in rows:
        p, sc = r.prediction, r.run.scenario
        other = sum(v for b, v in p.breakdown_s.items() if b not in _SHOWN_BUCKETS)
        # an extrapolated bucket can come out a hair below zero (a line through two nearly equal values)
        buckets = " | ".join(f"{max(p.breakdown_s.get(b, 0.0), 0.0):.2f}" for b in _SHOWN_BUCKETS)
        fit = "" if r.fits else " **does not fit**"
        sim = "/".join(str(m) for m in p.simulated_micro_batches) + (f" -> {p.micro_batches}" if p.extrapolated else "")
        lines.append(f"| {r.run.run_id} | {r.run.model} | {sc.layout.world_size:,} | {r.run.precision} "
                     f"| {r.run.published_step_s:.3f} | {p.step_s:.3f} | {100 * r.error:+.1f} % "
                     + (f"| {_before(baseline, r.run.run_id)} " if before else "") + f"| {buckets} "
                     f"| {other:.2f} | {p.peak_memory_bytes / 2**30:.1f} / {p.hbm_bytes / 2**30:.0f} GiB{fit} "
                     f"| {sim} |")
    lines += ["", "## Order of layouts", ""]
    if not st.orders:
        lines.append("No group has two runs.")
    for group, (measured, predicted) in st.orders.items():
        verdict = "same order" if measured == predicted else (
            "reversed" if measured == predicted[::-1] else "different order")
        lines.append(f"- **{group}** ({verdict}): measured {' > '.join(measured)}; predicted {' > '.join(predicted)} "
                     "(tokens/s per GPU, fastest first)")
    lines += ["", "## Sources", ""]
    lines += [f"- {r.run.run_id}: {r.run.source}" for r in rows]
    return "\n".join(lines) + "\n"


def _before(baseline: dict[str, float], run_id: str) -> str:
    return f"{100 * baseline[run_id]:+.1f} %" if run_id in baseline else "new"


def accuracy_record(rows: list[AccuracyRow]) -> dict:
    """The numbers of docs/accuracy.md as JSON (docs/accuracy.json): what the CI regression check compares."""
    return {r.run.run_id: {"published_step_s": r.run.published_step_s, "predicted_step_s": r.prediction.step_s,
                           "error": r.error, "fits": r.fits,
                           "simulated_micro_batches": list(r.prediction.simulated_micro_batches)}
            for r in rows}


def refuse_overwrite(out_md: Path, force: bool) -> None:
    """SpecError when the table or its .json exists and `force` is not given (checked again before writing)."""
    for path in (Path(out_md), Path(out_md).with_suffix(".json")):
        if path.exists() and not force:
            raise SpecError("--out", str(path), "a file that does not exist yet, or --force to replace it")


def write_accuracy(out_md: Path, rows: list[AccuracyRow], header: str, force: bool = False,
                   baseline: dict[str, float] | None = None) -> list[Path]:
    """`out_md` (the table) and the same path with .json (the numbers the CI check reads), each written
    atomically; an existing file is refused without `force`."""
    refuse_overwrite(out_md, force)
    return [write_text_atomic(out_md, accuracy_markdown(rows, header, baseline)),
            write_json_atomic(Path(out_md).with_suffix(".json"), accuracy_record(rows))]
