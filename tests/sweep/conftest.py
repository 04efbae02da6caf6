"""A tiny sweep file (6 points, about 0.2 s each) shared by the sweep tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.cli import main

TINY_SWEEP = """name: tiny
cluster: {profile: dgx-h100, nodes: 1}
model: {preset: olmoe-1b-7b, num_layers: 2}
training: {global_batch_size: 8, seq_len: 512, micro_batch_size: 1}
layout: {tp: 1, pp: 1, dp: 8, ep: 8}
routing: {distribution: zipf, zipf_s: 0.0}
simulation: {steps: 1, warmup_steps: 0, seed: 0}
sweep:
  simulation.seed: [0, 1]
  zip: {routing.zipf_s: [0.5, 1.0, 1.5], gate.capacity_factor: [1.0, 1.25, null]}
"""


@pytest.fixture
def tiny_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_sweep_dir(tmp_path_factory) -> Path:
    """The tiny sweep run once (`moesim sweep --jobs 2`) for a module's tests."""
    root = tmp_path_factory.mktemp("tiny-sweep")
    (root / "tiny.yaml").write_text(TINY_SWEEP, encoding="utf-8")
    assert main(["sweep", str(root / "tiny.yaml"), "--jobs", "2", "--out", str(root / "sweep")]) == 0
    return root / "sweep"
