"""What CPU calibration operands rotate through and its FFN timings flush: twice the last-level cache sysfs reports
(at least 64 MiB), recorded in host.json so that the speed check re-times the samples the same way."""

import json

from moesim.calibration import compute as cm
from moesim.calibration.drift import calibrated_cache_bytes

MiB = 1 << 20


def _sysfs(tmp_path, sizes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    return tmp_path


def test_the_largest_cache_is_read_from_sysfs(tmp_path):
    assert cm.device_cache_bytes("cpu", _sysfs(tmp_path / "a", ["48K", "32K", "2048K", "491520K"])) == 491520 * 1024
    assert cm.device_cache_bytes("cpu", _sysfs(tmp_path / "b", ["32k", "1M", "4096"])) == 1 << 20
    assert cm.device_cache_bytes("cpu", _sysfs(tmp_path / "c", ["", "unknown", "12Q"])) is None
    odd = _sysfs(tmp_path / "d", ["1M"])
    (odd / "index9" / "size").mkdir(parents=True)  # unreadable as a file: skipped, not raised
    (odd / "index8").mkdir()
    (odd / "index8" / "size").write_bytes(b"\xff\xfe")
    assert cm.device_cache_bytes("cpu", odd) == 1 << 20
    assert cm.device_cache_bytes("cpu", tmp_path / "nowhere") is None


def test_cpu_operands_rotate_through_twice_the_last_level_cache():
    xeon, epyc = 480 * MiB, 32 * MiB
    assert cm.compute_plan("cpu", False, xeon).cache_bytes == 960 * MiB
    assert cm.attention_plan("cpu", False, xeon).cache_bytes == 960 * MiB
    assert cm.compute_plan("cpu", False, epyc).cache_bytes == 64 * MiB  # twice 32 MiB
    assert cm.compute_plan("cpu", False, 16 * MiB).cache_bytes == 64 * MiB  # the floor
    assert cm.compute_plan("cpu", False, 10 << 30).cache_bytes == 2048 * MiB  # the ceiling
    assert cm.compute_plan("cpu", False, None).cache_bytes == 64 * MiB
    assert cm.compute_plan("cpu", True, xeon).cache_bytes == 64 * MiB  # quick keeps its seconds


def test_the_speed_check_flushes_what_the_calibration_flushed(tmp_path):
    samples = tmp_path / "p.samples"
    samples.mkdir()
    profile = tmp_path / "p.yaml"
    assert calibrated_cache_bytes(profile, "p.samples") == 64 * MiB  # no host.json: an older calibration's 64 MiB
    (samples / "host.json").write_text(json.dumps({"compute": {"cache_bytes": 960 * MiB}}))
    assert calibrated_cache_bytes(profile, "p.samples") == 960 * MiB
    (samples / "host.json").write_text(json.dumps({"compute": {"mode": "full"}}))
    assert calibrated_cache_bytes(profile, "p.samples") == 64 * MiB
