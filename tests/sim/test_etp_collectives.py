"""Expert tensor parallelism's collectives (Megatron's alltoall dispatcher): each ETP group all-gathers the rows
its members received and reduce-scatters the partial outputs; the dispatch and combine of every rank carry its
group's time, sized by the group's rows."""

import numpy as np
import pytest

from moesim.network import build_network
from moesim.sim import workload
from moesim.sim.simulate import simulate
from moesim.spec import ParallelLayout

from helpers import scenario


def _etp(dispatcher: str = "alltoall"):
    sc = scenario(zipf_s=1.0, layout=ParallelLayout(tp=2, pp=1, dp=4, ep=2, etp=2))
    return sc.replace(comm=sc.comm.replace(dispatcher=dispatcher))


def test_the_etp_group_gathers_its_rows_at_the_networks_time():
    sc = _etp()
    net = build_network(sc.cluster, sc.network)
    lay = sc.layout
    rows = np.zeros((2, lay.edp, lay.ep))
    rows[0, 0, 0], rows[1, 0, 1] = 4096.0, 1024.0  # the largest group, a smaller one; the others gather nothing
    gather, scatter = workload.etp_collectives_s(sc, net, rows, 0)
    groups = lay.etp_groups()[0]
    row_bytes = workload.ops.dispatch_row_bytes(sc.model, sc.training)
    assert gather[0, 0, 0] == pytest.approx(float(net.all_gather_s(4096.0 * row_bytes, groups)[0, 0]))
    assert 0.0 < gather[1, 0, 1] < gather[0, 0, 0] and gather[0, 0, 1] == 0.0
    assert scatter[0, 0, 0] == pytest.approx(float(net.reduce_scatter_s(
        4096.0 * workload.ops.combine_row_bytes(sc.model, sc.training), groups)[0, 0]))


@pytest.mark.parametrize("dispatcher", ["allgather", "flex"])
def test_no_etp_collectives_without_etp_or_with_other_dispatchers(dispatcher):
    net = build_network(_etp().cluster, _etp().network)
    rows = np.ones((1, 2, 2))
    for sc in (_etp(dispatcher), scenario(layout=ParallelLayout(tp=2, pp=1, dp=4, ep=2))):
        gather, scatter = workload.etp_collectives_s(sc, net, rows, 0)
        assert not gather.any() and not scatter.any()


def test_the_etp_collectives_lengthen_the_dispatch_and_the_step(monkeypatch):
    sc = _etp()
    with_etp = simulate(sc)
    monkeypatch.setattr(workload, "etp_collectives_s", lambda sc, net, rows, stage: (np.zeros(rows.shape),) * 2)
    without = simulate(sc)
    dispatch = [r[r["op"] == "dispatch"].eval("end_s - start_s").sum() for r in (with_etp.records, without.records)]
    assert dispatch[0] > dispatch[1]
    assert with_etp.step_times_s.mean() > without.step_times_s.mean()
