"""The Profiles page (AppTest, no browser): collective bandwidth grows with the message size up to the tier's link
limit, NVLink beats the NIC, GEMMs reach more of the peak as they grow, and a second profile is drawn beside the
first."""

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.network.bandwidth import tier_limit_bytes_per_s
from moesim.spec.dtype import Dtype

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "profiles.py")


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def _busbw_GBps(at, profile: str) -> float:
    """The metric 'busbw at <size>' of `profile`, in GB/s."""
    metric = next(m for m in at.metric if m.label.startswith(f"{profile}: busbw"))
    value, unit = metric.value.split()
    assert unit == "GB/s"
    return float(value)


def _table(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _gemm(at):
    """The GEMM values: TFLOP/s, one column per profile, one row per M."""
    return next(d.value for d in at.dataframe if d.value.index.name == "M")


def test_bus_bandwidth_grows_with_the_message_up_to_the_link_and_nvlink_beats_the_nic():
    at = _page()
    h100 = load_profile(PROFILE_DIR / "dgx-h100.yaml")
    small = _busbw_GBps(at, "dgx-h100")  # 1 MiB
    at.select_slider(key="coll_size").set_value(2.0**30).run()
    large = _busbw_GBps(at, "dgx-h100")
    limit_GBps = tier_limit_bytes_per_s(h100, "intra_node") / 1e9
    assert small < large <= limit_GBps * (1 + 1e-9)
    assert large > 0.95 * limit_GBps  # a 1 GiB all-to-all is bandwidth-bound
    curve = _table(at, "busbw (GB/s)")
    assert curve["busbw (GB/s)"].is_monotonic_increasing
    assert curve["busbw (GB/s)"].max() <= limit_GBps * (1 + 1e-9)
    at.radio(key="coll_tier").set_value("inter_node").run()
    assert not at.exception
    nic = _busbw_GBps(at, "dgx-h100")
    assert nic < large
    assert nic <= tier_limit_bytes_per_s(h100, "inter_node") / 1e9 * (1 + 1e-9)


def test_gemm_rate_grows_with_its_rows_up_to_the_models_ceiling():
    at = _page()
    rate = _gemm(at)["dgx-h100"]
    assert rate.is_monotonic_increasing and rate.iloc[-1] > 10 * rate.iloc[0]
    h100 = load_profile(PROFILE_DIR / "dgx-h100.yaml")
    assert rate.iloc[-1] <= h100.gpu.peak_flop_per_s[Dtype.BF16] * h100.efficiency.gemm / 1e12 * (1 + 1e-9)


def test_a_second_profile_is_shown_beside_the_first():
    at = _page()
    at.selectbox(key="compare").set_value("dgx-a100").run()
    assert not at.exception
    assert {"dgx-h100", "dgx-a100"} <= set(_table(at, "busbw (GB/s)")["profile"])
    assert _busbw_GBps(at, "dgx-a100") > 0 and _busbw_GBps(at, "dgx-h100") > 0
    at.select_slider(key="coll_size").set_value(2.0**30).run()
    assert _busbw_GBps(at, "dgx-a100") < _busbw_GBps(at, "dgx-h100")  # NVLink 3 against NVLink 4
    gemm = _gemm(at)
    assert gemm["dgx-a100"].iloc[-1] < gemm["dgx-h100"].iloc[-1]
    # a calibrated profile without the chosen dtype's peak: its compute rates are left out, said in one line
    at.selectbox(key="compare").set_value("cpu-gloo-2c").run()
    assert not at.exception
    assert any("cpu-gloo-2c has no bf16 peak" in i.value for i in at.info)
    assert "cpu-gloo-2c" in set(_table(at, "busbw (GB/s)")["profile"])
