"""What a routing trace looks like: its skew over steps and layers, and each layer's sorted expert shares beside
the curves of the families `moesim trace fit` fitted (moesim.routing.fit), for plots and tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.routing.fit import FAMILIES, DRAWS, FitReport, model_curves, observed_curves
from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace


def expert_max_over_mean(trace: RoutingTrace) -> np.ndarray:
    """[steps, layers] expert imbalance of each step's layer: its experts' loads (assignments summed over the
    step's micro-batches and source ranks), max over mean; NaN where the layer routed nothing that step."""
    loads = trace.counts.sum(axis=(2, 3), dtype=np.int64)  # [steps, layers, experts]
    mean = loads.mean(axis=-1)
    peak = loads.max(axis=-1).astype(np.float64)
    return np.divide(peak, mean, out=np.full(mean.shape, np.nan), where=mean > 0)


def skew_frame(trace: RoutingTrace) -> pd.DataFrame:
    """expert_max_over_mean in long form: one row per (step, layer), the step as the trace labels it."""
    skew = expert_max_over_mean(trace)
    steps, layers = np.meshgrid(trace.steps, np.arange(trace.num_layers), indexing="ij")
    return pd.DataFrame({"step": steps.ravel().astype(np.int64), "layer": layers.ravel().astype(np.int64),
                         "expert_max_over_mean": skew.ravel()})


def fitted_curves(trace: RoutingTrace, report: FitReport, seed: int = 0) -> pd.DataFrame:
    """Per layer and expert rank (1 = hottest): the observed mean sorted share and each family's model curve at
    its fitted parameter, as the fit compared them (`report` must come from fit_trace(trace, seed=seed)). Shares
    are fractions of the row's assignments; x num_experts is the share over the mean share."""
    if len(report.layers) != trace.num_layers or report.num_experts != trace.num_experts:
        raise SpecError("report", f"a fit of {len(report.layers)} layers x {report.num_experts} experts",
                        f"the fit of this trace ({trace.num_layers} layers x {trace.num_experts} experts)",
                        source=trace.path)
    observed, totals, _ = observed_curves(trace)
    frame = {"layer": np.repeat(np.arange(trace.num_layers), trace.num_experts),
             "expert_rank": np.tile(np.arange(1, trace.num_experts + 1), trace.num_layers),
             "observed_share": observed.ravel()}
    for family in FAMILIES:
        params = np.array([lf.fit_of(family).param for lf in report.layers])
        curves = model_curves(family, params, totals, trace.num_experts, report.top_k, seed,
                              report.draws or DRAWS)
        frame[f"{family.value}_share"] = curves.ravel()
    best = {lf.layer: lf.best.distribution.value for lf in report.layers}
    out = pd.DataFrame(frame)
    out["best"] = out["layer"].map(best)
    return out
