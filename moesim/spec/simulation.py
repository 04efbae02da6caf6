"""How long to simulate, with which master seed, and how much per-op detail to keep."""

from __future__ import annotations

from moesim.spec.base import INT_MAX, SpecEnum, SpecModel, spec_field

MAX_STEPS = 100_000


class RecordDetail(SpecEnum):
    """What the simulator keeps of every op. The summary (step times, breakdown, bytes) is the same for all three:
    per-bucket totals are exact sums either way."""

    FULL = "full"  # one record per op and rank: records.parquet and the Perfetto timeline
    PER_RANK = "per_rank"  # one record per (step, rank, phase, op kind) with summed times: records.parquet only
    SUMMARY = "summary"  # the per-rank totals in memory, no record file (sweeps, planners)


class RoutingDraws(SpecEnum):
    """How a step's synthetic routing counts are drawn from the router's shares."""

    EXACT = "exact"  # Generator.multinomial: ~130 ns per (micro-batch, layer, source rank, expert) count
    NORMAL = "normal"  # its Gaussian limit with the exact covariance, rounded to whole counts: ~2.5x cheaper,
    # error measured in tests/routing/test_normal_draws.py and the README
    EXPECTED = "expected"  # the expected counts, rounded (largest remainder): no sampling noise at all, so
    # micro-batches with the same shares are identical (step time exactly affine in the micro-batch count)


class SimulationSpec(SpecModel):
    steps: int = spec_field(3, help="measured steps", unit="steps", ge=1, le=MAX_STEPS)
    warmup_steps: int = spec_field(0, help="simulated first and left out of the statistics", unit="steps", ge=0,
                                   le=MAX_STEPS)
    seed: int = spec_field(0, help="master seed: one SeedSequence spawns every component's generator", ge=0,
                           le=INT_MAX)
    records: RecordDetail = spec_field(RecordDetail.FULL, help="per-op detail kept: full (one record per op and "
                                       "rank, timeline), per_rank (summed per rank and op kind) or summary "
                                       "(no record file)")
    routing_draws: RoutingDraws = spec_field(RoutingDraws.EXACT, help="synthetic routing counts: exact (multinomial), "
                                             "normal (its Gaussian limit, faster for large batches; changes the "
                                             "draws) or expected (no sampling noise)")
