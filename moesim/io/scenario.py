"""Scenario YAML -> Scenario. Every key is checked first (moesim.io.document), then what is genuinely I/O
happens here -- a profile name resolved to its file, a model or routing preset (or a model's Hugging Face
config.json) expanded under the file's values, a trace loaded (or fitted), each policy's parameters read -- and
the whole is validated by the spec models."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

from moesim.io.document import Reader, validate
from moesim.io.hf_config import HfModel, read_hf_config
from moesim.io.profile import available_profiles, load_profile, resolve_profile
from moesim.io.safe_paths import AllowedRoots, check_allowed
from moesim.io.strict import describe_document, is_file, path_kind
from moesim.spec.base import SpecModel
from moesim.spec.document import ClusterFileKeys, ModelFileKeys, PlacementFileKeys, RoutingFileKeys
from moesim.spec.errors import SpecError, Verbatim
from moesim.spec.model import MoeModelSpec
from moesim.spec.placement import PlacementPolicyKind
from moesim.spec.placement_params import POLICY_PARAMS
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.routing import RoutingDistribution
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.scenario import Scenario
from moesim.spec.trace import RoutingTrace


TraceFitter = Callable[[RoutingTrace, "RoutingDistribution | None"], dict]


def parse_scenario(doc: Mapping, default_name: str, base_dir: Path, fit: TraceFitter | None = None,
                   cache: dict | None = None, allowed_roots: AllowedRoots | None = None) -> Scenario:
    """`doc`: the parsed YAML (a `sweep` key in it is left to moesim.io.sweep). Relative paths in it are relative
    to `base_dir`. `fit(trace, family)` turns a trace into RoutingSpec fields for `routing.fit_from` (fitting is
    above this layer: moesim.loader passes moesim.routing's). `cache`: a dict shared by the points of one sweep,
    so that a trace is read, cut to `trace_layers` and fitted once, not once per point (traces are frozen).
    `allowed_roots`: the only directories a profile, config.json or trace path may point into (the dashboard's
    uploads, moesim.io.safe_paths); None: any path (the command line reads what its user names)."""
    if not isinstance(doc, Mapping):
        raise SpecError("", describe_document(doc), "a mapping of keys at the top of the scenario")
    fields = Reader().fields(Scenario, doc, "")  # unknown keys first: a typo'd key leaves a conflicting default
    fields.setdefault("name", default_name)
    _cluster(_section(doc, "cluster"), fields, base_dir, allowed_roots)
    _model(_section(doc, "model"), fields, base_dir, {} if cache is None else cache, allowed_roots)
    _routing(_section(doc, "routing"), fields, base_dir, fit, {} if cache is None else cache, allowed_roots)
    _placement(_section(doc, "placement"), fields)
    return validate(Scenario, fields, doc)


def _section(doc: Mapping, key: str) -> Mapping:
    value = doc.get(key)
    return value if isinstance(value, Mapping) else {}


def _file_keys(model: type[SpecModel], raw: Mapping, path: str) -> Any:
    """The keys of `raw` that io reads itself (moesim.spec.document), validated."""
    return validate(model, {k: raw[k] for k in model.model_fields if k in raw}, raw, path)


def _cluster(raw: Mapping, fields: dict, base_dir: Path, roots: AllowedRoots | None) -> None:
    if "profile" not in raw or not isinstance(fields.get("cluster"), dict):
        return  # validation reports the missing key
    ref = _file_keys(ClusterFileKeys, raw, "cluster").profile
    path = resolve_profile(ref, base_dir)
    check_allowed("cluster.profile", ref, path, roots)
    if not is_file(path):
        kind = path_kind(path)
        raise SpecError("cluster.profile", ref if kind is None else Verbatim(f"{ref!r} ({kind})"),
                        f"a profile name ({', '.join(available_profiles())}) or a path to a profile YAML file")
    fields["cluster"]["profile"] = load_profile(path)


def _preset(presets: Mapping, name: Any, key: str) -> Any:
    if not isinstance(name, str) or name not in presets:
        raise SpecError(key, name, f"one of: {', '.join(presets)}")
    return presets[name]


def _model(raw: Mapping, fields: dict, base_dir: Path, cache: dict, roots: AllowedRoots | None) -> None:
    """A preset's values, or a Hugging Face config.json's, then the file's on top: one way, nothing derived
    twice."""
    model = fields.get("model")
    if not isinstance(model, dict):
        return
    ref = _file_keys(ModelFileKeys, raw, "model").hf_config
    if ref is not None:
        if "preset" in model:
            raise SpecError("model.hf_config", ref, "either preset or hf_config, not both")
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        check_allowed("model.hf_config", ref, path, roots)
        if not is_file(path):  # read_hf_config says what is there instead
            read_hf_config(path, ref)
        hf = _cached(cache, ("hf_config", os.path.realpath(path)), lambda: read_hf_config(path, ref))
        fields["model"] = {**hf.fields, **model}
        _check_hf_model(hf, fields["model"], model)
    elif "preset" in model:
        fields["model"] = {**_preset(MODEL_PRESETS, model["preset"], "model.preset").model_dump(), **model}


def _check_hf_model(hf: HfModel, merged: dict, overrides: dict) -> None:
    """A value from the config.json that the model spec refuses is reported under the file's name and key (a
    refused override is left to the scenario's own validation, which names its key there)."""
    try:
        MoeModelSpec(**merged)
    except SpecError as err:
        field = err.key.split(".")[0]
        if field in hf.keys and field not in overrides:
            raise SpecError(hf.keys[field], err.value, err.expected, source=hf.source) from None


def _routing(raw: Mapping, fields: dict, base_dir: Path, fit: TraceFitter | None, cache: dict,
             roots: AllowedRoots | None) -> None:
    """A preset, a synthetic family, a trace to replay, or a trace to fit; explicit keys override a preset."""
    routing = fields.get("routing")
    if not isinstance(routing, dict):
        return
    if "preset" in routing:
        routing = fields["routing"] = {**_preset(ROUTING_PRESETS, routing["preset"], "routing.preset"), **routing}
    keys = _file_keys(RoutingFileKeys, raw, "routing")
    if keys.trace is not None and keys.fit_from is not None:  # before loading either: both can be large
        raise SpecError("routing.fit_from", keys.fit_from, "either trace (replay) or fit_from, not both")
    if keys.trace_layers is not None and keys.trace is None:
        raise SpecError("routing.trace_layers", raw["trace_layers"], "only together with trace")
    if keys.trace is not None:
        trace = _load_trace("routing.trace", keys.trace, base_dir, cache, roots)
        if keys.trace_layers is not None:
            whole = trace
            trace = _cached(cache, ("layers", id(whole), keys.trace_layers),
                            lambda: _select_layers(raw["trace_layers"], keys.trace_layers, whole))
        routing.update(distribution=RoutingDistribution.TRACE, trace=trace, trace_ref=keys.trace)
    if keys.fit_from is not None:
        if fit is None:
            raise SpecError("routing.fit_from", keys.fit_from, "a scenario read with moesim.load_scenario (fitting "
                                                               "a trace needs moesim.routing)")
        source = _load_trace("routing.fit_from", keys.fit_from, base_dir, cache, roots)
        fitted = _cached(cache, ("fit", id(source), keys.fit_family), lambda: fit(source, keys.fit_family))
        routing.update(fitted, trace_ref=f"fit of {keys.fit_from}")


def _cached(cache: dict, key: Any, make: Callable[[], Any]) -> Any:
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _select_layers(written: Any, layers: tuple[int, ...], trace: Any) -> Any:
    """routing.trace_layers: replay only these trace layers (in this order), e.g. [6] for SmartMoE's Figure 13."""
    if len(set(layers)) != len(layers) or max(layers) >= trace.num_layers:
        raise SpecError("routing.trace_layers", written,
                        f"a non-empty list of distinct trace layer indices in [0, {trace.num_layers - 1}]")
    return dataclasses.replace(trace, counts=trace.counts[:, list(layers)],
                               source=f"{trace.source}, layers {', '.join(map(str, layers))}")


def _load_trace(key: str, ref: str, base_dir: Path, cache: dict, roots: AllowedRoots | None) -> Any:
    from moesim.io.traces import load_trace  # noqa: PLC0415 - pyarrow only when a trace is used

    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    check_allowed(key, ref, path, roots)
    if not is_file(path) and not path.is_dir():
        raise SpecError(key, ref, "a trace file (.parquet, .npz) or a directory of SmartMoE logs, relative to the "
                                  "scenario file")
    return _cached(cache, ("trace", os.path.realpath(path)), lambda: load_trace(path))


def _placement(raw: Mapping, fields: dict) -> None:
    """Each policy's parameters live in a sub-section named after it (`smartmoe: {freq: 10}`), a spec model of
    moesim/spec/placement_params.py. Every sub-section given is checked, so that a sweep over `policy` can carry
    them all; the chosen policy's (its defaults when absent) becomes `params`."""
    placement = fields.get("placement")
    if not isinstance(placement, dict):
        return
    given = _file_keys(PlacementFileKeys, raw, "placement")
    kind = PlacementPolicyKind.from_yaml(placement.get("policy", PlacementPolicyKind.STATIC))
    if isinstance(kind, PlacementPolicyKind):  # else validation refuses the policy
        params = getattr(given, kind.value)
        placement["params"] = params if params is not None else POLICY_PARAMS[kind]()
