"""Test oracle: the engine moesim had before its per-stage engine (moesim/sim/engine.py), one SimPy process per
rank, one scalar clock each. Slow (every op of every rank is a Python call) and simple; tests run both on the same
precomputed work and require identical records.

Per micro-batch and layer: attention (+ dense FFN, or router + shared experts) -> tensor-parallel collectives
-> dispatch all-to-all -> expert compute -> combine all-to-all; backward mirrors it. Collectives are
rendezvous: a group's collective starts when its last member arrives and every member resumes at its end
(one shared event per group, never one per message). Durations come precomputed from sim/workload.py, so
the result depends only on arrival times, never on the order SimPy resumes processes.
"""

from __future__ import annotations

import numpy as np
import simpy

from moesim.sim.engine import PlacementWork, StepContext, pipeline_schedule  # noqa: F401 - shared with the engine
from moesim.sim.records import OpKind, Phase, RecordLog


class RankLog:
    """One rank's records of one step."""

    def __init__(self, log: RecordLog, step: int, rank: int):
        self.log, self.step, self.rank = log, step, rank

    def add(self, *record) -> None:
        self.log.add(self.step, self.rank, *record)


class Rendezvous:
    """Collectives as rendezvous: `arrive` returns the group's completion event, which fires `duration_s`
    after the last of `size` members arrived."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._pending: dict[tuple, list] = {}

    def arrive(self, key: tuple, size: int, duration_s: float) -> simpy.Event:
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = [0, self.env.event()]
        entry[0] += 1
        if entry[0] == size:
            del self._pending[key]
            done = entry[1]
            self.env.timeout(duration_s).callbacks.append(lambda _event: done.succeed())
        return entry[1]

    @property
    def open_groups(self) -> int:
        return len(self._pending)


class Mailbox:
    """Point-to-point pipeline messages: the sender never blocks; the receiver waits for the arrival.
    Whichever side comes first creates the message's event; the second takes it out of the box."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._events: dict[tuple, simpy.Event] = {}

    def _take(self, key: tuple) -> simpy.Event:
        ev = self._events.pop(key, None)
        if ev is None:
            ev = self._events[key] = self.env.event()
        return ev

    def send(self, key: tuple, transfer_s: float) -> None:
        ev = self._take(key)
        self.env.timeout(transfer_s).callbacks.append(lambda _event: ev.succeed())

    def receive(self, key: tuple) -> simpy.Event:
        return self._take(key)


def simulate_step(ctx: StepContext, start_order: np.ndarray | None = None) -> float:
    """Run one step; append its records; return the step time (s). `start_order` permutes the order in
    which rank processes are created (a test uses it to show the order does not matter)."""
    env = simpy.Environment()
    rdv, mail = Rendezvous(env), Mailbox(env)
    world = ctx.sc.layout.world_size
    finish = np.zeros(world)
    order = np.arange(world) if start_order is None else np.asarray(start_order)
    for rank in order:
        env.process(_rank(env, ctx, rdv, mail, int(rank), finish))
    env.run()
    if rdv.open_groups:  # a member never arrived: a schedule bug, not user input
        raise AssertionError(f"{rdv.open_groups} collectives never completed")
    step_s = float(finish.max())
    for rank in range(world):
        if finish[rank] < step_s:
            ctx.log.add(ctx.step, rank, -1, -1, Phase.STEP, OpKind.IDLE, float(finish[rank]), step_s)
    ctx.log.flush()  # the step's per-rank buffers become columns now, before the next step's arrays are built
    return step_s


def _rank(env, ctx: StepContext, rdv: Rendezvous, mail: Mailbox, rank: int, finish: np.ndarray):
    sc, st = ctx.sc, ctx.static
    log = RankLog(ctx.log, ctx.step, rank)
    lay = sc.layout
    q_count = lay.ranks_per_stage
    stage, q = divmod(rank, q_count)
    last = stage == lay.pp - 1
    pw = ctx.placement
    if pw is not None:
        ops = ((OpKind.MIGRATION, float(pw.migration_s[stage])), (OpKind.SHADOW, float(pw.shadow_s[stage])))
        yield from _compute(env, log, -1, -1, Phase.STEP, tuple(o for o in ops if o[1] > 0))
    for phase, mb, chunk in pipeline_schedule(stage, lay.pp, sc.num_micro_batches, lay.vpp):
        # model chunk c of stage s is virtual stage c * pp + s; the last stage's chunk c feeds stage 0's c + 1
        fwd = phase is Phase.FORWARD
        layers = sc.chunk_layers(stage, chunk)
        first_chunk, head_chunk = stage == 0 and chunk == 0, last and chunk == lay.vpp - 1
        upstream = not first_chunk if fwd else not head_chunk
        if upstream:
            t0 = env.now
            yield mail.receive((rank, chunk, mb, phase))
            if env.now > t0:
                log.add(mb, -1, phase, OpKind.PP_WAIT, t0, env.now)
        if head_chunk and not fwd:
            yield from _compute(env, log, mb, -1, phase, _lm_head_ops(st.layers, phase))
        for layer in (layers if fwd else reversed(layers)):
            yield from _layer(env, ctx, rdv, log, stage, q, layer, mb, phase)
        if head_chunk and fwd:
            yield from _compute(env, log, mb, -1, phase, _lm_head_ops(st.layers, phase))
        downstream = not head_chunk if fwd else not first_chunk
        if downstream:
            world = lay.world_size
            if fwd:
                peer, peer_chunk, link_stage = (rank + q_count) % world, chunk + (1 if last else 0), stage
            else:
                peer, peer_chunk, link_stage = (rank - q_count) % world, chunk - (1 if stage == 0 else 0), \
                    (stage - 1) % lay.pp
            mail.send((peer, peer_chunk, mb, phase), float(st.p2p_s[link_stage, q]))
    yield from _collective(env, rdv, log, ("dp", stage, q % lay.tp), lay.dp_cp,
                           float(st.dp_dense_s[stage, q]), -1, -1, Phase.STEP, OpKind.DP_SYNC_DENSE,
                           float(st.grad_bytes[stage, 0]))
    yield from _collective(env, rdv, log, ("edp", stage, q % (lay.ep * lay.etp)), lay.edp,
                           float(st.dp_expert_s[stage, q]), -1, -1, Phase.STEP, OpKind.DP_SYNC_EXPERT,
                           float(st.grad_bytes[stage, 1]))
    if pw is not None and pw.replica_sync_s[stage] > 0:
        yield from _compute(env, log, -1, -1, Phase.STEP,
                            ((OpKind.REPLICA_SYNC, float(pw.replica_sync_s[stage])),))
    if st.weight_cast_s[stage].any():
        yield from _compute(env, log, -1, -1, Phase.STEP, ((OpKind.MEMORY_BOUND, float(st.weight_cast_s[stage, 0])),
                                                           (OpKind.LAUNCH, float(st.weight_cast_s[stage, 1]))))
    yield from _compute(env, log, -1, -1, Phase.STEP, ((OpKind.OPTIMIZER, float(st.optimizer_s[stage])),))
    finish[rank] = env.now


def _layer(env, ctx: StepContext, rdv: Rendezvous, log: RankLog, stage: int, q: int, layer: int, mb: int,
           phase: Phase):
    """Forward: attention (+ dense FFN | router) -> TP collectives -> dispatch -> experts -> combine.
    Backward runs the same blocks in reverse order with backward costs."""
    fwd = phase is Phase.FORWARD
    blocks = [_dense_block, _moe_block] if fwd else [_moe_block, _dense_block]
    for block in blocks:
        yield from block(env, ctx, rdv, log, stage, q, layer, mb, phase)


def _dense_block(env, ctx: StepContext, rdv: Rendezvous, log: RankLog, stage: int, q: int, layer: int,
                 mb: int, phase: Phase):
    lc, lay, fwd = ctx.static.layers, ctx.sc.layout, phase is Phase.FORWARD
    is_moe = layer in ctx.moe
    ops = [(OpKind.ATTENTION, lc.attention_fwd_s if fwd else lc.attention_bwd_s)]
    if is_moe:
        ops.append((OpKind.ROUTER, lc.router_fwd_s if fwd else lc.router_bwd_s))
    else:
        ops.append((OpKind.DENSE_FFN, lc.dense_ffn_fwd_s if fwd else lc.dense_ffn_bwd_s))
    ops.append((OpKind.MEMORY_BOUND, (lc.memory_bound_fwd_s if fwd else lc.memory_bound_bwd_s)[int(is_moe)]))
    ops.append((OpKind.LAUNCH, (lc.launch_fwd_s if fwd else lc.launch_bwd_s)[int(is_moe)]))
    yield from _compute(env, log, mb, layer, phase, ops)
    if lay.cp > 1:
        ring = (stage, q // (lay.cp * lay.tp), q % lay.tp)
        yield from _collective(env, rdv, log, ("cp", layer, mb, phase, ring), lay.cp,
                               float(ctx.static.cp_comm_s[stage, q, int(not fwd)]), mb, layer, phase, OpKind.CP_COMM,
                               ctx.static.cp_bytes[int(not fwd)])
    if lay.tp > 1:
        yield from _collective(env, rdv, log, ("tp", layer, mb, phase, stage, q // lay.tp),
                               lay.tp, float(ctx.static.tp_comm_s[stage, q, int(is_moe)]), mb, layer, phase,
                               OpKind.TP_COMM)


def _moe_block(env, ctx: StepContext, rdv: Rendezvous, log: RankLog, stage: int, q: int, layer: int,
               mb: int, phase: Phase):
    moe = ctx.moe.get(layer)
    if moe is None:
        return
    lay = ctx.sc.layout
    group = (stage, q // (lay.ep * lay.etp), q % lay.etp)
    ready = ctx.placement.layer_ready_s.get(layer, 0.0) if ctx.placement is not None else 0.0
    if env.now < ready:  # an overlapped migration has not delivered this layer's experts yet
        log.add(mb, layer, phase, OpKind.MIGRATION, env.now, ready)
        yield env.timeout(ready - env.now)
    nbytes = float(moe.sent_bytes[mb, q])
    yield from _collective(env, rdv, log, ("dispatch", layer, mb, phase, group), lay.ep,
                           float(moe.dispatch_s[mb, q]), mb,
                           layer, phase, OpKind.DISPATCH, nbytes, int(moe.sent_rows[mb, q]))
    expert_s = float(moe.expert_fwd_s[mb, q]) if phase is Phase.FORWARD else float(
        moe.expert_bwd_s[mb, q] + moe.expert_fwd_s[mb, q] * ctx.static.layers.expert_rerun_fwd)
    yield from _compute(env, log, mb, layer, phase,
                        ((OpKind.EXPERT, expert_s),), rows=int(moe.expert_rows[mb, q]))
    lc = ctx.static.layers
    row_s = lc.expert_row_memory_bound_s if phase is Phase.FORWARD else lc.expert_row_memory_bound_bwd_s
    yield from _compute(env, log, mb, layer, phase,
                        ((OpKind.MEMORY_BOUND, float(moe.computed_rows[mb, q])
                          * row_s),))
    yield from _collective(env, rdv, log, ("combine", layer, mb, phase, group), lay.ep,
                           float(moe.combine_s[mb, q]), mb,
                           layer, phase, OpKind.COMBINE, nbytes, int(moe.returned_rows[mb, q]))


def _lm_head_ops(lc, phase: Phase) -> tuple:
    fwd = phase is Phase.FORWARD
    memory_bound, launch = lc.lm_head_extra_fwd_s if fwd else lc.lm_head_extra_bwd_s
    return ((OpKind.LM_HEAD, lc.lm_head_fwd_s if fwd else lc.lm_head_bwd_s), (OpKind.MEMORY_BOUND, memory_bound),
            (OpKind.LAUNCH, launch))


def _compute(env, log: RankLog, mb: int, layer: int, phase: Phase, ops, rows: int = 0):
    """Back-to-back compute ops as ONE timeout; each still gets its own record."""
    t = env.now
    total = 0.0
    for op, seconds in ops:
        log.add(mb, layer, phase, op, t + total, t + total + seconds, 0.0, rows)
        total += seconds
    if total > 0:
        yield env.timeout(total)


def _collective(env, rdv: Rendezvous, log: RankLog, key: tuple, size: int, duration_s: float, mb: int,
                layer: int, phase: Phase, op: OpKind, nbytes: float = 0.0, rows: int = 0):
    t0 = env.now
    if size > 1:
        yield rdv.arrive(key, size, duration_s)
    elif duration_s > 0:
        yield env.timeout(duration_s)
    wait_s = max(0.0, env.now - duration_s - t0)  # the group started when its last member arrived
    log.add(mb, layer, phase, op, t0, env.now, nbytes, rows, wait_s)
