"""What-if: start from a shipped or uploaded scenario, change it with the widgets of the sidebar, see what
moesim predicts -- step time and its breakdown, load per GPU and per expert, the all-to-all matrix, one step's
timeline, memory per rank -- against a pinned baseline. Every edit goes into the scenario document, which moesim's
own parser validates again: a bad value shows the CLI's one-line error. The page keeps the document's YAML in
st.session_state["scenario_yaml"] for the other pages (app.common.current_scenario_text)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from app.common import (MAX_SCENARIO_BYTES, MOESIM_ERRORS, SKEW_PARAM, TRACES_DIR, current_scenario_text,
                        document_text, profile_names, save_upload, scenario_document, scenario_from_text,
                        show_error, shipped_scenarios, shipped_traces, simulate_run, with_values)
from app.what_if_results import results
from moesim.spec.comm import TokenDispatcher
from moesim.spec.errors import SpecError, Verbatim
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.routing import RoutingDistribution
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.scenario import Scenario

KEY = "whatif_"  # prefix of this page's session-state keys
VALUES = KEY + "values"  # field -> the value the user chose; kept while another page is shown
AS_IN_FILE = "(as in the scenario)"
LAYOUT_KEYS = ("tp", "pp", "dp", "ep", "etp")
ROUTING_SOURCE_KEYS = ("preset", "trace", "trace_layers", "fit_from", "fit_family", "distribution", "zipf_s",
                       "dirichlet_alpha", "lognormal_sigma", "hot_experts", "hot_fraction")
ROUTING_MODES = ("synthetic family", "preset", "trace")
SOURCES = ("shipped scenario", "uploaded YAML", "YAML text")
MAX_STEPS = 50  # the steps slider's end (a file with more keeps its own)


@dataclass
class Edits:
    """Key path -> new value, applied to a copy of the base document (an absent key path: left as written)."""

    values: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def set(self, path: tuple[str, ...], value: Any) -> None:
        self.values[path] = value

    def applied(self, doc: dict) -> dict:
        return with_values(doc, self.values)


def widget(where: Any, kind: str, label: str, name: str, initial: Any, edits: Edits | None = None,
           path: tuple[str, ...] | None = None, **kwargs) -> Any:
    """A widget (`kind`: select, radio, checkbox, number or slider, drawn in `where`) whose value starts at
    `initial` (the base scenario's) or at what the user chose before on this page (kept in VALUES, which
    survives a visit to another page, unlike widget state); when it differs from `initial`, `edits` gets it at
    `path`. Its session-state key is "whatif_" + name."""
    store = st.session_state.setdefault(VALUES, {})
    start = store.get(name, initial)
    key = KEY + name
    if kind in ("select", "radio"):
        options = list(kwargs.pop("options"))
        draw = where.selectbox if kind == "select" else where.radio
        value = draw(label, options, index=options.index(start) if start in options else 0, key=key, **kwargs)
    elif kind == "checkbox":
        value = where.checkbox(label, value=bool(start), key=key, **kwargs)
    else:
        value = (where.number_input if kind == "number" else where.slider)(label, value=start, key=key, **kwargs)
    store[name] = value
    if edits is not None and path is not None and value != initial:
        edits.set(path, value)
    return value


def forget_choices() -> None:
    """A new base scenario: every widget of the sidebar starts again from its values."""
    for name in st.session_state.get(VALUES, {}):
        st.session_state.pop(KEY + name, None)
    st.session_state[VALUES] = {}


def base_scenario() -> tuple[str, str] | None:
    """(YAML text, name) of the scenario the edits start from, or None (nothing uploaded yet)."""
    bar = st.sidebar
    source = bar.radio("Start from", SOURCES, key=KEY + "source", horizontal=True)
    if source == "YAML text":
        if KEY + "text" not in st.session_state:  # starts as the scenario on screen, then is the user's
            st.session_state[KEY + "text"] = current_scenario_text()
        text = bar.text_area("Scenario YAML", height=300, key=KEY + "text", help="Ctrl+Enter applies it")
        return text, "edited"
    if source == "shipped scenario":
        names = list(shipped_scenarios())
        name = bar.selectbox("Scenario", names, index=names.index("quickstart") if "quickstart" in names else 0,
                             key=KEY + "shipped")
        return shipped_scenarios()[name].read_text(encoding="utf-8"), name
    upload = bar.file_uploader("Scenario YAML", type=["yaml", "yml"], key=KEY + "upload",
                               help=f"at most {MAX_SCENARIO_BYTES // 2**20} MiB; paths in it may point into "
                                    "scenarios/, hw_profiles/, traces/ and files uploaded here")
    if upload is None:
        return None
    data = upload.getvalue()
    if len(data) > MAX_SCENARIO_BYTES:
        raise SpecError("", Verbatim(f"a file of {len(data):,} bytes"),
                        f"a scenario of at most {MAX_SCENARIO_BYTES:,} bytes", source=upload.name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{type(exc).__name__} at byte {exc.start}", "a UTF-8 YAML scenario file",
                        source=upload.name) from None
    return text, Path(upload.name).stem or "uploaded"


def cluster_and_model(sc: Scenario, doc: dict, edits: Edits) -> None:
    bar = st.sidebar
    bar.subheader("Cluster and model")
    written = (doc.get("cluster") or {}).get("profile") if isinstance(doc.get("cluster"), dict) else None
    names = profile_names()
    options = names if written in names else [AS_IN_FILE, *names]
    widget(bar, "select", "Hardware profile", "profile", written if written in names else AS_IN_FILE, edits,
           ("cluster", "profile"), options=options)
    widget(bar, "number", "Nodes", "nodes", sc.cluster.num_nodes, edits, ("cluster", "nodes"), min_value=1,
           step=1)
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    preset = model.get("preset") if model.get("preset") in MODEL_PRESETS else AS_IN_FILE
    options = list(MODEL_PRESETS) if preset != AS_IN_FILE else [AS_IN_FILE, *MODEL_PRESETS]
    chosen = widget(bar, "select", "Model preset", "model_preset", preset, options=options,
                    help="a preset keeps the scenario's own model overrides (e.g. num_layers)")
    with bar.expander("... or a Hugging Face config.json"):
        config = st.file_uploader("config.json", type=["json"], key=KEY + "hf_config",
                                  help="DeepSeek-V2/V3, GPT-OSS, Mixtral, OLMoE, Qwen2/3-MoE; at most 1 MiB")
    if config is not None:
        path = save_upload(config.name, config.getvalue(), max_bytes=MAX_SCENARIO_BYTES)
        edits.set(("model",), {"hf_config": str(path)})
    elif chosen != preset:
        kept = {k: v for k, v in model.items() if k != "hf_config"} if "preset" in model else {}
        edits.set(("model",), {**kept, "preset": chosen})


def layout(sc: Scenario, edits: Edits) -> None:
    bar = st.sidebar
    bar.subheader("Layout", help="Megatron-LM's parallel sizes: tp x cp x dp x pp must equal the GPUs; "
                                 "ep x etp must divide tp x cp x dp")
    columns = bar.columns(len(LAYOUT_KEYS))
    for column, key in zip(columns, LAYOUT_KEYS):
        with column:
            widget(st, "number", key, key, getattr(sc.layout, key), edits, ("layout", key), min_value=1,
                   step=1)


def routing(sc: Scenario, doc: dict, edits: Edits) -> None:
    bar = st.sidebar
    bar.subheader("Routing")
    raw = doc.get("routing") if isinstance(doc.get("routing"), dict) else {}
    mode0 = "trace" if "trace" in raw else "preset" if "preset" in raw else "synthetic family"
    mode = widget(bar, "radio", "Routing from", "routing_mode", mode0, options=ROUTING_MODES, horizontal=True)
    kept = {k: v for k, v in raw.items() if k not in ROUTING_SOURCE_KEYS}
    if mode == "synthetic family":
        families = [d.value for d in RoutingDistribution if d is not RoutingDistribution.TRACE]
        family0 = sc.routing.distribution.value if sc.routing.distribution.value in families else "zipf"
        family = widget(bar, "select", "Distribution", "distribution", family0, options=families)
        new = {**kept, "distribution": family}
        changed = mode != mode0 or family != family0
        if RoutingDistribution(family) in SKEW_PARAM:
            param, low, high, step, label = SKEW_PARAM[RoutingDistribution(family)]
            start = min(max(float(getattr(sc.routing, param)), low), high)
            value = widget(bar, "slider", label, f"skew_{param}", start, min_value=low, max_value=high, step=step)
            new[param] = value
            changed = changed or value != start
        if changed:
            edits.set(("routing",), new)
    elif mode == "preset":
        preset0 = raw.get("preset") if raw.get("preset") in ROUTING_PRESETS else next(iter(ROUTING_PRESETS))
        preset = widget(bar, "select", "Routing preset", "routing_preset", preset0, options=list(ROUTING_PRESETS))
        if mode != mode0 or preset != preset0:
            edits.set(("routing",), {**kept, "preset": preset})
    else:
        trace_routing(raw, kept, mode0, edits)


def trace_routing(raw: dict, kept: dict, mode0: str, edits: Edits) -> None:
    bar = st.sidebar
    upload = bar.file_uploader("Upload a trace", type=["parquet", "npz"], key=KEY + "trace_upload",
                               help="moesim Parquet trace or SmartMoE .npz, at most 64 MiB")
    if upload is not None:
        save_upload(upload.name, upload.getvalue())
    traces = shipped_traces()
    refs = {name: _trace_ref(path) for name, path in traces.items()}
    written = raw.get("trace")
    options = list(refs) if written in refs.values() or written is None else [AS_IN_FILE, *refs]
    first = next((n for n, r in refs.items() if r == written), AS_IN_FILE if written is not None else None)
    if not options:
        bar.info(f"no trace in {TRACES_DIR.name}/ yet: upload one")
        return
    name = widget(bar, "select", "Trace", "trace", first or options[0], options=options)
    if name != AS_IN_FILE and (mode0 != "trace" or refs[name] != written):
        edits.set(("routing",), {**kept, "trace": refs[name]})


def _trace_ref(path: Path) -> str:
    """A shipped trace as a scenario in scenarios/ names it (relative: the downloaded YAML works there); an
    uploaded one by its path in the upload area."""
    return f"../{TRACES_DIR.name}/{path.name}" if path.parent == TRACES_DIR else str(path)


def gate_and_placement(sc: Scenario, edits: Edits) -> None:
    bar = st.sidebar
    bar.subheader("Gate, dispatch and placement")
    cf0 = sc.gate.capacity_factor
    dropless = widget(bar, "checkbox", "Dropless (no capacity limit)", "dropless", cf0 is None)
    cf = widget(bar, "number", "Capacity factor", "capacity_factor", float(cf0 if cf0 is not None else 1.25),
                min_value=-1e6, max_value=1e6, step=0.05, disabled=dropless,
                help="capacity = ceil(k x tokens / experts x CF); <= 0: adaptive (Tutel)")
    new_cf = None if dropless else float(cf)
    if new_cf != cf0:
        edits.set(("gate", "capacity_factor"), new_cf)
    widget(bar, "select", "Token dispatcher", "dispatcher", sc.comm.dispatcher.value, edits,
           ("comm", "dispatcher"), options=[d.value for d in TokenDispatcher])
    policy = widget(bar, "select", "Placement policy", "policy", sc.placement.policy.value, edits,
                    ("placement", "policy"), options=[p.value for p in PlacementPolicyKind])
    slots0 = sc.placement.slots_per_gpu or 0
    slots = widget(bar, "number", "Expert slots per GPU (0: experts / ep)", "slots", slots0, min_value=0,
                   step=1)
    if slots != slots0:
        edits.set(("placement", "slots_per_gpu"), int(slots) or None)
    if policy == PlacementPolicyKind.EPLB.value:
        params = sc.placement.params if sc.placement.policy is PlacementPolicyKind.EPLB else None
        widget(bar, "number", "EPLB redundant experts", "eplb_redundant",
               params.redundant_experts if params is not None else 0, edits, ("placement", "eplb",
                                                                              "redundant_experts"),
               min_value=0, step=1)


def simulation(sc: Scenario, edits: Edits) -> None:
    bar = st.sidebar
    bar.subheader("Simulation")
    widget(bar, "slider", "Measured steps", "steps", sc.simulation.steps, edits, ("simulation", "steps"),
           min_value=1, max_value=max(MAX_STEPS, sc.simulation.steps))
    widget(bar, "number", "Seed", "seed", sc.simulation.seed, edits, ("simulation", "seed"), min_value=0,
           step=1)


def edited_text(base_text: str, name: str) -> tuple[str, Scenario]:
    """The sidebar's widgets over the base scenario -> (the YAML text on screen, its scenario)."""
    doc = scenario_document(base_text, name)
    if "sweep" in doc:
        st.sidebar.info("This file's sweep: section is left out: the page simulates the file's own values "
                        "(the Placement page compares policies).")
        doc = {k: v for k, v in doc.items() if k != "sweep"}
        base_text = document_text(doc)
    sc = scenario_from_text(base_text, name)
    edits = Edits()
    cluster_and_model(sc, doc, edits)
    layout(sc, edits)
    routing(sc, doc, edits)
    gate_and_placement(sc, edits)
    simulation(sc, edits)
    return (document_text(edits.applied(doc)) if edits.values else base_text), sc


def run_with_progress(text: str, name: str):
    """The run of `text`; a progress bar and a Cancel button while a new one simulates (a click reruns the
    page, which stops the simulation at its next step)."""
    slot = st.empty()
    t0 = time.perf_counter()
    bar: list = []

    def progress(done: int, total: int) -> None:
        if not bar and time.perf_counter() - t0 > 0.5:  # quick runs draw nothing: the page does not flicker
            with slot.container():
                bar.append(st.progress(0.0))
                st.button("Cancel", key=KEY + "cancel_button", on_click=_cancel)
        if bar:
            bar[0].progress(done / total, text=f"simulating step {done} of {total}")

    run = simulate_run(text, progress=progress, name=name)
    slot.empty()
    return run


def _cancel() -> None:
    st.session_state[KEY + "cancelled"] = True


def baseline_controls(text: str, name: str) -> Any:
    """Pin / unpin buttons; the pinned baseline's run (None when none is pinned or it fails)."""
    pinned = st.session_state.get(KEY + "baseline")
    left, right, _ = st.columns([1, 1, 4])
    if left.button("Pin as baseline", key=KEY + "pin", help="compare what comes next with what is on screen"):
        st.session_state[KEY + "baseline"] = pinned = (text, name)
    if pinned is not None and right.button("Unpin baseline", key=KEY + "unpin"):
        st.session_state[KEY + "baseline"] = pinned = None
    return simulate_run(pinned[0], name=pinned[1]) if pinned is not None else None


def page() -> None:
    st.title("What-if")
    try:
        picked = base_scenario()
    except MOESIM_ERRORS as err:
        show_error(err)
        return
    if picked is None:
        st.info("Upload a scenario YAML in the sidebar, or start from a shipped scenario.")
        return
    base_text, name = picked
    if st.session_state.get(KEY + "base") != picked:
        st.session_state[KEY + "base"] = picked
        forget_choices()
    try:
        text, _ = edited_text(base_text, name)
    except MOESIM_ERRORS as err:
        show_error(err)
        return
    st.session_state["scenario_yaml"] = text
    st.sidebar.download_button("Download this scenario (YAML)", text, file_name=f"{name}.yaml",
                               mime="application/x-yaml", key=KEY + "download")
    if st.session_state.pop(KEY + "cancelled", False):
        st.warning("Cancelled. Change an input, or simulate this scenario after all:")
        st.button("Simulate", key=KEY + "resume")
        return
    try:
        run = run_with_progress(text, name)
        base = baseline_controls(text, name)
    except MOESIM_ERRORS as err:
        show_error(err)
        with st.expander("The scenario on screen (YAML)"):
            st.code(text, language="yaml")
        return
    results(run, base)
    with st.expander("The scenario on screen (YAML)"):
        st.code(text, language="yaml")


page()
