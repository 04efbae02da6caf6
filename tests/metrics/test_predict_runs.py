"""predict() simulates exactly the runs simulated_runs() names (what a cost guard estimates beforehand)."""

import pytest

import moesim.metrics.predict as predict_module
from moesim.metrics.predict import predict, simulated_runs
from moesim.spec import ParallelLayout
from moesim.spec.simulation import RecordDetail

from helpers import scenario


@pytest.mark.parametrize("micro_batches, cap, expected", [(4, 32, (4,)), (64, 8, (4, 8)), (4, 3, (4,))])
def test_predict_simulates_the_runs_it_names(monkeypatch, micro_batches, cap, expected):
    sc = scenario(layout=ParallelLayout(tp=1, pp=2, dp=4, ep=4), global_batch=4 * micro_batches, steps=1)
    assert sc.num_micro_batches == micro_batches
    runs = simulated_runs(sc, cap)
    assert tuple(r.num_micro_batches for r in runs) == expected
    assert all(r.simulation.records is RecordDetail.SUMMARY for r in runs)
    simulated = []
    real = predict_module.simulate
    monkeypatch.setattr(predict_module, "simulate", lambda s: simulated.append(s) or real(s))
    prediction = predict(sc, cap)
    assert simulated == list(runs)
    assert prediction.simulated_micro_batches == expected and prediction.micro_batches == micro_batches
