"""The public placement API: what `moesim.placement` exports, a context without a Scenario, `replay`, and the
snippet in docs/placement.md (run as it stands, so the doc cannot rot)."""

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import moesim.placement as mp
from moesim.spec.errors import SpecError
from moesim.spec.placement import PlacementPolicyKind, PlacementSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "placement.md"


def doc_snippet() -> str:
    """The first python block of the doc's 'Calling a policy from Python' section."""
    text = DOC.read_text()
    section = text[text.index("## Calling a policy from Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/placement.md lost its python snippet"
    return match.group(1)


def test_the_doc_snippet_runs_and_prints_what_the_doc_says():
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(doc_snippet(), str(DOC), "exec"), namespace)
    run = namespace["run"]
    ratios = run.balance_ratio()
    assert len(ratios) == 20 and out.getvalue().strip().startswith("[")
    # the doc: 2.76-2.77 before the first rebalance (step 5), 1.002-1.006 after it
    assert np.all((ratios[:5] > 2.755) & (ratios[:5] < 2.775)), ratios
    assert np.all((ratios[5:] > 1.0015) & (ratios[5:] < 1.0065)), ratios


def test_import_stays_free_of_simpy_torch_and_matplotlib():
    code = ("import sys, moesim.placement; "
            "print(sorted(m for m in ('simpy', 'torch', 'matplotlib', 'streamlit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_everything_exported_exists():
    for name in mp.__all__:
        assert hasattr(mp, name), name
    for params_cls, policy_cls in mp.POLICIES.values():
        assert getattr(mp, params_cls.__name__) is params_cls and getattr(mp, policy_cls.__name__) is policy_cls


def test_uniform_context_defaults_and_overrides():
    ctx = mp.PlacementContext.uniform(num_experts=64, num_ranks=16)
    assert ctx.slots_per_rank == 4 and ctx.node_of_rank.tolist() == [0] * 8 + [1] * 8
    bw = ctx.bandwidth_bytes_per_s
    assert bw[0, 7] == pytest.approx(369e9) and bw[0, 8] == pytest.approx(47.5e9)  # dgx-h100: NVLink, NIC
    params = 3 * 7168 * 2048  # a DeepSeek-V3 expert, SwiGLU
    assert ctx.row_bytes == 7168 * 2 and ctx.expert_weight_bytes == params * 2
    assert ctx.expert_state_bytes == params * (2 + 16)
    assert ctx.row_compute_s == pytest.approx(3 * 2 * params / (989.4e12 * 0.8))
    small = mp.PlacementContext.uniform(8, 4, slots_per_rank=3, gpus_per_node=2, nic_bytes_per_s=1e9,
                                        hidden_size=1024, expert_ffn_size=512)
    assert small.bandwidth_bytes_per_s[0, 2] == 1e9 and small.row_bytes == 2048
    with pytest.raises(SpecError, match="num_experts"):
        mp.PlacementContext.uniform(num_experts=10, num_ranks=4)
    with pytest.raises(SpecError, match="slots_per_rank"):
        mp.PlacementContext.uniform(num_experts=16, num_ranks=4, slots_per_rank=3)
    with pytest.raises(SpecError, match="num_ranks"):
        mp.PlacementContext.uniform(num_experts=16, num_ranks=0)


def test_make_policy_by_name_kind_or_spec():
    ctx = mp.PlacementContext.uniform(num_experts=16, num_ranks=4, slots_per_rank=6)
    assert isinstance(mp.make_policy("smartmoe", ctx), mp.SmartMoePolicy)
    eplb = mp.make_policy(PlacementPolicyKind.EPLB, ctx, mp.EplbParams(redundant_experts=8))
    assert isinstance(eplb, mp.EplbPolicy) and eplb.num_phy == 24
    spec = PlacementSpec(policy=PlacementPolicyKind.FLEXMOE, params=mp.FlexMoeParams(threshold=1.5))
    assert mp.make_policy(spec, ctx).params.threshold == 1.5
    with pytest.raises(SpecError, match="policy: got 'eplbx'; expected one of static"):
        mp.make_policy("eplbx", ctx)
    with pytest.raises(SpecError, match="EplbParams"):
        mp.make_policy("eplb", ctx, mp.SmartMoeParams())


def test_replay_runs_every_policy_and_keeps_tokens():
    ctx = mp.PlacementContext.uniform(num_experts=16, num_ranks=4, slots_per_rank=6, gpus_per_node=2)
    rng = np.random.default_rng(0)
    loads = rng.multinomial(4096, np.arange(16, 0, -1) / 136, size=(6, 2, 4)).astype(float)  # [T, M, G, E]
    for kind in PlacementPolicyKind:
        run = mp.replay(mp.make_policy(kind, ctx), loads)
        assert len(run.placements) == 6 and run.loads.shape == loads.shape
        assert run.rank_load().sum(-1) == pytest.approx(run.loads.sum(axis=(1, 2, 3)))
        assert run.balance_ratio().shape == (6,) and run.changes() >= 0
        for placement in run.placements:
            placement.validate(16, ctx.slots_per_rank)
    assert not np.allclose(mp.replay(mp.make_policy("ta_moe", ctx), loads).loads, loads)  # routing-side


def test_replay_rejects_loads_that_do_not_fit_the_context():
    policy = mp.make_policy("static", mp.PlacementContext.uniform(num_experts=16, num_ranks=4))
    with pytest.raises(SpecError, match="loads"):
        mp.replay(policy, np.ones((3, 4, 8)))  # 8 experts, the context has 16
    with pytest.raises(SpecError, match="loads"):
        mp.replay(policy, np.ones((4, 16)))  # no step axis
    with pytest.raises(SpecError, match="loads"):
        mp.replay(policy, -np.ones((1, 4, 16)))
