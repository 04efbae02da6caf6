"""What a sweep will do, decided before anything runs: every point loaded and checked (moesim.loader), keyed,
and split into the points already in the output directory and those still to simulate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moesim.loader import load_scenarios, with_simulation
from moesim.spec.scenario import Scenario
from moesim.sweep.keys import point_key
from moesim.sweep.out_dir import point_path


@dataclass(frozen=True)
class SweepPoint:
    index: int            # position in the sweep file's grid order
    values: dict          # swept key path -> value, as written in the file
    scenario: Scenario
    key: str              # moesim.sweep.keys.point_key


@dataclass(frozen=True)
class SweepPlan:
    scenario_path: Path
    steps: int | None     # command-line overrides, applied again by each worker
    seed: int | None
    keys: list[str]       # swept key paths
    points: list[SweepPoint]
    trace: Path | None = None  # --trace: replaces the file's routing (and its swept routing keys) in every point

    @property
    def name(self) -> str:
        return self.points[0].scenario.name.split("[", 1)[0]

    def todo(self, out_dir: Path) -> list[SweepPoint]:
        """The points without a result file in `out_dir` (every point when it has none yet)."""
        return [p for p in self.points if not point_path(out_dir, p.key).is_file()]


def load_points(scenario_path: Path, steps: int | None, seed: int | None, trace: Path | None = None
                ) -> tuple[list[str], list[SweepPoint]]:
    """Every point of the file with the overrides applied and its key (the same in the parent and workers)."""
    keys, points = load_scenarios(scenario_path, trace)
    out = []
    for i, (values, scenario) in enumerate(points):
        scenario = with_simulation(scenario, steps, seed)
        out.append(SweepPoint(i, values, scenario, point_key(scenario)))
    return keys, out


def plan_sweep(scenario_path: Path, steps: int | None = None, seed: int | None = None,
               trace: Path | None = None) -> SweepPlan:
    """Load and check every point (one-line SpecError for bad input, before anything runs). A file without a
    sweep gives one point and no keys."""
    trace = Path(trace).resolve() if trace is not None else None  # the workers may start elsewhere
    keys, points = load_points(Path(scenario_path), steps, seed, trace)
    return SweepPlan(Path(scenario_path).resolve(), steps, seed, keys, points, trace)
