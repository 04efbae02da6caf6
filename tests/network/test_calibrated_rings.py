"""Ring collectives on a calibrated profile: each collective is timed by its own measured table (gloo's
reduce-scatter is not half of its all-reduce), in both network models; an uncalibrated profile keeps the ring
formula, where a reduce-scatter and an all-gather make one all-reduce. The distributed optimizer's gradient sync is
that reduce-scatter plus that all-gather."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.io.profile import load_profile, resolve_profile
from moesim.network import build_network
from moesim.spec.hardware import ClusterSpec
from moesim.spec.network import NetworkModelKind, NetworkSpec

CPU = load_profile(resolve_profile("cpu-gloo-2c-2r"))
GROUP = np.array([[0, 1]])
SIZE_BYTES = 64 * 2**20


@pytest.mark.parametrize("model", [NetworkModelKind.FLOW, NetworkModelKind.ALPHA_BETA])
def test_each_ring_collective_is_timed_by_its_own_table(model):
    net = build_network(ClusterSpec(profile=CPU, nodes=1), NetworkSpec(model=model))
    cal = CPU.calibration
    for op, time_s, factor in (("all_reduce", net.all_reduce_s, 1.0), ("reduce_scatter", net.reduce_scatter_s, 0.5),
                               ("all_gather", net.all_gather_s, 0.5)):
        want = cal.collective(op, "intra_node").time_s(SIZE_BYTES, factor)
        assert float(time_s(SIZE_BYTES, GROUP)[0]) == pytest.approx(want)
    # measured on gloo: a reduce-scatter and an all-gather cost far more than the all-reduce
    rs_ag = net.reduce_scatter_s(SIZE_BYTES, GROUP) + net.all_gather_s(SIZE_BYTES, GROUP)
    assert float(rs_ag[0]) > 1.5 * float(net.all_reduce_s(SIZE_BYTES, GROUP)[0])


def test_an_uncalibrated_ring_splits_the_all_reduce_in_two_halves():
    h100 = load_profile(resolve_profile("dgx-h100"))
    net = build_network(ClusterSpec(profile=h100, nodes=2))
    group = np.arange(16)[None]
    rs, ag = net.reduce_scatter_s(SIZE_BYTES, group), net.all_gather_s(SIZE_BYTES, group)
    np.testing.assert_allclose(rs, ag)
    np.testing.assert_allclose(rs + ag, net.all_reduce_s(SIZE_BYTES, group))


def test_the_distributed_optimizer_syncs_by_reduce_scatter_and_all_gather():
    from pathlib import Path

    from moesim.loader import load_scenario
    from moesim.sim.workload import static_work
    from moesim.spec.layout import ParallelLayout

    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")
    sc = sc.replace(cluster=ClusterSpec(profile=CPU.replace(node=CPU.node.replace(gpus_per_node=2)), nodes=1),
                    layout=ParallelLayout(dp=2, ep=1),
                    training=sc.training.replace(global_batch_size=2, dtype="fp32", grad_dtype="fp32"))
    net = build_network(sc.cluster, sc.network)
    sharded = static_work(sc, net)
    plain = static_work(sc.replace(training=sc.training.replace(
        optimizer=sc.training.optimizer.replace(distributed=False))), net)
    nbytes = sharded.grad_bytes[0, 1]
    want = float(net.reduce_scatter_s(nbytes, GROUP)[0] + net.all_gather_s(nbytes, GROUP)[0])
    assert float(sharded.dp_expert_s[0, 0]) == pytest.approx(want)
    assert float(plain.dp_expert_s[0, 0]) == pytest.approx(float(net.all_reduce_s(nbytes, GROUP)[0]))


def test_with_another_all_reduce_algorithm_the_distributed_sync_stays_its_all_reduce():
    from pathlib import Path

    from moesim.loader import load_scenario
    from moesim.sim.workload import static_work

    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")
    assert sc.training.optimizer.distributed
    nvls = sc.replace(network=sc.network.replace(all_reduce="nvls_tree"))
    net = build_network(nvls.cluster, nvls.network)
    work = static_work(nvls, net)
    groups = nvls.layout.edp_groups()[0]
    want = net.all_reduce_s(work.grad_bytes[0, 1], groups).reshape(-1)
    np.testing.assert_allclose(work.dp_expert_s[0, :want.size], want)
