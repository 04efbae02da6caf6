"""A run's step time from the simulator, extended exactly in the micro-batch count: where a global batch is too big to
simulate whole, two shorter runs are simulated and the step extended along the line through them (the steady
state of the pipeline repeats, so the step is affine in the micro-batch count; tests/report/test_accuracy.py shows
the extension equals the full run). Used by `moesim accuracy` and `moesim plan`."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.metrics.summary import summarize
from moesim.sim.simulate import simulate
from moesim.spec.scenario import Scenario
from moesim.spec.simulation import RecordDetail

DEFAULT_MAX_MICRO_BATCHES = 32


@dataclass(frozen=True)
class Prediction:
    step_s: float  # p50 over the measured steps
    step_p95_s: float
    breakdown_s: dict[str, float]  # bucket -> seconds per step (mean over ranks)
    peak_memory_bytes: float  # the busiest rank
    hbm_bytes: float
    micro_batches: int
    simulated_micro_batches: tuple[int, ...]  # (m,) simulated whole, or (m1, m2) extrapolated from
    dropped_fraction: float = 0.0  # assignments the gate dropped (a capacity factor's price)

    @property
    def extrapolated(self) -> bool:
        return len(self.simulated_micro_batches) == 2


def with_micro_batches(sc: Scenario, micro_batches: int) -> Scenario:
    """The scenario with `micro_batches` per data-parallel rank (the global batch scaled to match)."""
    gbs = micro_batches * sc.layout.dp * sc.training.micro_batch_size
    return sc.replace(training=sc.training.replace(global_batch_size=gbs))


def simulated_runs(sc: Scenario, max_micro_batches: int = DEFAULT_MAX_MICRO_BATCHES) -> tuple[Scenario, ...]:
    """The scenarios `predict(sc, max_micro_batches)` simulates (summary records only): `sc` itself, or the two
    shorter runs it extends from. A cost guard estimates these before anything is simulated."""
    sc = sc.replace(simulation=sc.simulation.replace(records=RecordDetail.SUMMARY))
    m = sc.num_micro_batches
    if m <= max_micro_batches:
        return (sc,)
    pp = sc.layout.pp
    m1 = max(pp, max_micro_batches // 2)
    if sc.layout.vpp > 1:  # interleaving needs a multiple of pp micro-batches
        m1 = -(-m1 // pp) * pp
    m2 = 2 * m1
    if m2 >= m:  # too few to extrapolate from below: simulate it whole
        return (sc,)
    return with_micro_batches(sc, m1), with_micro_batches(sc, m2)


def predict(sc: Scenario, max_micro_batches: int = DEFAULT_MAX_MICRO_BATCHES) -> Prediction:
    """Simulate `sc` (summary records only), extrapolating in the micro-batch count above `max_micro_batches`."""
    runs = simulated_runs(sc, max_micro_batches)
    m = sc.num_micro_batches
    if len(runs) == 1:
        s = summarize(simulate(runs[0]))
        return Prediction(s.step_time_s, s.step_time_p95_s, dict(s.breakdown_s), s.peak_memory_bytes_max,
                          s.hbm_bytes, m, (m,), s.dropped_fraction)
    m1, m2 = (run.num_micro_batches for run in runs)
    s1, s2 = (summarize(simulate(run)) for run in runs)

    def extend(y1: float, y2: float) -> float:
        return y2 + (m - m2) * (y2 - y1) / (m2 - m1)

    breakdown = {b: extend(s1.breakdown_s[b], s2.breakdown_s[b]) for b in s2.breakdown_s}
    # memory: with m1 >= pp every stage already holds its most micro-batches in flight
    return Prediction(extend(s1.step_time_s, s2.step_time_s), extend(s1.step_time_p95_s, s2.step_time_p95_s),
                      breakdown, s2.peak_memory_bytes_max, s2.hbm_bytes, m, (m1, m2), s2.dropped_fraction)
