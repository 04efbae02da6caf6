"""A plan's short list as tables (one row per choice; one row per choice and routing condition), the numbers of
shortlist.md in columns with units, for the dashboard and notebooks."""

from __future__ import annotations

import pandas as pd

from moesim.plan.output import choice_label, layout_label
from moesim.plan.run import PlanResult


def shortlist_frame(result: PlanResult) -> pd.DataFrame:
    """One row per simulated choice, best first: rank, layout, placement and capacity, the screen's estimate, the
    simulated step per routing condition (`<condition>_step_s`), the ranking score, dropped assignments, memory
    and the explanation (lines joined by newlines)."""
    names = list(result.shortlist[0].predictions) if result.shortlist else []
    rows = []
    for rank, e in enumerate(result.shortlist, 1):
        est = e.screened.estimate
        row = {"rank": rank, "layout": layout_label(e.screened.candidate.values), "choice": choice_label(e),
               "estimated_step_s": est.step_s}
        row.update({f"{name}_step_s": e.predictions[name].step_s for name in names})
        row.update({f"{result.plan.rank_by.value}_score_s": e.score_s,
                    "dropped_fraction": max(p.dropped_fraction for p in e.predictions.values()),
                    "peak_memory_bytes": est.peak_memory_bytes, "explanation": "\n".join(e.explanation)})
        rows.append(row)
    return pd.DataFrame(rows)


def robustness_frame(result: PlanResult) -> pd.DataFrame:
    """One row per (choice, routing condition), conditions in the plan's order: the simulated step time (p50 and
    p95) and its ratio to the same choice's first condition (the balanced case when the plan lists it first), i.e.
    how much the choice degrades when routing is skewed that way."""
    rows = []
    for rank, e in enumerate(result.shortlist, 1):
        first = next(iter(e.predictions.values())).step_s
        for name, p in e.predictions.items():
            rows.append({"rank": rank, "layout": layout_label(e.screened.candidate.values), "choice": choice_label(e),
                         "condition": name, "step_s": p.step_s, "step_p95_s": p.step_p95_s,
                         "step_over_first": p.step_s / first if first > 0 else float("nan"),
                         "dropped_fraction": p.dropped_fraction})
    return pd.DataFrame(rows)
