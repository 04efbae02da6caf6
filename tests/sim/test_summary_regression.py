"""The summary and the records must not change when the simulator's internals do (record storage, process
layout, memory work). tests/sim/data/summary_regression.json holds every number of summarize() and sums of
every records column for two small scenarios, computed by the simulator BEFORE the compact record log
(commit c7c285d). Regenerate it only for an intended change of a cost model, and say so in the commit:
    .venv/bin/python tests/sim/test_summary_regression.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.loader import load_scenario
from moesim.metrics.summary import summarize
from moesim.sim.simulate import simulate

DATA = Path(__file__).with_name("data") / "summary_regression.json"
# The two paths that matter for records: pipeline + tensor + expert parallelism with capacity drops, and an
# online placement policy with overlapped migrations (waits recorded mid-step).
SCENARIOS = {
    "pipeline-tp-ep": """
name: pipeline-tp-ep
cluster: {profile: dgx-h100, nodes: 1}
model: {preset: olmoe-1b-7b, num_layers: 4}
training: {global_batch_size: 16, seq_len: 1024, micro_batch_size: 1, dtype: bf16, recompute: selective,
           optimizer: {name: adam, distributed: true}}
layout: {tp: 2, pp: 2, dp: 2, ep: 2}
routing: {distribution: zipf, zipf_s: 1.0, source_sigma: 0.3}
gate: {capacity_factor: 1.0}
simulation: {steps: 3, warmup_steps: 1, seed: 3}
""",
    "flexmoe-overlapped": """
name: flexmoe-overlapped
cluster: {profile: dgx-h100, nodes: 1}
model: {preset: olmoe-1b-7b, num_layers: 2}
training: {global_batch_size: 16, seq_len: 1024, micro_batch_size: 1, dtype: bf16,
           optimizer: {name: adam, distributed: true}}
layout: {tp: 1, pp: 1, dp: 8, ep: 8}
routing: {distribution: zipf, zipf_s: 1.5, temporal: drift}
gate: {capacity_factor: null}
placement: {policy: flexmoe, slots_per_gpu: 10, migration: overlapped,
            flexmoe: {threshold: 1.05, horizon_steps: 50, history_steps: 1}}
simulation: {steps: 4, warmup_steps: 0, seed: 1}
""",
}


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> {"a.b.0": leaf}."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def fingerprint(records: pd.DataFrame) -> dict[str, object]:
    """Row count, per-column sums and an order-sensitive weighted sum: a reordering or a lost record shows."""
    weights = np.arange(1, len(records) + 1, dtype=np.float64)
    out: dict[str, object] = {"rows": len(records), "columns": list(records.columns),
                              "dtypes": [str(t) for t in records.dtypes]}
    for col in records.columns:
        values = records[col].cat.codes if isinstance(records[col].dtype, pd.CategoricalDtype) else records[col]
        x = values.to_numpy().astype(np.float64)
        out[f"sum.{col}"], out[f"weighted.{col}"] = float(x.sum()), float((x * weights).sum())
    return out


def compute(name: str, tmp_dir: Path) -> dict:
    path = tmp_dir / f"{name}.yaml"
    path.write_text(SCENARIOS[name])
    result = simulate(load_scenario(path))
    summary = {k: v for k, v in flatten(summarize(result).to_dict()).items() if not k.startswith("provenance.")}
    return {"summary": summary, "records": fingerprint(result.records)}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_summary_and_records_match_the_recorded_run(name, tmp_path):
    expected = json.loads(DATA.read_text())[name]
    got = compute(name, tmp_path)
    for part in ("summary", "records"):
        missing = sorted(set(expected[part]) - set(got[part]))  # fields added later are fine, lost ones not
        assert not missing, f"{part}: {missing}"
        for key, want in expected[part].items():
            have = got[part][key]
            if isinstance(want, float):  # rel 1e-12: exact here, tolerant of another CPU's BLAS last bits
                assert have == pytest.approx(want, rel=1e-12, abs=1e-300), f"{part}: {key}"
            else:
                assert have == want, f"{part}: {key}"


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        DATA.parent.mkdir(exist_ok=True)
        DATA.write_text(json.dumps({n: compute(n, Path(tmp)) for n in sorted(SCENARIOS)}, indent=1,
                                   sort_keys=True) + "\n")
    print(f"wrote {DATA}")
