"""Scenario YAML -> Scenario. Strict: unknown keys, wrong types and bad values are one-line SpecErrors
naming the file and the key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from moesim.io.profile import available_profiles, load_profile, resolve_profile
from moesim.io.strict import Section, build, is_file, read_yaml_mapping
from moesim.spec.errors import SpecError
from moesim.spec.hardware import ClusterSpec, Dtype
from moesim.spec.layout import ParallelLayout
from moesim.spec.model import Activation, MoeModelSpec
from moesim.spec.network import (AllReduceAlgorithm, AllToAllAlgorithm, CrossRail, FlowSolver, NetworkModelKind,
                                 NetworkSpec)
from moesim.spec.placement import MigrationMode, PlacementPolicyKind, PlacementSpec
from moesim.spec.presets import MODEL_PRESETS
from moesim.spec.routing import (CapacityScope, DropPolicy, GateKind, GateSpec, RoutingDistribution, RoutingSpec,
                                 TemporalModel)
from moesim.spec.routing_presets import ROUTING_PRESETS
from moesim.spec.scenario import Scenario
from moesim.spec.simulation import SimulationSpec
from moesim.spec.training import Optimizer, OptimizerSpec, Recompute, TrainingSpec

_FIT_FAMILIES = (RoutingDistribution.ZIPF, RoutingDistribution.DIRICHLET, RoutingDistribution.LOGNORMAL)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    data = read_yaml_mapping(path, "scenario")
    try:
        return parse_scenario(Section(data), default_name=path.stem, base_dir=path.parent)
    except SpecError as err:
        raise SpecError(err.key, err.value, err.expected, err.source or str(path)) from None


def parse_scenario(root: Section, default_name: str, base_dir: Path) -> Scenario:
    name = root.str_("name", default_name)
    cluster = _cluster(root.section("cluster"), base_dir)
    model = _model(root.section("model"))
    training = _training(root.section("training"))
    layout = _layout(root.section("layout"))
    routing = _routing(root.section("routing", None), base_dir)
    gate = _gate(root.section("gate", None))
    simulation = _simulation(root.section("simulation", None))
    network = _network(root.section("network", None))
    placement = _placement(root.section("placement", None))
    root.finish()
    scenario = build("", Scenario, name=name, cluster=cluster, model=model, training=training, layout=layout,
                     routing=routing, simulation=simulation, gate=gate, network=network, placement=placement)
    _check_placement(scenario)
    return scenario


def _check_placement(sc: Scenario) -> None:
    """Some policy parameters are only valid for a cluster (EPLB's replica count must fill whole ranks):
    build the policy once so that the error names the key now, not in the middle of a run."""
    from moesim.placement.context import placement_context  # noqa: PLC0415
    from moesim.placement.registry import make_policy  # noqa: PLC0415

    try:
        make_policy(sc.placement, placement_context(sc, 0)).initial()
    except SpecError as err:
        key = err.key if err.key.startswith("placement.") else f"placement.{sc.placement.policy.value}.{err.key}"
        raise SpecError(key, err.value, err.expected) from None


def _cluster(sec: Section, base_dir: Path) -> ClusterSpec:
    ref = sec.str_("profile")
    path = resolve_profile(ref, base_dir)
    if not is_file(path):
        raise SpecError(sec.key_path("profile"), ref,
                        f"a profile name ({', '.join(available_profiles())}) or a path to a profile YAML file")
    profile = load_profile(path)
    nodes = sec.int_("nodes", min_value=1, unit="nodes")
    sec.finish()
    return build("cluster", ClusterSpec, profile=profile, num_nodes=nodes)


_MODEL_INT_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
                     "dense_ffn_size", "expert_ffn_size", "num_experts", "top_k", "num_shared_experts",
                     "vocab_size", "first_k_dense", "moe_every")


def _model(sec: Section) -> MoeModelSpec:
    """Either a preset with optional overrides, or every field spelt out."""
    fields: dict = {}
    if sec.has("preset"):
        preset = sec.str_("preset")
        if preset not in MODEL_PRESETS:
            raise SpecError(sec.key_path("preset"), preset, f"one of: {', '.join(MODEL_PRESETS)}")
        fields = dataclasses.asdict(MODEL_PRESETS[preset])
        fields["activation"] = MODEL_PRESETS[preset].activation
    for key in _MODEL_INT_FIELDS:
        if sec.has(key) or key not in fields:
            default = {"first_k_dense": 0, "moe_every": 1, "num_shared_experts": 0, "dense_ffn_size": 0}.get(key)
            fields[key] = sec.int_(key, default) if default is not None else sec.int_(key)
    if sec.has("head_dim") or "head_dim" not in fields:  # default: hidden_size / num_attention_heads
        heads = fields["num_attention_heads"]  # not validated yet: MoeModelSpec reports heads <= 0
        fields["head_dim"] = sec.int_("head_dim", max(1, fields["hidden_size"] // heads) if heads > 0 else 1)
    if sec.has("activation") or "activation" not in fields:
        fields["activation"] = sec.enum_("activation", Activation)
    fields["name"] = sec.str_("name", fields.get("name", "custom"))
    fields["source"] = sec.str_("source", fields.get("source", "scenario file"))
    sec.finish()
    return build("model", MoeModelSpec, **fields)


def _training(sec: Section) -> TrainingSpec:
    # Unknown keys are reported before cross-field checks: a typo'd key leaves a default that may conflict.
    opt_sec = sec.section("optimizer", None)
    opt_fields = dict(name=opt_sec.enum_("name", Optimizer, Optimizer.ADAM),
                      state_bytes_per_param=opt_sec.float_("state_bytes_per_param", 12.0, min_value=0,
                                                           unit="bytes per parameter"),
                      distributed=opt_sec.bool_("distributed", False))
    opt_sec.finish()
    fields = dict(global_batch_size=sec.int_("global_batch_size", min_value=1, unit="sequences"),
                  seq_len=sec.int_("seq_len", min_value=1, unit="tokens"),
                  micro_batch_size=sec.int_("micro_batch_size", min_value=1, unit="sequences"),
                  dtype=sec.enum_("dtype", Dtype, Dtype.BF16),
                  grad_dtype=sec.enum_("grad_dtype", Dtype, Dtype.FP32),
                  recompute=sec.enum_("recompute", Recompute, Recompute.NONE))
    sec.finish()
    optimizer = build("training.optimizer", OptimizerSpec, **opt_fields)
    return build("training", TrainingSpec, optimizer=optimizer, **fields)


def _layout(sec: Section) -> ParallelLayout:
    degrees = {key: sec.int_(key, 1, min_value=1, unit="(GPUs in each group)") for key in ("tp", "pp", "dp", "ep", "etp")}
    sec.finish()
    return build("layout", ParallelLayout, **degrees)


_ROUTING_FLOATS = {"zipf_s": (0.0, 10.0), "dirichlet_alpha": (1e-9, 1e6), "lognormal_sigma": (0.0, 20.0),
                   "hot_fraction": (1e-9, 1.0), "source_sigma": (0.0, 10.0), "drift_rho": (0.0, 1.0),
                   "drift_sigma": (0.0, 10.0), "churn_rate": (0.0, 1.0)}


def _routing(sec: Section, base_dir: Path) -> RoutingSpec:
    """A preset, a synthetic family, a trace to replay, or a trace to fit; explicit keys override a preset."""
    fields: dict = {}
    if sec.has("preset"):
        name = sec.str_("preset")
        if name not in ROUTING_PRESETS:
            raise SpecError(sec.key_path("preset"), name, f"one of: {', '.join(ROUTING_PRESETS)}")
        fields = {**ROUTING_PRESETS[name], "preset": name}
    if sec.has("distribution"):
        fields["distribution"] = sec.enum_("distribution", RoutingDistribution)
    for key, (lo, hi) in _ROUTING_FLOATS.items():
        if sec.has(key):
            fields[key] = sec.float_(key, min_value=lo, max_value=hi)
    if sec.has("hot_experts"):
        fields["hot_experts"] = sec.int_("hot_experts", min_value=1, unit="experts")
    if sec.has("temporal"):
        fields["temporal"] = sec.enum_("temporal", TemporalModel)
    if sec.has("seed"):
        fields["seed"] = sec.int_("seed", min_value=0)
    if sec.has("trace") and sec.has("fit_from"):  # before loading either: both can be large
        raise SpecError(sec.key_path("fit_from"), sec.raw("fit_from"), "either trace (replay) or fit_from, not both")
    if sec.has("trace_layers") and not sec.has("trace"):
        raise SpecError(sec.key_path("trace_layers"), sec.raw("trace_layers"), "only together with trace")
    if sec.has("trace"):
        ref = sec.str_("trace")
        trace = _load_trace(sec, "trace", ref, base_dir)
        if sec.has("trace_layers"):
            trace = _select_layers(sec, trace)
        fields.update(distribution=RoutingDistribution.TRACE, trace=trace, trace_ref=ref)
    if sec.has("fit_from"):
        fields.update(_fitted(sec, base_dir))
    sec.finish()
    return build("routing", RoutingSpec, **fields)


def _select_layers(sec: Section, trace):
    """routing.trace_layers: replay only these trace layers (in this order), e.g. [6] for SmartMoE's Figure 13."""
    layers = sec.raw("trace_layers")
    expected = f"a non-empty list of distinct trace layer indices in [0, {trace.num_layers - 1}]"
    ok = isinstance(layers, list) and layers and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x < trace.num_layers for x in layers) \
        and len(set(layers)) == len(layers)
    if not ok:
        raise SpecError(sec.key_path("trace_layers"), layers, expected)
    return dataclasses.replace(trace, counts=trace.counts[:, layers],
                               source=f"{trace.source}, layers {', '.join(map(str, layers))}")


def _load_trace(sec: Section, key: str, ref: str, base_dir: Path):
    from moesim.io.traces import load_trace  # noqa: PLC0415 - pyarrow only when a trace is used

    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    if not is_file(path) and not path.is_dir():
        raise SpecError(sec.key_path(key), ref, "a trace file (.parquet, .npz) or a directory of SmartMoE logs, "
                                                "relative to the scenario file")
    return load_trace(path)


def _fitted(sec: Section, base_dir: Path) -> dict:
    from moesim.routing.fit import fit_trace  # noqa: PLC0415

    ref = sec.str_("fit_from")
    family = sec.enum_("fit_family", RoutingDistribution) if sec.has("fit_family") else None
    if family is not None and family not in _FIT_FAMILIES:
        raise SpecError(sec.key_path("fit_family"), family.value, "zipf, dirichlet or lognormal")
    spec = fit_trace(_load_trace(sec, "fit_from", ref, base_dir)).to_routing_spec(family)
    return {"distribution": spec.distribution, "per_layer": spec.per_layer, "trace_ref": f"fit of {ref}"}


def _gate(sec: Section) -> GateSpec:
    fields: dict = {}
    if sec.has("kind"):
        fields["kind"] = sec.enum_("kind", GateKind)
    if sec.has("capacity_factor"):
        value = sec.raw("capacity_factor")
        fields["capacity_factor"] = None if value is None else sec.float_(
            "capacity_factor", min_value=-1e6, max_value=1e6, unit="(null = dropless; <= 0 = adaptive)")
    if sec.has("scope"):
        fields["scope"] = sec.enum_("scope", CapacityScope)
    if sec.has("min_capacity"):
        fields["min_capacity"] = sec.int_("min_capacity", min_value=0, unit="tokens")
    if sec.has("drop_policy"):
        fields["drop_policy"] = sec.enum_("drop_policy", DropPolicy)
    for key in ("first_choice_priority", "pad_to_capacity"):
        if sec.has(key):
            fields[key] = sec.bool_(key)
    sec.finish()
    return build("gate", GateSpec, **fields)


def _network(sec: Section) -> NetworkSpec:
    fields = {key: sec.enum_(key, enum_cls) for key, enum_cls in (
        ("model", NetworkModelKind), ("solver", FlowSolver), ("cross_rail", CrossRail),
        ("all_to_all", AllToAllAlgorithm), ("all_reduce", AllReduceAlgorithm)) if sec.has(key)}
    sec.finish()
    return build("network", NetworkSpec, **fields)


def _placement(sec: Section) -> PlacementSpec:
    """`policy` picks the policy; `slots_per_gpu` and `migration` are common. Each policy's parameters live in
    a sub-section named after it (`smartmoe: {freq: 10}`), typed by the fields of its dataclass in
    moesim/placement/. Every sub-section given is checked, so a sweep over `policy` can carry them all."""
    from moesim.placement.registry import POLICIES  # noqa: PLC0415 - keeps the spec layer free of policies

    kind = sec.enum_("policy", PlacementPolicyKind, PlacementPolicyKind.STATIC)
    fields: dict = {"policy": kind}
    if sec.has("slots_per_gpu"):
        fields["slots_per_gpu"] = None if sec.raw("slots_per_gpu") is None else \
            sec.int_("slots_per_gpu", min_value=1, unit="expert slots per EP rank")
    if sec.has("migration"):
        fields["migration"] = sec.enum_("migration", MigrationMode)
    for other, (params_cls, _) in POLICIES.items():
        if sec.has(other.value) or other is kind:
            params = _policy_params(sec.section(other.value, None), params_cls)
            if other is kind:
                fields["params"] = params
    sec.finish()
    return build("placement", PlacementSpec, **fields)


def _policy_params(sec: Section, params_cls):
    values = {}
    for f in dataclasses.fields(params_cls):
        if not sec.has(f.name):
            continue
        kind_of = str(f.type)
        if "None" in kind_of and sec.raw(f.name) is None:
            values[f.name] = None
        elif kind_of.startswith("bool"):
            values[f.name] = sec.bool_(f.name)
        elif kind_of.startswith("int"):
            values[f.name] = sec.int_(f.name)
        else:
            values[f.name] = sec.float_(f.name)
    sec.finish()
    return build(sec.path, params_cls, **values)


def _simulation(sec: Section) -> SimulationSpec:
    fields = dict(steps=sec.int_("steps", 3, min_value=1),
                  warmup_steps=sec.int_("warmup_steps", 0, min_value=0),
                  seed=sec.int_("seed", 0, min_value=0))
    sec.finish()
    return build("simulation", SimulationSpec, **fields)
