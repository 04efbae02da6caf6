"""Megatron-LM's pipeline schedules as pure orders, and what they keep in flight (no simpy: the engine replays
these orders, the memory model counts what they hold).

A pass is (forward, micro_batch, chunk): `forward` True for a forward, False for a backward; `chunk` is the model
chunk of the stage (0 .. vpp - 1; model chunk c of stage s is virtual stage c·pp + s, moesim.spec.scenario).

- vpp = 1, plain 1F1B (Megatron forward_backward_pipelining_without_interleaving): stage s runs
  min(pp - s - 1, m) warm-up forwards, then one forward and one backward in turn, then the remaining backwards.
- vpp > 1, interleaved 1F1B (forward_backward_pipelining_with_interleaving, microbatch_group_size_per_vp_stage =
  pp, its default): forwards go through the micro-batches in groups of pp, each group through chunk 0, then
  chunk 1, ...; backwards in the same order with the chunks reversed. Stage s runs 2·(pp - s - 1) + (vpp - 1)·pp
  warm-up forwards (all m·vpp passes if that is as many), then a forward and a backward in turn, then the rest.

Bubble (Narayanan et al., SC'21), with uniform stages and no communication: (pp - 1)/m of the ideal time for
1F1B, (pp - 1)/(vpp·m) interleaved (tests/sim/test_pipeline_schedules.py reproduces both).
"""

from __future__ import annotations

Pass = tuple[bool, int, int]  # (forward, micro-batch, model chunk)


def warmup_passes(stage: int, num_stages: int, num_micro_batches: int, num_chunks: int = 1) -> int:
    """Forwards stage `stage` runs before its first backward (Megatron's num_warmup_microbatches)."""
    total = num_micro_batches * num_chunks
    if num_chunks == 1:
        return min(num_stages - stage - 1, total)
    return min(2 * (num_stages - stage - 1) + (num_chunks - 1) * num_stages, total)


def chunks_in_flight(stage: int, num_stages: int, num_micro_batches: int, num_chunks: int = 1) -> int:
    """Most (micro-batch, chunk) forwards stage `stage` holds whose backward has not run: the warm-up and the
    first steady-state forward. 1F1B: min(pp - s, m). Interleaved: min(2·(pp - s - 1) + (vpp - 1)·pp + 1, m·vpp),
    each holding the stage's layers / vpp: the first stage holds pp + (pp - 1)/vpp micro-batches' worth
    = pp·(1 + (pp - 1)/(pp·vpp)) (Narayanan et al.; Korthikanti et al. 2022 §4)."""
    warmup = warmup_passes(stage, num_stages, num_micro_batches, num_chunks)
    return min(warmup + 1, num_micro_batches * num_chunks)


def schedule(stage: int, num_stages: int, num_micro_batches: int, num_chunks: int = 1) -> list[Pass]:
    """The order of stage `stage`'s passes in one step (module docstring)."""
    forwards = _forward_order(num_micro_batches, num_chunks, num_stages)
    backwards = [(False, mb, num_chunks - 1 - chunk) for _, mb, chunk in forwards]
    warmup = warmup_passes(stage, num_stages, num_micro_batches, num_chunks)
    order = forwards[:warmup]
    for k in range(len(forwards) - warmup):
        order += [forwards[warmup + k], backwards[k]]
    return order + backwards[len(forwards) - warmup:]


def _forward_order(num_micro_batches: int, num_chunks: int, group: int) -> list[Pass]:
    """Megatron's get_schedule_table: micro-batches in groups of `group`, each group through every chunk in turn
    (the last group takes the remaining micro-batches). One chunk: micro-batches in order."""
    if num_chunks == 1:
        return [(True, mb, 0) for mb in range(num_micro_batches)]
    order: list[Pass] = []
    for lo in range(0, num_micro_batches, group):
        hi = num_micro_batches if lo + group >= num_micro_batches else lo + group
        order += [(True, mb, chunk) for chunk in range(num_chunks) for mb in range(lo, hi)]
    return order


def peak_chunk_counts(order: list[Pass], num_chunks: int) -> list[tuple[int, ...]]:
    """The candidates for a stage's activation peak: after each forward, how many passes of each chunk are in
    flight (forward run, backward not yet); only the vectors no other one covers element by element."""
    held = [0] * num_chunks
    seen: set[tuple[int, ...]] = set()
    for forward, _, chunk in order:
        held[chunk] += 1 if forward else -1
        if forward:
            seen.add(tuple(held))
    return sorted(v for v in seen
                  if not any(w != v and all(a >= b for a, b in zip(w, v)) for w in seen))
