"""The attention efficiency table (moesim.spec.attention_efficiency) and the attention core's time
(moesim.cost.attention): the H100 table handed to the profiles reproduces FA3's published TFLOP/s (fidelity.md 3),
lookups interpolate monotonically and clamp, and a broken table is a one-line SpecError naming its key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import yaml

from moesim.cost.attention import BACKWARD_FLOP_RATIO, attention_core_time_s
from moesim.spec.attention_efficiency import ATTENTION_TABLE_KEYS, AttentionEfficiencyTable
from moesim.spec.errors import SpecError

H100_BF16_PEAK_TFLOPS = 989.4
SEQ_LENS = (512, 2048, 8192, 16384)
# fidelity.md 3, "Attention": FA3 on H100 SXM5, BF16, TFLOP/s at seq 512/2k/8k/16k, by head dim
FWD_CAUSAL = {64: (197, 371, 460, 473), 128: (292, 521, 602, 616), 256: (286, 537, 628, 642)}
FWD_FULL = {64: (333, 460, 496, 497), 128: (467, 625, 646, 648), 256: (482, 707, 746, 756)}
BWD_FULL = {64: (272, 422, 472, 474), 128: (316, 501, 559, 561)}

# the leaf handed over for hw_profiles/dgx-h100.yaml, dgx-h800.yaml, hgx-h200.yaml (compute.attention_efficiency)
H100_LEAF_YAML = """
attention_efficiency:
  seq_lens: [512, 2048, 8192, 16384]
  head_dims: [64, 128, 256]
  forward_causal:  # TFLOP/s hd64 197/371/460/473, hd128 292/521/602/616, hd256 286/537/628/642
    - [0.199111, 0.374975, 0.464928, 0.478068]
    - [0.295128, 0.526582, 0.60845, 0.6226]
    - [0.289064, 0.542753, 0.634728, 0.648878]
  backward_causal:  # TFLOP/s (derived) hd64 160.9/340.4/437.7/451.1, hd128 197.6/417.6/520.9/533.3; hd256 = hd128
    - [0.162637, 0.343999, 0.442432, 0.455944]
    - [0.199701, 0.422108, 0.526507, 0.53901]
    - [0.199701, 0.422108, 0.526507, 0.53901]
  source: "FlashAttention-3 on H100 SXM5, BF16, 16k tokens per batch, hidden 2048 (arXiv:2407.08608 Fig. 5
    forward, Fig. 6 backward; transcribed in fidelity.md 3), as fractions of the 989.4 TFLOP/s dense BF16 peak, in
    FlashAttention's FLOP convention (causal: half of 4*batch*heads*head_dim*seq^2; backward: 2.5x the forward's
    FLOPs). forward_causal: the published causal TFLOP/s. backward_causal: derived, as only non-causal backward is
    published: non-causal backward x (causal forward / non-causal forward) at the same seq and head dim; no
    backward is published for head dim 256, so its row repeats head dim 128's (what clamping would give). The
    backward numbers are a third-party transcription of Fig. 6 (fidelity.md 6: unverified). FA3 stands in for
    the kernel Megatron-Core runs through Transformer Engine, which prefers cuDNN fused attention on Hopper
    (TE get_attention_backend); calibrate"
"""


def _h100_leaf() -> dict:
    return yaml.safe_load(H100_LEAF_YAML)["attention_efficiency"]


def _h100() -> AttentionEfficiencyTable:
    return AttentionEfficiencyTable.from_yaml({k: v for k, v in _h100_leaf().items() if k != "source"},
                                              "compute.attention_efficiency")


def _bwd_causal_tflops(head_dim: int) -> tuple[float, ...]:
    """Causal backward derived as the leaf's source says; head dim 256 has no published backward: 128's."""
    hd = min(head_dim, 128)
    return tuple(b * c / f for b, c, f in zip(BWD_FULL[hd], FWD_CAUSAL[hd], FWD_FULL[hd]))


def _grid():
    return [(hd, i, s) for hd in (64, 128, 256) for i, s in enumerate(SEQ_LENS)]


# --- the H100 table -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim,i,seq", _grid())
def test_h100_table_reproduces_the_transcribed_points_at_grid_points(head_dim, i, seq):
    table = _h100()
    # 6 decimals in the file: within half a unit of the last one of the exact TFLOP/s / peak
    assert table.at(seq, head_dim, backward=False) == pytest.approx(FWD_CAUSAL[head_dim][i] / H100_BF16_PEAK_TFLOPS,
                                                                    abs=5e-7)
    assert table.at(seq, head_dim, backward=True) == pytest.approx(
        _bwd_causal_tflops(head_dim)[i] / H100_BF16_PEAK_TFLOPS, abs=5e-7)


def test_core_time_reproduces_the_published_tflops_fwd_hd128_causal_16k():
    """616 TFLOP/s: FA3's forward, head dim 128, causal, 16k tokens (hidden 2048: 16 heads, batch 1)."""
    batch, heads, hd, seq = 1, 16, 128, 16384
    flop = 4.0 * batch * heads * hd * seq * seq / 2  # FlashAttention's benchmark: causal halves the full count
    t = attention_core_time_s(flop, seq, hd, _h100(), H100_BF16_PEAK_TFLOPS * 1e12, backward=False)
    assert flop / float(t) / 1e12 == pytest.approx(616.0, rel=1e-6)


@pytest.mark.parametrize("head_dim,i,seq", _grid())
def test_core_time_at_every_grid_point_is_flop_over_peak_times_efficiency(head_dim, i, seq):
    from moesim.cost.compute import keys_per_query

    table, peak = _h100(), H100_BF16_PEAK_TFLOPS * 1e12
    heads, batch = 2048 // head_dim, 16384 // seq
    # moesim's core FLOPs (attention_flop: 2*(d_qk + d_v) per head and unmasked pair) are FlashAttention's
    flop = 2.0 * batch * seq * heads * (2 * head_dim) * keys_per_query(seq, None)
    assert flop == pytest.approx(4.0 * batch * heads * head_dim * seq**2 / 2, rel=1e-12)
    fwd = float(attention_core_time_s(flop, seq, head_dim, table, peak, backward=False))
    bwd = float(attention_core_time_s(flop, seq, head_dim, table, peak, backward=True))
    assert fwd == pytest.approx(flop / (peak * table.at(seq, head_dim, False)), rel=1e-12)
    assert flop / fwd / 1e12 == pytest.approx(FWD_CAUSAL[head_dim][i], rel=3e-6)
    assert BACKWARD_FLOP_RATIO * flop / bwd / 1e12 == pytest.approx(_bwd_causal_tflops(head_dim)[i], rel=3e-6)


# --- lookup ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True])
def test_interpolation_is_monotone_between_grid_points(backward):
    table = _h100()
    seqs = np.geomspace(512, 16384, 401)
    for hd in table.head_dims:
        along = table.efficiency(seqs, hd, backward)
        assert np.all(np.diff(along) >= 0)  # every measured row rises with seq
    dims = np.linspace(64, 256, 193)
    for seq in (512, 1000, 2048, 5000, 8192, 16384):
        along = table.efficiency(seq, dims, backward)
        for lo, hi in zip(table.head_dims, table.head_dims[1:]):
            part = along[(dims >= lo) & (dims <= hi)]
            steps = np.diff(part)
            assert np.all(steps >= -1e-15) or np.all(steps <= 1e-15)  # one direction within a cell
            assert part.min() >= min(part[0], part[-1]) - 1e-15 and part.max() <= max(part[0], part[-1]) + 1e-15


def test_interpolation_is_linear_in_log2_seq_len_and_in_head_dim():
    table = _h100()
    eff = {(hd, s): table.at(s, hd, False) for hd in (64, 128) for s in (512, 2048)}
    assert table.at(1024, 128, False) == pytest.approx((eff[128, 512] + eff[128, 2048]) / 2, rel=1e-12)
    assert table.at(2048, 96, False) == pytest.approx((eff[64, 2048] + eff[128, 2048]) / 2, rel=1e-12)
    corners = np.mean(list(eff.values()))  # bilinear: the centre of a cell is the mean of its corners
    assert table.at(1024, 96, False) == pytest.approx(corners, rel=1e-12)
    assert eff[64, 512] < table.at(1024, 96, False) < eff[128, 2048]


def test_lookups_are_clamped_at_the_table_ends():
    table = _h100()
    for backward in (False, True):
        assert table.at(1, 128, backward) == table.at(100, 128, backward) == table.at(512, 128, backward)
        assert table.at(2**24, 128, backward) == table.at(16384, 128, backward)
        assert table.at(4096, 1, backward) == table.at(4096, 32, backward) == table.at(4096, 64, backward)
        assert table.at(4096, 1024, backward) == table.at(4096, 256, backward)
        assert table.at(10**6, 1024, backward) == table.at(16384, 256, backward)
    assert table.at(0, 128, False) == table.at(512, 128, False)  # no log2(0)


def test_vectorised_lookup_and_time_broadcast_like_the_scalar_ones():
    table, peak = _h100(), 989.4e12
    seqs = np.array([[300], [700], [3000], [16384], [40000]])
    dims = np.array([32, 64, 100, 128, 192, 256, 300])
    effs = table.efficiency(seqs, dims, backward=True)
    assert effs.shape == (5, 7)
    for r, s in enumerate(seqs[:, 0]):
        for c, d in enumerate(dims):
            assert effs[r, c] == table.at(float(s), float(d), True)
    flop = np.array([0.0, 1e12, 3e12])
    t = attention_core_time_s(flop, 4096, 128, table, peak, backward=True)
    assert t[0] == 0.0 and np.allclose(t[1:], 2.5 * flop[1:] / (peak * table.at(4096, 128, True)), rtol=1e-12)


def test_constant_is_the_same_for_every_seq_head_dim_and_pass():
    table = AttentionEfficiencyTable.constant(0.45)
    for seq, hd, backward in [(1, 1, False), (512, 64, True), (131072, 192, False), (10**7, 4096, True)]:
        assert table.at(seq, hd, backward) == 0.45
    assert AttentionEfficiencyTable.from_yaml({"value": 0.45, "source": "assumption"}) == table
    t = attention_core_time_s(1e12, 8192, 128, table, 1e15, backward=True)
    assert float(t) == pytest.approx(2.5e12 / (1e15 * 0.45), rel=1e-12)


# --- bad input ------------------------------------------------------------------------------------------------

_P = "compute.attention_efficiency"


def _broken(**changes: Any) -> dict:
    leaf = _h100_leaf()
    leaf.update(changes)
    return {k: v for k, v in leaf.items() if v is not None}


@pytest.mark.parametrize("leaf,key,shows", [
    (_broken(forward_causal=[[0.2, 0.37, 0.46, 0.48], [0.3, 0.5, 0.6], [0.29, 0.54, 0.63, 0.65]]),
     f"{_P}.forward_causal[1]", "[0.3, 0.5, 0.6]"),  # ragged
    (_broken(backward_causal=[[0.2, 0.3, 0.4, 0.5]] * 2), f"{_P}.backward_causal", "3 rows"),  # a row missing
    (_broken(seq_lens=[512, 8192, 2048, 16384]), f"{_P}.seq_lens", "[512, 8192, 2048, 16384]"),
    (_broken(head_dims=[64, 64, 256]), f"{_P}.head_dims", "increasing"),
    (_broken(forward_causal=[[0.2, 0.37, 0.46, 0.48], [0.3, 1.5, 0.6, 0.62], [0.29, 0.54, 0.63, 0.65]]),
     f"{_P}.forward_causal", "[0.3, 1.5, 0.6, 0.62]"),  # above 1
    (_broken(backward_causal=[[0.2, 0.3, 0.4, 0.0]] * 3), f"{_P}.backward_causal", "[0.2, 0.3, 0.4, 0.0]"),
    (_broken(seq_lens=[512, 2048.5, 8192, 16384]), f"{_P}.seq_lens[1]", "2048.5; expected an integer"),
    (_broken(seq_lens=[]), f"{_P}.seq_lens", "non-empty"),
    (_broken(head_dims=None), f"{_P}.head_dims", "required"),
    (_broken(value=0.45), f"{_P}.seq_lens", "not both"),
    (_broken(seq_len=[512]), f"{_P}.seq_len", "did you mean 'seq_lens'"),
    ({"value": 1.2, "source": "x"}, f"{_P}.value", "in [0.001, 1.0] (fraction of peak)"),
    ([0.45], _P, "{value: <fraction of peak>"),
])
def test_a_bad_table_is_a_one_line_error_naming_its_key(leaf, key, shows):
    with pytest.raises(SpecError) as err:
        AttentionEfficiencyTable.from_yaml(leaf, _P)
    text = str(err.value)
    assert "\n" not in text and err.value.key == key, text
    assert text.startswith(f"{key}: got ") and shows in text, text


def test_direct_construction_refuses_a_ragged_table_too():
    with pytest.raises(SpecError, match=r"^forward_causal\[0\]: got \[0\.5\]; expected 2 efficiencies"):
        AttentionEfficiencyTable(seq_lens=(512, 1024), head_dims=(128,), forward_causal=((0.5,),),
                                 backward_causal=((0.4, 0.5),))
    with pytest.raises(SpecError, match=r"^seq_lens\[0\]: got true; expected an integer"):
        AttentionEfficiencyTable(seq_lens=(True, 2), head_dims=(128,), forward_causal=((0.5, 0.5),),
                                 backward_causal=((0.4, 0.5),))


# --- as a profile reads it: a `{..., source}` leaf through io's Reader -------------------------------------------


def _read_compute(doc: Mapping) -> tuple[Any, dict[str, str]]:
    """The way io/profile.py reads an efficiency leaf (its hooks), for a section holding only this table."""
    from moesim.io.document import Reader, validate
    from moesim.spec.base import SpecModel, spec_field

    class Compute(SpecModel):
        attention: AttentionEfficiencyTable = spec_field(help="the fused attention core",
                                                         yaml="attention_efficiency", unit="(fraction of peak)",
                                                         sourced=True)

    def hook(reader: Reader, leaf: Any, path: str) -> AttentionEfficiencyTable:
        if isinstance(leaf, Mapping):
            reader.source(leaf, path, ATTENTION_TABLE_KEYS)  # checks the keys, records the source
        return AttentionEfficiencyTable.from_yaml(leaf, path)

    reader = Reader(hooks={AttentionEfficiencyTable: hook})
    fields = reader.fields(Compute, doc, "compute")
    return validate(Compute, fields, doc, "compute"), reader.provenance


def test_a_profile_leaf_loads_with_its_source_as_a_table_or_a_constant():
    compute, provenance = _read_compute(yaml.safe_load(H100_LEAF_YAML))
    assert compute.attention == _h100()
    assert provenance[_P].startswith("FlashAttention-3 on H100") and "fidelity.md 3" in provenance[_P]
    compute, provenance = _read_compute({"attention_efficiency": {"value": 0.45, "source": "assumption"}})
    assert compute.attention == AttentionEfficiencyTable.constant(0.45) and provenance == {_P: "assumption"}


def test_a_profile_leaf_without_a_source_or_with_a_bad_row_names_its_key():
    leaf = {k: v for k, v in _h100_leaf().items() if k != "source"}
    with pytest.raises(SpecError, match=rf"^{_P}\.source: got null; expected this key to be present"):
        _read_compute({"attention_efficiency": leaf})
    leaf = {**_h100_leaf(), "backward_causal": [[0.2, 0.3, 0.4, 0.5], [0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.5]]}
    with pytest.raises(SpecError, match=rf"^{_P}\.backward_causal\[1\]: got \[0\.2, 0\.3, 0\.4\]; expected 4 "):
        _read_compute({"attention_efficiency": leaf})
