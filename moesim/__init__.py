"""moesim: a discrete-event cluster simulator and planner for Mixture-of-Experts training.

Public API (imported lazily, so `import moesim.spec` stays free of simpy and plotting):
    load_scenario(path) -> Scenario          strict YAML -> frozen specs
    load_scenarios(path) -> (keys, points)   the same for a file with a `sweep:` (one Scenario per point)
    simulate(scenario) -> SimResult          SimPy simulation of warm-up + measured steps
    summarize(result) -> RunSummary          step-time percentiles, breakdown, MFU, memory, imbalance: frozen,
                                             typed fields; RunSummary.to_dict() is what summary.json holds
    write_run(out_dir, result, summary)      summary.json, records.parquet, trace.json, plots (atomic)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_scenario": "moesim.loader",
    "load_scenarios": "moesim.loader",
    "simulate": "moesim.sim.simulate",
    "SimResult": "moesim.sim.simulate",
    "summarize": "moesim.metrics.summary",
    "RunSummary": "moesim.metrics.types",
    "write_run": "moesim.report.run_dir",
    "Scenario": "moesim.spec.scenario",
    "SpecError": "moesim.spec.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'moesim' has no attribute {name!r}")
