"""Scenario files -> validated Scenarios, with the checks that need the model layers above moesim.io: a routing
trace fitted (`routing.fit_from`) and the placement policy built once, so that a parameter valid only for this
cluster (EPLB's replica count must fill whole ranks) is refused at load time, naming its key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moesim.io import scenario as scenario_io
from moesim.io import sweep as sweep_io
from moesim.io.safe_paths import AllowedRoots
from moesim.io.strict import read_yaml_mapping
from moesim.placement.context import placement_context
from moesim.placement.registry import make_policy
from moesim.routing.fit import fit_trace
from moesim.spec.errors import SpecError
from moesim.spec.routing import RoutingDistribution
from moesim.spec.scenario import Scenario
from moesim.spec.trace import RoutingTrace


def load_scenario(path: str | Path) -> Scenario:
    """One scenario file (without `sweep`: load_scenarios expands sweeps)."""
    path = Path(path)
    data = read_yaml_mapping(path, "scenario")
    try:
        if "sweep" in data:
            raise SpecError("sweep", data["sweep"], "no sweep in a single scenario (moesim.load_scenarios and "
                                                    "`moesim run` expand sweeps)")
        return parse_scenario(data, default_name=path.stem, base_dir=path.parent)
    except SpecError as err:
        raise err.with_source(str(path)) from None


def load_scenarios(path: str | Path, trace: Path | None = None) -> tuple[list[str], list[tuple[dict, Scenario]]]:
    """(swept key paths, [(values by key path, scenario)]) of a file with or without `sweep`; `trace` replaces
    the file's routing with the replay of that trace (moesim.io.sweep.load_scenarios)."""
    return sweep_io.load_scenarios(path, trace, parse=parse_scenario)


def with_simulation(scenario: Scenario, steps: int | None, seed: int | None) -> Scenario:
    """The scenario with simulation.steps / simulation.seed replaced (command-line overrides), checked as in
    YAML (the seed: an integer in [0, 2**63)); a bad value names its flag, e.g. `--steps`."""
    fields = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
    if not fields:
        return scenario
    try:
        new_sim = scenario.simulation.replace(**fields)
    except SpecError as err:
        raise SpecError(f"--{err.key}", err.value, err.expected) from None
    return scenario.model_copy(update={"simulation": new_sim})  # no cross-field rule involves the simulation


def parse_scenario(doc: Mapping, default_name: str, base_dir: Path, cache: dict | None = None,
                   allowed_roots: AllowedRoots | None = None) -> Scenario:
    """One scenario document (moesim.io.scenario.parse_scenario, with trace fitting and the placement check).
    `allowed_roots`: the directories its file paths may point into (moesim.io.safe_paths; None: anywhere)."""
    scenario = scenario_io.parse_scenario(doc, default_name, base_dir, fit=_fit, cache=cache,
                                          allowed_roots=allowed_roots)
    check_placement(scenario)
    return scenario


def _fit(trace: RoutingTrace, family: RoutingDistribution | None) -> dict:
    spec = fit_trace(trace).to_routing_spec(family)
    return {"distribution": spec.distribution, "per_layer": spec.per_layer}


def check_placement(sc: Scenario) -> None:
    """The placement policy builds its first placement on this scenario, or one SpecError naming its key."""
    try:
        make_policy(sc.placement, placement_context(sc, 0)).initial()
    except SpecError as err:
        key = err.key if err.key.startswith("placement.") else f"placement.{sc.placement.policy.value}.{err.key}"
        raise SpecError(key, err.value, err.expected) from None
