"""summarize() returns a frozen, typed RunSummary; its to_dict() is summary.json, whose shape and key order users'
scripts read (the numbers themselves are pinned by tests/sim/test_summary_regression.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from moesim.metrics.errors import ResultError
from moesim.metrics.summary import check_finite, summarize
from moesim.metrics.types import LayerSummary, LinkUtilisation, RunSummary
from moesim.sim.simulate import LAYER_STAT_COLUMNS, TIERS, simulate
from moesim.spec import ParallelLayout

from helpers import scenario

SUMMARY_JSON_KEYS = [
    "scenario", "gpus", "layout", "profile", "measured_steps", "step_time_s", "step_time_p95_s", "step_time_p99_s",
    "step_time_mean_s", "tokens_per_s", "mfu", "mfu_nominal", "capacity_factor", "breakdown_s", "hidden_s",
    "peak_memory_bytes", "peak_memory_bytes_max", "peak_memory_breakdown_bytes", "hbm_bytes", "fits_in_memory",
    "expert_load_max_over_mean", "gpu_load_max_over_mean",
    "dropped_fraction", "dropped_first_choice_fraction", "padding_fraction", "unrouted_token_fraction",
    "all_to_all_bytes_per_step", "network", "placement", "step_times_s", "per_layer", "provenance",
]


@pytest.fixture(scope="module")
def summary() -> RunSummary:
    return summarize(simulate(scenario(zipf_s=1.0, layout=ParallelLayout(tp=2, pp=2, dp=2, ep=2))))


def test_summary_is_frozen_and_typed(summary):
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.step_time_s = 0.0  # type: ignore[misc]
    assert summary.layout.tp == 2 and summary.gpus == 8 and len(summary.peak_memory_bytes) == 8
    assert set(summary.network.a2a_bytes_per_step) == set(TIERS)
    assert all(isinstance(u, LinkUtilisation) for u in summary.network.a2a_link_utilisation.values())
    assert all(isinstance(layer, LayerSummary) for layer in summary.per_layer)
    assert [f.name for f in dataclasses.fields(LayerSummary)] == ["layer", *LAYER_STAT_COLUMNS]


def test_to_dict_is_summary_json(summary):
    d = summary.to_dict()
    assert list(d) == SUMMARY_JSON_KEYS
    assert list(d["layout"]) == ["tp", "pp", "dp", "ep", "etp", "edp", "cp"]
    assert list(d["network"]["a2a_link_utilisation"]["nic"]) == ["mean", "max"]
    assert list(d["provenance"])[-1] == "scenario" and d["per_layer"][0]["layer"] == summary.per_layer[0].layer
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # plain JSON types only: no tuples, no records


def test_to_dict_is_a_copy(summary):
    d = summary.to_dict()
    d["breakdown_s"]["compute"] = -1.0
    d["provenance"]["scenario"]["name"] = "edited"
    assert summary.breakdown_s["compute"] >= 0 and summary.provenance.scenario["name"] != "edited"


def test_a_non_finite_number_is_named_by_its_summary_json_path(summary):
    nic = dataclasses.replace(summary.network.a2a_link_utilisation["nic"], max=math.inf)
    network = dataclasses.replace(summary.network,
                                  a2a_link_utilisation={**summary.network.a2a_link_utilisation, "nic": nic})
    with pytest.raises(ResultError, match=r"summary network\.a2a_link_utilisation\.nic\.max is inf"):
        check_finite(dataclasses.replace(summary, network=network).to_dict())
    with pytest.raises(ResultError, match=r"summary mfu is nan: .*gpu\.peak_dense_TFLOPs"):
        check_finite(dataclasses.replace(summary, mfu=math.nan).to_dict())
