"""Collective calibration: real 2-rank gloo runs through run_local (tiny sizes, a few repeats), the failure paths
(a rank raising, exiting, hanging), and the pure helpers (tiers, layouts, splits, rows)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from moesim.calibration.collectives import (
    Layout, _Steps, discover_tiers, group_elements, layout_from_keys, measure_collectives, p2p_pairs,
    sample_row, skewed_splits)
from moesim.calibration.errors import CalibrationError
from moesim.calibration.launch import SamplePlan, calibration_worker, run_local
from moesim.calibration.samples import BUSBW_FACTOR, COLLECTIVE_COLUMNS
from moesim.spec.errors import SpecError

SIZES_BYTES = (4 << 10, 256 << 10)


@pytest.fixture
def workers_importable(monkeypatch):
    """Spawned ranks unpickle the workers below by module name; pytest's importlib mode names this module from
    the rootdir (e.g. tests.calibration.test_collectives), which the children can import only from there."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[__name__.count(".")]))


# ------------------------------------------------------------------ workers (module level: spawn pickles them)

def _raise_on_rank1(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("injected failure")
    time.sleep(30)  # rank 0 would wait on its peer; the parent must end it


def _measure_then_exit_on_rank1(rank: int, world_size: int, progress: str) -> None:
    import torch.distributed as dist

    measure_collectives([4096], repeats=2, warmup=0, ops=("all_reduce", "all_to_all"), timeout_s=10,
                        progress_path=Path(progress))
    dist.barrier()  # rank 0 has written its rows before rank 1 dies (else the parent may end it first)
    if rank == 1:
        os._exit(3)
    # rank 0 goes on and meets a dead peer (or is terminated first): either way rank 1 is the one named
    measure_collectives([4096], repeats=2, warmup=0, ops=("all_gather",), timeout_s=10,
                        progress_path=Path(progress))
    time.sleep(30)


def _hang_on_rank1(rank: int, world_size: int) -> None:
    import torch.distributed as dist

    if rank == 1:
        time.sleep(3600)
    dist.barrier()


def _stuck_in_a_step(rank: int, world_size: int, label: str) -> None:
    from moesim.calibration.collectives import _Steps

    with _Steps(rank, timeout_s=3600) as steps, steps.step(label):
        time.sleep(3600)


def _gaps_and_their_order(rank: int, world_size: int, out: str) -> None:
    import torch

    from moesim.calibration.collectives import _time_case, compute_gaps

    gaps = compute_gaps(torch.device("cpu"), (1e-3, 4e-3))
    calls: list[int] = []
    with _Steps(rank, timeout_s=30) as steps:
        times = _time_case(steps, "probe", lambda: None, repeats=3, warmup=2, device=torch.device("cpu"),
                           before=calls.append)
    Path(out).write_text(json.dumps({"counts": gaps.counts, "calls": calls, "times": len(times)}))


# ------------------------------------------------------------------------------------------------ real runs

def _check_rows(frame: pd.DataFrame, tier: str, ranks: int) -> None:
    assert tuple(frame.columns) == COLLECTIVE_COLUMNS
    assert set(frame["tier"]) == {tier}
    assert set(frame["op"]) == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "all_to_all_skewed"}
    assert len(frame) == 5 * len(SIZES_BYTES)
    assert (frame["ranks"] == ranks).all() and (frame["repeats"] == 3).all()
    assert ((frame["src"] == -1) & (frame["dst"] == -1)).all()
    assert (frame["bytes"] % (ranks * 4) == 0).all() and set(frame["bytes"]) == set(SIZES_BYTES)
    assert (frame["time_median_s"] > 0).all() and (frame["time_mean_s"] > 0).all()
    assert (frame["time_p10_s"] <= frame["time_median_s"]).all()
    assert (frame["time_median_s"] <= frame["time_p90_s"]).all()
    assert np.allclose(frame["algbw_GBps"], frame["bytes"] / frame["time_mean_s"] / 1e9)
    for op, rows in frame.groupby("op"):
        assert np.allclose(rows["busbw_GBps"] / rows["algbw_GBps"], BUSBW_FACTOR[op](ranks)), op


def test_two_pretended_nodes_measure_inter_node_and_the_pair_matrix(tmp_path):
    plan = SamplePlan(out_dir=str(tmp_path / "samples"), sizes_bytes=SIZES_BYTES, repeats=3, warmup=1,
                      p2p_bytes=4096, op_timeout_s=20)
    run_local(2, calibration_worker, (plan,), ranks_per_node=1, timeout_s=45, progress_path=plan.progress)

    out = tmp_path / "samples"
    collectives = pd.read_csv(out / "collectives.csv")
    _check_rows(collectives, "inter_node", 2)  # one rank per node: the intra-node groups of 1 are skipped
    p2p = pd.read_csv(out / "p2p.csv")
    assert tuple(p2p.columns) == COLLECTIVE_COLUMNS
    assert sorted(zip(p2p["src"], p2p["dst"])) == [(0, 1), (1, 0)]
    assert set(p2p["op"]) == {"p2p"} and set(p2p["tier"]) == {"pair"} and (p2p["ranks"] == 2).all()
    assert np.allclose(p2p["busbw_GBps"], p2p["algbw_GBps"])
    tiers = json.loads((out / "tiers.json").read_text())
    assert sum(t["pairs"] for t in tiers["tiers"]) == 2 and sorted(sum(tiers["rank_groups"], [])) == [0, 1]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] == "gloo" and meta["hosts"] == [[0], [1]]
    progress = pd.read_csv(plan.progress)
    assert len(progress) == len(collectives) + len(p2p)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_each_timed_call_follows_the_same_compute_on_every_rank(tmp_path, workers_importable):
    out = tmp_path / "gaps.json"
    run_local(1, _gaps_and_their_order, (str(out),), timeout_s=45)
    got = json.loads(out.read_text())
    assert got["calls"] == [0, 1, 2, 3, 4] and got["times"] == 3  # before every warm-up and repeat, in order
    small, large = got["counts"]
    assert small >= 1 and abs(large - 4 * small) <= 2  # matmul counts in the gaps' ratio (rounding apart)


def test_one_node_of_two_ranks_measures_intra_node_only(tmp_path):
    plan = SamplePlan(out_dir=str(tmp_path), sizes_bytes=SIZES_BYTES, repeats=3, warmup=1, p2p_bytes=0,
                      op_timeout_s=20)
    run_local(2, calibration_worker, (plan,), ranks_per_node=2, timeout_s=45)

    _check_rows(pd.read_csv(tmp_path / "collectives.csv"), "intra_node", 2)
    assert not (tmp_path / "p2p.csv").exists()


# ----------------------------------------------------------------------------------------------- failures

def test_a_rank_that_raises_is_named(workers_importable):
    start_s = time.monotonic()
    with pytest.raises(CalibrationError, match=r"rank 1 exited with code 1 \(rank 1: ValueError: injected"):
        run_local(2, _raise_on_rank1, (), timeout_s=25)
    assert time.monotonic() - start_s < 20  # ended at the failure, not at the deadline


def test_a_rank_that_dies_is_named_and_the_rows_measured_before_stay(tmp_path, workers_importable):
    progress = tmp_path / "progress.csv"
    with pytest.raises(CalibrationError, match=r"rank 1 exited with code 3") as err:
        run_local(2, _measure_then_exit_on_rank1, (str(progress),), ranks_per_node=1, timeout_s=25,
                  op_timeout_s=10, progress_path=progress)
    kept = pd.read_csv(progress)
    assert tuple(kept.columns) == COLLECTIVE_COLUMNS
    assert list(kept["op"][:2]) == ["all_reduce", "all_to_all"]
    assert "last measured row: all_" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_hung_rank_is_ended_by_the_deadline(workers_importable):
    start_s = time.monotonic()
    with pytest.raises(CalibrationError, match=r"(deadline of 6 s passed|still running)"):
        run_local(2, _hang_on_rank1, (), timeout_s=6, op_timeout_s=60)
    assert time.monotonic() - start_s < 15


def test_a_passed_deadline_names_the_operation_size_and_repeat_in_progress(workers_importable):
    label = "all_to_all inter_node 4096 B, repeat 2"
    with pytest.raises(CalibrationError) as err:  # 15 s: two ranks start (torch, gloo) well within it on a busy
        run_local(2, _stuck_in_a_step, (label,), timeout_s=15, op_timeout_s=60)  # 2-core machine (8 s did not)
    assert f"the deadline of 15 s passed during {label}" in str(err.value)


def test_a_failed_step_is_named_and_a_stuck_step_reported():
    with _Steps(rank=3, timeout_s=60) as steps:
        with pytest.raises(CalibrationError) as err:
            with steps.step("all_to_all inter_node 4096 B, repeat 2"):
                raise RuntimeError("[gloo/tcp.cc:78] Connection closed by peer\nsecond line")
    assert str(err.value) == ("rank 3: all_to_all inter_node 4096 B, repeat 2: "
                              "[gloo/tcp.cc:78] Connection closed by peer")

    stalls: list[str] = []
    with _Steps(rank=1, timeout_s=0.01, on_stall=stalls.append, grace_s=0.2) as steps:
        with steps.step("all_reduce intra_node 8 B, repeat 0"):
            deadline_s = time.monotonic() + 5
            while not stalls and time.monotonic() < deadline_s:
                time.sleep(0.05)
    assert stalls and stalls[0].startswith("rank 1: all_reduce intra_node 8 B, repeat 0: no progress")


def test_bad_arguments_are_spec_errors():
    with pytest.raises(SpecError, match="ranks_per_node"):
        run_local(4, _raise_on_rank1, (), ranks_per_node=3)
    with pytest.raises(SpecError, match="repeats"):
        measure_collectives([4096], repeats=0, warmup=0, timeout_s=1)


# ------------------------------------------------------------------------------------------- pure helpers

def _synthetic_p2p(hosts: int, per_host: int, intra_GBps: float, inter_GBps: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for src in range(hosts * per_host):
        for dst in range(hosts * per_host):
            if src != dst:
                same = src // per_host == dst // per_host
                bw = (intra_GBps if same else inter_GBps) * rng.uniform(0.9, 1.1)
                rows.append({"op": "p2p", "tier": "pair", "ranks": 2, "bytes": 1 << 26, "src": src, "dst": dst,
                             "algbw_GBps": bw, "busbw_GBps": bw})
    return pd.DataFrame(rows)


def test_discover_tiers_finds_the_hosts_of_a_two_tier_matrix():
    found = discover_tiers(_synthetic_p2p(hosts=2, per_host=4, intra_GBps=370.0, inter_GBps=46.0))
    assert [t["name"] for t in found["tiers"]] == ["tier0", "tier1"]
    assert [t["pairs"] for t in found["tiers"]] == [2 * 4 * 3, 2 * 4 * 4]
    assert found["tiers"][0]["bandwidth_GBps"] == pytest.approx(370.0, rel=0.1)
    assert found["tiers"][1]["bandwidth_GBps"] == pytest.approx(46.0, rel=0.1)
    assert found["rank_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_discover_tiers_with_one_tier_and_with_none():
    flat = discover_tiers(_synthetic_p2p(hosts=3, per_host=1, intra_GBps=50.0, inter_GBps=50.0))
    assert len(flat["tiers"]) == 1 and flat["rank_groups"] == [[0, 1, 2]]
    assert discover_tiers(pd.DataFrame(columns=COLLECTIVE_COLUMNS)) == {"tiers": [], "rank_groups": []}
    with pytest.raises(SpecError, match="rel_gap"):
        discover_tiers(_synthetic_p2p(hosts=1, per_host=2, intra_GBps=1.0, inter_GBps=1.0), rel_gap=1.5)


def test_layouts_and_tier_groups():
    layout = layout_from_keys(["a", "a", "b", "b", "c", "c"])
    assert layout.hosts == ((0, 1), (2, 3), (4, 5))
    assert layout.tier_groups("intra_node") == ((0, 1), (2, 3), (4, 5))
    assert layout.tier_groups("inter_node") == ((0, 2, 4), (1, 3, 5))
    assert Layout(((0, 1, 2),)).tier_groups("inter_node") == ()
    assert Layout(((0,), (1,))).tier_groups("intra_node") == ()
    with pytest.raises(SpecError, match="hosts"):
        layout_from_keys(["a", "a", "b"])


def test_p2p_pairs_sample_large_worlds_but_keep_every_tier():
    small = Layout(((0, 1), (2, 3)))
    assert len(p2p_pairs(small)) == 4 * 3
    big = Layout(tuple(tuple(range(h * 8, h * 8 + 8)) for h in range(4)))
    pairs = p2p_pairs(big)
    assert len(pairs) == 4 * 8 * 7 + 4 * 3 * 2 and len(set(pairs)) == len(pairs)
    assert (0, 8) in pairs and (0, 9) in pairs and (1, 9) not in pairs


def test_skewed_splits_keep_the_total_and_the_ratio():
    splits = skewed_splits(8000, 4, 4.0)
    assert sum(splits) == 8000 and splits[1:] == [1142] * 3
    assert splits[0] / splits[1] == pytest.approx(4.0, rel=0.01)
    assert skewed_splits(10, 1, 4.0) == [10]
    assert group_elements(4096, 8) == 1024 and group_elements(4100, 8) == 1032 and group_elements(1, 4) == 4


def test_sample_row_follows_nccl_tests():
    # one slow call of three: nccl-tests' time (one timer over its iterations) is the mean, and so is algbw's
    row = sample_row("all_reduce", "intra_node", 4, 1 << 20, np.array([1e-3, 4e-3, 1e-3]))
    assert tuple(row) == COLLECTIVE_COLUMNS
    assert row["time_median_s"] == pytest.approx(1e-3) and row["time_mean_s"] == pytest.approx(2e-3)
    assert row["algbw_GBps"] == pytest.approx((1 << 20) / 2e-3 / 1e9)
    assert row["busbw_GBps"] == pytest.approx(row["algbw_GBps"] * 1.5)
