"""Fraction of peak the fused attention core (FlashAttention, cuDNN fused attention) reaches, as a table over the
sequence length and head dimension, one table for the forward and one for the backward pass, both causal.

In a profile (`compute.attention_efficiency`), a measured table::

    {seq_lens: [512, 2048, ...], head_dims: [64, 128, ...],
     forward_causal: [[...one efficiency per seq_len...], ...one row per head_dim...],
     backward_causal: [[...], ...], source: "..."}

or the constant of older profiles, `{value: 0.45, source: "..."}` (every seq_len, head_dim and pass alike).
`AttentionEfficiencyTable.from_yaml` reads either leaf (without its `source`, which io records); the FLOP
convention the efficiencies assume is moesim.cost.attention's (FlashAttention's benchmark convention)."""

from __future__ import annotations

from typing import Annotated, Any
from collections.abc import Mapping

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from moesim.spec.base import LISTS_AS_TUPLES, SpecModel, field_meta, spec_field
from moesim.spec.bounds import FRACTION, MAX_HEADS, MAX_SEQ_LEN, MIN_EFFICIENCY
from moesim.spec.errors import SpecError, require
from moesim.spec.render import REQUIRED, join, spec_error, unknown_key

_Efficiency = Annotated[float, Field(ge=MIN_EFFICIENCY, le=1.0)]
_Rows = Annotated[tuple[tuple[_Efficiency, ...], ...], LISTS_AS_TUPLES]
_ROWS_EXPECTED = (f"a list of rows, one per head_dims entry, each a list of efficiencies (fractions of peak in "
                  f"[{MIN_EFFICIENCY:g}, 1]), one per seq_lens entry")


def _increasing(values: tuple) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


class AttentionEfficiencyTable(SpecModel):
    """Fraction of the bf16 peak the fused attention core reaches, causal mask, per (head_dim, seq_len), forward
    and backward. Looked up bilinearly in (log2 seq_len, head_dim), clamped at the table's ends. A 1 x 1 table is
    a constant (`constant`)."""

    seq_lens: Annotated[tuple[Annotated[int, Field(ge=1, le=MAX_SEQ_LEN)], ...], LISTS_AS_TUPLES] = spec_field(
        help="sequence lengths the table was measured at: causal attention over this many tokens (a query sees "
             "s/2 keys on average)", unit="tokens", min_length=1,
        expected=f"a non-empty list of sequence lengths in tokens, increasing, each an integer in [1, {MAX_SEQ_LEN}]")
    head_dims: Annotated[tuple[Annotated[int, Field(ge=1, le=MAX_HEADS)], ...], LISTS_AS_TUPLES] = spec_field(
        help="head dimensions (width of one query/key/value head) the table was measured at",
        unit="(elements per head)", min_length=1,
        expected=f"a non-empty list of head dimensions, increasing, each an integer in [1, {MAX_HEADS}]")
    forward_causal: _Rows = spec_field(
        help="forward pass, causal mask: one row per head_dims entry, one fraction of peak per seq_lens entry",
        unit="(fraction of peak)", min_length=1, expected=_ROWS_EXPECTED)
    backward_causal: _Rows = spec_field(
        help="backward pass (dQ, dK, dV; 2.5x the forward's FLOPs), causal mask: one row per head_dims entry, one "
             "fraction of peak per seq_lens entry", unit="(fraction of peak)", min_length=1, expected=_ROWS_EXPECTED)

    @field_validator("seq_lens", "head_dims")
    @classmethod
    def _ordered(cls, values: tuple, info: Any) -> tuple:
        meta = field_meta(info.field_name, cls.model_fields[info.field_name])
        require(_increasing(values), "", list(values), meta.expected or "an increasing list")
        return values

    @model_validator(mode="after")
    def _shapes(self) -> AttentionEfficiencyTable:
        for name in ("forward_causal", "backward_causal"):
            rows = getattr(self, name)
            require(len(rows) == len(self.head_dims), name, [list(r) for r in rows],
                    f"{len(self.head_dims)} rows, one per head_dims entry, each with {len(self.seq_lens)} "
                    f"efficiencies, one per seq_lens entry")
            for i, row in enumerate(rows):
                require(len(row) == len(self.seq_lens), f"{name}[{i}]", list(row),
                        f"{len(self.seq_lens)} efficiencies, one per seq_lens entry {list(self.seq_lens)}")
        return self

    @staticmethod
    def constant(efficiency: float) -> AttentionEfficiencyTable:
        """The same efficiency for every seq_len, head_dim and pass (today's single `attention_efficiency`)."""
        row = ((float(efficiency),),)
        return AttentionEfficiencyTable(seq_lens=(1,), head_dims=(1,), forward_causal=row, backward_causal=row)

    def efficiency(self, seq_len: Any, head_dim: Any, backward: bool = False) -> np.ndarray:
        """Vectorised lookup: seq_len and head_dim broadcast against each other. Linear in log2(seq_len) along
        each measured head_dim row, then linear in head_dim between rows (bilinear); clamped at the ends."""
        rows = np.asarray(self.backward_causal if backward else self.forward_causal, dtype=np.float64)
        seq_axis = np.log2(np.asarray(self.seq_lens, dtype=np.float64))
        x = np.log2(np.clip(np.asarray(seq_len, dtype=np.float64), self.seq_lens[0], self.seq_lens[-1]))
        hd = np.clip(np.asarray(head_dim, dtype=np.float64), self.head_dims[0], self.head_dims[-1])
        x, hd = np.broadcast_arrays(x, hd)
        along_seq = np.stack([np.interp(x, seq_axis, row) for row in rows])  # [head_dims, *shape]
        if len(self.head_dims) == 1:
            return along_seq[0]
        dims = np.asarray(self.head_dims, dtype=np.float64)
        i = np.clip(np.searchsorted(dims, hd, side="right") - 1, 0, len(dims) - 2)
        w = (hd - dims[i]) / (dims[i + 1] - dims[i])
        lo = np.take_along_axis(along_seq, i[None], axis=0)[0]
        hi = np.take_along_axis(along_seq, (i + 1)[None], axis=0)[0]
        return lo + w * (hi - lo)

    def at(self, seq_len: float, head_dim: float, backward: bool) -> float:
        """The efficiency of one attention core: causal over seq_len tokens, heads head_dim wide."""
        return float(self.efficiency(seq_len, head_dim, backward))

    @classmethod
    def from_yaml(cls, leaf: Any, path: str = "") -> AttentionEfficiencyTable:
        """The table from its profile leaf as written (lists, human keys): the table keys, or `value` for a
        constant. `source` is allowed and not read: io checks and records it (Reader.source). Errors are one
        line naming `path`.<key> and showing the value as written."""
        if not isinstance(leaf, Mapping):
            raise SpecError(path, leaf, LEAF_FORM)
        keys = {field_meta(name, info).key: name for name, info in cls.model_fields.items()}
        allowed = {*keys, *ATTENTION_TABLE_FILE_KEYS, "source"}
        for key, value in leaf.items():
            if not isinstance(key, str) or key not in allowed:
                raise unknown_key(path, str(key), value, allowed)
        given = [key for key in keys if key in leaf]
        if "value" in leaf:
            if given:
                raise SpecError(join(path, given[0]), leaf[given[0]],
                                f"either value or the table ({', '.join(keys)}), not both")
            return cls.constant(_validate(AttentionTableFileKeys, {"value": leaf["value"]}, leaf, path).value)
        for key in keys:
            if key not in leaf:
                raise SpecError(join(path, key), None, f"{REQUIRED}; or value: <fraction of peak> for a constant")
        return _validate(cls, {name: leaf[key] for key, name in keys.items()}, leaf, path)


class AttentionTableFileKeys(SpecModel):
    """The profile keys of an attention efficiency leaf beyond the table's own fields (as CurveFileKeys is for
    an EfficiencyCurve): the constant form."""

    value: float = spec_field(help="a constant efficiency for every seq_len, head_dim and pass (instead of the "
                                   "table)", unit="(fraction of peak)", **FRACTION)


# every key an attention efficiency leaf may hold besides `source`
ATTENTION_TABLE_FILE_KEYS = tuple(AttentionTableFileKeys.model_fields)
ATTENTION_TABLE_KEYS = (*(field_meta(n, i).key for n, i in AttentionEfficiencyTable.model_fields.items()),
                        *ATTENTION_TABLE_FILE_KEYS)
LEAF_FORM = ('{value: <fraction of peak>, source: "..."} or {seq_lens: [tokens, ...], head_dims: [...], '
             'forward_causal: [[efficiency per seq_len], ...one row per head_dim], backward_causal: [[...], ...], '
             'source: "..."}')


def _validate(model: type[SpecModel], data: dict, leaf: Mapping, path: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise spec_error(err, model, leaf, path) from None
