"""A trace's skew per step and layer, and the fitted families' curves beside the observed ones."""

from pathlib import Path

import numpy as np
import pytest

from moesim.io.traces import read_trace
from moesim.routing.fit import FAMILIES, fit_trace
from moesim.routing.trace_stats import expert_max_over_mean, fitted_curves, skew_frame
from moesim.spec.errors import SpecError
from moesim.spec.trace import RoutingTrace

SHIPPED = Path(__file__).resolve().parents[2] / "traces" / "tiny-moe-stdlib.parquet"


def _trace() -> RoutingTrace:
    counts = np.zeros((3, 3, 2, 2, 4), dtype=np.int32)
    counts[:, 0] = 5  # even
    counts[:, 1, :, :, 0] = 15  # one hot expert: per step 60 of 60 + 3 x 4
    counts[:, 1, :, :, 1:] = 1
    counts[1, 2] = 3  # layer 2 routes only at step 1
    return RoutingTrace(counts, np.array([10, 20, 30]), top_k=1, source="test")


def test_max_over_mean_per_step_and_layer():
    skew = expert_max_over_mean(_trace())
    assert skew.shape == (3, 3)
    assert skew[:, 0] == pytest.approx(1.0)
    assert skew[:, 1] == pytest.approx(60 / (72 / 4))
    assert np.isnan(skew[[0, 2], 2]).all() and skew[1, 2] == pytest.approx(1.0)
    frame = skew_frame(_trace())
    assert frame.shape == (9, 3) and frame["step"].tolist()[:3] == [10, 10, 10]
    assert frame.loc[(frame.step == 20) & (frame.layer == 1), "expert_max_over_mean"].item() == pytest.approx(60 / 18)


def test_the_fitted_curves_are_the_ones_the_fit_scored():
    trace = read_trace(SHIPPED)
    report = fit_trace(trace)
    curves = fitted_curves(trace, report)
    assert len(curves) == trace.num_layers * trace.num_experts
    for lf in report.layers:
        one = curves[curves.layer == lf.layer]
        assert one["observed_share"].sum() == pytest.approx(1.0)
        assert one["observed_share"].is_monotonic_decreasing
        for fit in lf.fits:
            rmse = np.sqrt(((one[f"{fit.distribution.value}_share"] - one["observed_share"]) ** 2).mean())
            assert rmse == pytest.approx(fit.rmse, rel=1e-9)
        assert (one["best"] == lf.best.distribution.value).all()
    assert {f"{f.value}_share" for f in FAMILIES} <= set(curves.columns)
    with pytest.raises(SpecError, match="the fit of this trace"):
        fitted_curves(_trace(), report)
