"""What every page of the dashboard shares: where the shipped files are, reading a scenario text safely, the
simulation behind the cost guard, cached by the text's hash, and the one-line errors.

Pages import these as `from app.common import ...` (the launcher, moesim.dashboard, puts the repository root on
PYTHONPATH; tests/app/conftest.py does the same for the tests).

- ROOT, SCENARIOS_DIR, PROFILES_DIR, TRACES_DIR: the repository and its shipped inputs.
- MOESIM_ERRORS: the exceptions that are bad input or a result that cannot be made (caught by pages and shown
  with show_error, as the CLI prints them); anything else is a bug, and Streamlit shows no details of it
  (the launcher sets client.showErrorDetails none).
- show_error(err): the CLI's one line (SpecError.one_line(); other moesim errors their text) in st.error.
- shipped_scenarios(), shipped_traces(), profile_names(): name -> path of the files a page may offer.
- upload_dir(), save_upload(name, data): the upload area (a temporary directory of this server process), the
  only place besides scenarios/, hw_profiles/ and traces/ that a scenario may name a file in (allowed_roots());
  named_as_uploaded(err, path, name): an error about a saved upload, naming the upload as the user did.
- scenario_from_text(text, name): YAML text -> Scenario, size-limited, paths confined to the allowed roots,
  relative paths resolved as for a file in scenarios/; raises SpecError. Cached by the text's hash.
- scenario_document(text, name) / document_text(doc): YAML text <-> the document (dict) pages edit;
  with_values(doc, {key path: value}): a copy with those keys set (sections created where missing).
- SKEW_PARAM: each synthetic routing family's skew parameter, with a slider's range and label.
- current_scenario_text(): st.session_state["scenario_yaml"] (the What-if page keeps it), else the quickstart.
- simulate_run(text, steps, seed, progress, name) -> SimRun (result, summary, expert_loads, wall_s) and
  simulate_cached(text, steps, seed, name) -> (result, summary), `name` as for scenario_from_text: the cost
  guard of `moesim run` first (limits from the `moesim dashboard` flags: cost_limits()), cached by (text,
  steps, seed, name) for every session (the last CACHED_RUNS runs, CACHED_RUN_BYTES at most).
  `progress(done, total)` is called after each simulated step on a cache miss only; a Streamlit call inside
  it is where a rerun (a click on Cancel, any new input) stops the simulation, and then nothing is cached.
- checked_scenario(text, steps, seed, name): the Scenario that simulate_run would run (SpecError otherwise);
  check_total_cost(texts, name): the same guard over several runs of one request, their times summed.
Results are shared between sessions and reruns: treat them as read-only.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from moesim.dashboard import DEFAULT_MAX_WALL_S, MAX_MEMORY_ENV, MAX_WALL_ENV  # the launcher's, one definition
from moesim.io.results import WriteError
from moesim.io.safe_yaml import dump_yaml, load_yaml
from moesim.loader import parse_scenario, with_simulation
from moesim.metrics.errors import ResultError
from moesim.metrics.summary import summarize
from moesim.metrics.types import RunSummary
from moesim.metrics.views import ExpertLoadLog
from moesim.sim.estimate import check_cost
from moesim.sim.simulate import SimResult, simulate
from moesim.spec.errors import SpecError, Verbatim
from moesim.spec.routing import RoutingDistribution
from moesim.spec.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS_DIR = ROOT / "scenarios"
PROFILES_DIR = ROOT / "hw_profiles"
TRACES_DIR = ROOT / "traces"
DEFAULT_SCENARIO = SCENARIOS_DIR / "quickstart.yaml"

MOESIM_ERRORS = (SpecError, ResultError, WriteError)

# A scenario is a few kilobytes; a trace (Parquet, SmartMoE .npz) a few megabytes. Streamlit's own upload limit
# (server.maxUploadSize, set by the launcher) is the outer bound; these are checked on every upload.
MAX_SCENARIO_BYTES = 1 * 2**20
MAX_TRACE_BYTES = 64 * 2**20
TRACE_SUFFIXES = (".parquet", ".npz")

CACHED_RUNS = 16  # simulations kept (quickstart: ~20 MB each with its records) ...
CACHED_RUN_BYTES = 2 * 2**30  # ... and at most this much of their records and tables, whichever comes first

# family -> (its RoutingSpec field, slider minimum, maximum, step, label); the range is a display choice
SKEW_PARAM = {RoutingDistribution.ZIPF: ("zipf_s", 0.0, 2.5, 0.05, "Zipf exponent s (higher: more skewed)"),
              RoutingDistribution.LOGNORMAL: ("lognormal_sigma", 0.0, 2.5, 0.05,
                                              "log-normal sigma (higher: more skewed)"),
              RoutingDistribution.DIRICHLET: ("dirichlet_alpha", 0.05, 10.0, 0.05,
                                              "Dirichlet alpha (lower: more skewed)"),
              RoutingDistribution.HOT_SET: ("hot_fraction", 0.05, 0.95, 0.05, "share of the hot experts")}


def show_error(err: BaseException) -> None:
    """The line the CLI prints after `moesim: error:`, in the page; never a traceback."""
    text = err.one_line() if isinstance(err, SpecError) else " ".join(str(err).split())
    st.error(text, icon=":material/error:")


def shipped_scenarios() -> dict[str, Path]:
    """Scenario name (file stem) -> path, for every scenarios/*.yaml."""
    return {p.stem: p for p in sorted(SCENARIOS_DIR.glob("*.yaml"))}


def shipped_traces() -> dict[str, Path]:
    """Trace file name -> path, for every trace in traces/ and in the upload area."""
    found = [p for d in (TRACES_DIR, upload_dir()) for p in sorted(d.iterdir()) if p.suffix in TRACE_SUFFIXES]
    return {p.name: p for p in found}


def profile_names() -> list[str]:
    """The hardware profiles a scenario may name (hw_profiles/*.yaml)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def upload_dir() -> Path:
    """The upload area: one temporary directory per server process, removed when the process ends."""
    return Path(_upload_area().name)


@st.cache_resource(show_spinner=False)
def _upload_area() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="moesim-dashboard-uploads-")  # its finalizer runs at exit


def allowed_roots() -> dict[str, Path]:
    """Label (as the error shows it) -> directory a scenario may name a file in."""
    return {"scenarios/": SCENARIOS_DIR, "hw_profiles/": PROFILES_DIR, "traces/": TRACES_DIR,
            "the upload area": upload_dir()}


def save_upload(name: str, data: bytes, max_bytes: int = MAX_TRACE_BYTES) -> Path:
    """Store an uploaded file in the upload area under a name of its content's hash and its own (sanitised)
    name, so that two uploads never overwrite each other. Raises SpecError for a file over `max_bytes`."""
    if len(data) > max_bytes:
        raise SpecError("upload", Verbatim(f"{name} of {len(data):,} bytes"),
                        f"a file of at most {max_bytes:,} bytes ({max_bytes // 2**20} MiB)")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".") or "upload"
    path = upload_dir() / f"{hashlib.sha256(data).hexdigest()[:12]}-{safe}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a file
    return path


def named_as_uploaded(err: BaseException, path: Path, name: str) -> BaseException:
    """`err` (about the server's copy `path` of an upload) naming the upload by its own `name` instead: the user
    never sees where the server keeps it."""
    if not isinstance(err, SpecError):
        return err
    value = name if str(err.value) == str(path) else err.value
    return SpecError(err.key, value, err.expected, source=name if err.source == str(path) else err.source)


def scenario_document(text: str, name: str | None = None) -> dict:
    """The YAML text as a document (a mapping), within moesim's YAML limits and MAX_SCENARIO_BYTES; an error
    names `<name>.yaml` when a name is given."""
    try:
        return _document(text)
    except SpecError as err:
        raise (err.with_source(f"{name}.yaml") if name is not None else err) from None


def _document(text: str) -> dict:
    size_bytes = len(text.encode("utf-8", errors="replace"))
    if size_bytes > MAX_SCENARIO_BYTES:
        raise SpecError("", f"a scenario of {size_bytes:,} bytes",
                        f"a scenario of at most {MAX_SCENARIO_BYTES:,} bytes ({MAX_SCENARIO_BYTES // 2**20} MiB)")
    doc = load_yaml(text)
    if not isinstance(doc, dict):
        what = Verbatim("an empty document") if doc is None else doc
        raise SpecError("", what, "a mapping of keys at the top of the scenario")
    return doc


def with_values(doc: dict, values: dict[tuple[str, ...], Any]) -> dict:
    """A deep copy of `doc` with each key path set (a section that is missing or not a mapping is replaced)."""
    out = copy.deepcopy(doc)
    for path, value in values.items():
        node = out
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    return out


def document_text(doc: dict) -> str:
    """The document as YAML that scenario_document reads back identically."""
    return dump_yaml(doc)


def scenario_from_text(text: str, name: str = "uploaded") -> Scenario:
    """Parse and validate a scenario text as `moesim run` would a file `<name>.yaml` in scenarios/ (relative
    paths resolve there), except that every file it names must lie in scenarios/, hw_profiles/, traces/ or the
    upload area. Raises SpecError naming `<name>.yaml`."""
    return _scenario_from_text(text, name)


@st.cache_resource(show_spinner=False, max_entries=64)
def _scenario_from_text(text: str, name: str) -> Scenario:
    try:
        doc = scenario_document(text)
        if "sweep" in doc:  # load_scenario's rule: the dashboard shows one scenario
            raise SpecError("sweep", doc["sweep"], "no sweep in a single scenario (`moesim sweep` runs sweeps)")
        return parse_scenario(doc, default_name=name, base_dir=SCENARIOS_DIR, allowed_roots=allowed_roots())
    except SpecError as err:
        raise err.with_source(f"{name}.yaml") from None


def current_scenario_text() -> str:
    """The scenario the user is working on (the What-if page keeps it in st.session_state["scenario_yaml"])."""
    text = st.session_state.get("scenario_yaml")
    return text if isinstance(text, str) and text else DEFAULT_SCENARIO.read_text(encoding="utf-8")


def cost_limits() -> tuple[float, float | None]:
    """(max wall seconds, max memory GiB or None: what is available) for one simulation of a request."""
    def number(env: str) -> float | None:
        value = os.environ.get(env)
        try:
            parsed = float(value) if value else None
        except ValueError:
            return None
        return parsed if parsed is not None and math.isfinite(parsed) and parsed > 0 else None

    return number(MAX_WALL_ENV) or DEFAULT_MAX_WALL_S, number(MAX_MEMORY_ENV)


@dataclass(frozen=True)
class SimRun:
    result: SimResult
    summary: RunSummary
    expert_loads: pd.DataFrame  # moesim.metrics.views.ExpertLoadLog.table()
    wall_s: float  # simulate() + summarize() when it ran (not the cache hit's)


Progress = Callable[[int, int], Any]


def checked_scenario(text: str, steps: int | None = None, seed: int | None = None, name: str = "uploaded") \
        -> Scenario:
    """The scenario of `text` with steps/seed replaced, passed by the cost guard of `moesim run`. SpecError."""
    sc = with_simulation(scenario_from_text(text, name), steps, seed)
    max_wall_s, max_memory_GiB = cost_limits()
    check_cost([sc], max_wall_s, max_memory_GiB, write_files=False)
    return sc


def simulate_run(text: str, steps: int | None = None, seed: int | None = None,
                 progress: Progress | None = None, name: str = "uploaded") -> SimRun:
    """Simulate the scenario of `text` (cached by text, steps and seed: the same inputs give the same run).
    Not an st.cache_* function on purpose: Streamlit replays the elements a cached function drew, and the
    progress bar must not come back on every cache hit."""
    key = _run_key(text, steps, seed, name)
    runs = _run_cache()
    run = runs.get(key)
    if run is None:
        sc = checked_scenario(text, steps, seed, name)
        t0 = time.perf_counter()
        loads = ExpertLoadLog(sc)
        result = simulate(sc, progress=progress, routing_log=loads)
        summary = summarize(result)
        run = runs.put(key, SimRun(result, summary, loads.table(), time.perf_counter() - t0))
    return run


def _run_key(text: str, steps: int | None, seed: int | None, name: str) -> tuple:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest(), steps, seed, name


def check_total_cost(texts: list[str], name: str = "uploaded") -> None:
    """The cost guard over the simulations one request runs one after another (the Placement page's policies):
    the estimated times of those not cached yet are summed, as `moesim sweep` sums its points, so that a request
    of several runs stays within the limits one run has. A text that cannot be simulated is left to
    simulate_run, which refuses it on its own. Raises SpecError naming the limit."""
    runs = _run_cache()
    todo = []
    for text in texts:
        if runs.get(_run_key(text, None, None, name)) is not None:
            continue
        try:
            todo.append(scenario_from_text(text, name))
        except SpecError:
            continue
    if len(todo) > 1:
        max_wall_s, max_memory_GiB = cost_limits()
        check_cost(todo, max_wall_s, max_memory_GiB, write_files=False)


def simulate_cached(text: str, steps: int | None = None, seed: int | None = None,
                    name: str = "uploaded") -> tuple[SimResult, RunSummary]:
    run = simulate_run(text, steps, seed, name=name)
    return run.result, run.summary


class _RunCache:
    """The last runs, least recently used out first, within a count and a size (what the tables hold); shared
    by every session of the server."""

    def __init__(self, max_entries: int, max_bytes: int):
        self._runs: OrderedDict = OrderedDict()
        self._bytes: dict[tuple, int] = {}
        self._max_entries, self._max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()

    def get(self, key: tuple) -> SimRun | None:
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
            return run

    def put(self, key: tuple, run: SimRun) -> SimRun:
        tables = (run.result.records, run.result.layer_stats, run.result.placement_events, run.expert_loads)
        size_bytes = int(sum(t.memory_usage(index=True).sum() for t in tables))
        with self._lock:
            self._runs[key], self._bytes[key] = run, size_bytes
            self._runs.move_to_end(key)
            # the newest run stays even when it alone is over the size: the page is about to show it
            while len(self._runs) > 1 and (len(self._runs) > self._max_entries
                                           or sum(self._bytes.values()) > self._max_bytes):
                old, _ = self._runs.popitem(last=False)
                del self._bytes[old]
            return run

    def __len__(self) -> int:
        return len(self._runs)


@st.cache_resource(show_spinner=False)
def _run_cache() -> _RunCache:
    return _RunCache(CACHED_RUNS, CACHED_RUN_BYTES)
