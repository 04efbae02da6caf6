"""Collective bandwidth curves in nccl-tests' terms, from the network models: busbw = algbw x factor(n), large
messages reach the tier's link, and a calibrated profile's curve passes through its measurements."""

import numpy as np
import pytest

from moesim.calibration.samples import BUSBW_FACTOR as CALIBRATION_FACTOR
from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.network import AlphaBetaNetwork, build_network
from moesim.network.bandwidth import (BUSBW_FACTOR, CURVE_OPS, TIERS, collective_curve, tier_group,
                                      tier_limit_bytes_per_s)
from moesim.spec.errors import SpecError
from moesim.spec.hardware import ClusterSpec
from moesim.spec.network import NetworkModelKind, NetworkSpec

H100 = load_profile(PROFILE_DIR / "dgx-h100.yaml")
CPU = load_profile(PROFILE_DIR / "cpu-gloo-2c.yaml")
SIZES = 2.0 ** np.arange(10, 33)


@pytest.mark.parametrize("model", list(NetworkModelKind))
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("op", CURVE_OPS)
def test_bus_bandwidth_grows_with_the_message_to_the_tiers_link(op, tier, model):
    curve = collective_curve(H100, op, tier, SIZES, network=NetworkSpec(model=model))
    n = len(curve.ranks)
    assert curve.algbw_bytes_per_s == pytest.approx(SIZES / curve.time_s)
    assert curve.busbw_bytes_per_s == pytest.approx(curve.algbw_bytes_per_s * BUSBW_FACTOR[op](n))
    limit = tier_limit_bytes_per_s(H100, tier)
    assert np.all(np.diff(curve.busbw_bytes_per_s) > 0)
    assert curve.busbw_bytes_per_s[-1] <= limit * (1 + 1e-9) and curve.busbw_bytes_per_s[-1] > 0.98 * limit


def test_the_groups_are_the_calibrations_tiers_and_times_are_the_models():
    cluster, ranks = tier_group(H100, "intra_node")
    assert cluster.nodes == 1 and ranks.tolist() == list(range(8))
    cluster, ranks = tier_group(H100, "inter_node", 4)
    assert cluster.nodes == 4 and ranks.tolist() == [0, 8, 16, 24]  # one rank per node, the same local rank
    net = build_network(cluster, NetworkSpec())
    curve = collective_curve(H100, "all_reduce", "inter_node", [2.0**20, 2.0**28], 4)
    assert curve.time_s == pytest.approx([net.all_reduce_s(s, ranks[None])[0] for s in (2.0**20, 2.0**28)])
    gather = collective_curve(H100, "all_gather", "intra_node", SIZES)
    scatter = collective_curve(H100, "reduce_scatter", "intra_node", SIZES)
    assert scatter.time_s == pytest.approx(gather.time_s)
    assert CALIBRATION_FACTOR is BUSBW_FACTOR  # one definition of nccl-tests' factors


def test_a_calibrated_curve_passes_through_its_measured_busbw():
    measured = CPU.calibration.collective("all_to_all", "intra_node")
    sizes = np.array([b for b, _ in measured.table])
    curve = collective_curve(CPU, "all_to_all", "intra_node", sizes, network=NetworkSpec(model="alpha_beta"))
    assert curve.busbw_bytes_per_s == pytest.approx([v for _, v in measured.table], rel=1e-9)


@pytest.mark.parametrize("args, key", [(("p2p", "intra_node", [1024.0]), "op"),
                                       (("all_to_all", "rack", [1024.0]), "tier"),
                                       (("all_to_all", "intra_node", [0.0]), "size_bytes"),
                                       (("all_to_all", "intra_node", [np.nan]), "size_bytes"),
                                       (("all_to_all", "intra_node", [1024.0], 9), "members"),
                                       (("all_to_all", "inter_node", [1024.0], 1), "members")])
def test_bad_requests_are_one_line(args, key):
    with pytest.raises(SpecError) as err:
        collective_curve(H100, *args)
    assert err.value.key == key and "\n" not in err.value.one_line()


def test_tier_limits_are_the_links_the_alpha_beta_model_charges():
    """One definition: the dashed line of the Profiles page is the alpha-beta model's per-tier bandwidth, which is
    the datasheet link x its efficiency (H100: NVLink 450 GB/s; 400 Gb/s NIC per GPU; no oversubscription)."""
    net = AlphaBetaNetwork(ClusterSpec(profile=H100, nodes=2))
    intra, inter = tier_limit_bytes_per_s(H100, "intra_node"), tier_limit_bytes_per_s(H100, "inter_node")
    assert (intra, inter) == (net.nvlink_bytes_per_s, net.nic_bytes_per_s)
    assert intra == pytest.approx(450e9 * H100.node.nvlink_efficiency)
    assert inter == pytest.approx(400e9 / 8 * H100.fabric.nic_efficiency / H100.fabric.oversubscription)
    with pytest.raises(SpecError) as err:
        tier_limit_bytes_per_s(H100, "rack")
    assert err.value.key == "tier"
