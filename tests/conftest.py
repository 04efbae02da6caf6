"""Shared test setup. The environment variables come first, before anything imports triton or matplotlib."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
_QUICKSTART_DOC = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))


@pytest.fixture
def quickstart_doc() -> dict:
    """scenarios/quickstart.yaml as a fresh dict that a test may mutate."""
    return copy.deepcopy(_QUICKSTART_DOC)
