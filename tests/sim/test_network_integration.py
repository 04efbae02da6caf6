"""The scenario's network section drives every collective the simulator times."""


import numpy as np
import pytest

from moesim.cli import main
from moesim.loader import parse_scenario
from moesim.metrics.summary import summarize
from moesim.sim.simulate import simulate
from moesim.spec import ParallelLayout
from moesim.spec.errors import SpecError
from moesim.spec.network import AllToAllAlgorithm, CrossRail, NetworkModelKind, NetworkSpec

from helpers import scenario, tiny_model


def across_nodes(zipf_s=1.0, **network):
    sc = scenario(nodes=2, layout=ParallelLayout(tp=1, pp=1, dp=16, ep=16), zipf_s=zipf_s, global_batch=16,
                  model=tiny_model(num_experts=32))
    return sc.replace(network=NetworkSpec(**network))


def test_the_network_section_parses_and_rejects_bad_values(quickstart_doc, tmp_path):
    doc = quickstart_doc
    doc["network"] = {"model": "alpha_beta", "all_to_all": "hierarchical", "cross_rail": "spine"}
    sc = parse_scenario(doc, "q", tmp_path)
    assert sc.network == NetworkSpec(model=NetworkModelKind.ALPHA_BETA, all_to_all=AllToAllAlgorithm.HIERARCHICAL,
                                     cross_rail=CrossRail.SPINE)
    doc["network"] = {"all_to_all": "2dh"}
    with pytest.raises(SpecError) as err:
        parse_scenario(doc, "q", tmp_path)
    assert "network.all_to_all" in str(err.value) and "hierarchical" in str(err.value)
    doc["network"] = {"algorithm": "direct"}
    with pytest.raises(SpecError, match="network.algorithm"):
        parse_scenario(doc, "q", tmp_path)


def test_every_network_choice_simulates_and_splits_bytes_by_tier():
    results = {}
    for model in NetworkModelKind:
        for algorithm in AllToAllAlgorithm:
            s = summarize(simulate(across_nodes(model=model, all_to_all=algorithm)))
            results[model, algorithm] = s
            assert s.network.a2a_bytes_per_step["nic"] > 0
            assert s.network.a2a_bytes_per_step["nvlink"] > 0
            assert 0 < s.network.a2a_link_utilisation["nic"].max <= 1
    flow = NetworkModelKind.FLOW
    assert results[flow, AllToAllAlgorithm.DIRECT].step_time_s != \
        results[flow, AllToAllAlgorithm.HIERARCHICAL].step_time_s


def test_skew_makes_the_dispatch_slower_than_balanced_and_shows_in_the_matrix():
    skewed, balanced = simulate(across_nodes(1.5)), simulate(across_nodes(0.0))
    rec_s, rec_b = skewed.records, balanced.records
    a2a = lambda rec: (rec.loc[rec["op"] == "dispatch", "end_s"] - rec.loc[rec["op"] == "dispatch", "start_s"]  # noqa
                       - rec.loc[rec["op"] == "dispatch", "wait_s"]).mean()
    assert a2a(rec_s) > 1.5 * a2a(rec_b)
    received = skewed.a2a_matrices.sum(-2)  # [layers, ep]: bytes each EP rank receives
    assert (received.max(-1) / received.mean(-1) > 2).all()
    bal = balanced.a2a_matrices.sum(-2)
    assert (bal.max(-1) / bal.mean(-1) < 1.3).all()


def test_combine_is_timed_on_the_transposed_matrix():
    # with PXN the NVLink hop happens on the sender's node, so reversing the traffic moves the hot spots
    res = simulate(across_nodes(1.5))
    rec = res.records
    busy = (rec["end_s"] - rec["start_s"] - rec["wait_s"])
    d = busy[rec["op"] == "dispatch"].to_numpy()
    c = busy[rec["op"] == "combine"].to_numpy()
    assert d.shape == c.shape and not np.allclose(d, c)


def test_sweep_over_network_keys_runs(tmp_path, capsys):
    path = tmp_path / "net.yaml"
    path.write_text(_SWEEP)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "hierarchical" in out and "a2a_nic_GB" in out


_SWEEP = """
name: net-sweep
cluster: {profile: dgx-h100, nodes: 2}
model: {preset: olmoe-1b-7b, num_layers: 2}
training: {global_batch_size: 16, seq_len: 256, micro_batch_size: 1, dtype: bf16}
layout: {tp: 1, pp: 1, dp: 16, ep: 16}
routing: {distribution: zipf, zipf_s: 1.0}
simulation: {steps: 1, warmup_steps: 0, seed: 0}
sweep:
  network.all_to_all: [direct, hierarchical]
"""
