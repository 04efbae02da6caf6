"""The SimPy engine: one process per pipeline stage replays Megatron's 1F1B schedule of one training step for all
of the stage's ranks at once.

Per micro-batch and layer: attention (+ dense FFN, or router + shared experts) -> tensor-parallel collectives
-> dispatch all-to-all -> expert compute -> combine all-to-all; backward mirrors it. A stage's ranks run the same
op sequence and differ only in durations and arrival times, so a stage's process carries `t`, the vector of its
ranks' clocks (seconds since the step start): compute adds each rank's duration; a collective (TP, EP, DP and
expert-DP groups all lie inside one stage) ends for every member at the group's last arrival plus its duration.
Only pipeline messages cross stages: SimPy events whose value is the vector of per-rank arrival times. A
stage's SimPy clock follows its earliest rank, so SimPy orders the stages' interplay; durations come precomputed
from sim/workload.py, and the result depends only on arrival times, never on the order SimPy resumes processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from moesim.sim.records import OpKind, Phase, RecordBlock, RecordLog
from moesim.sim.workload import MoeLayerWork, StaticWork
from moesim.spec.scenario import Scenario


class Mailbox:
    """Pipeline messages between stages: the sender never blocks; the receiver waits for the arrival. Whichever
    side comes first creates the message's event; the second takes it out of the box. A message's value is the
    vector of its arrival times per rank; its event fires when the first of them has arrived."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._events: dict[tuple, simpy.Event] = {}

    def _take(self, key: tuple) -> simpy.Event:
        ev = self._events.pop(key, None)
        if ev is None:
            ev = self._events[key] = self.env.event()
        return ev

    def send(self, key: tuple, arrival_s: np.ndarray) -> None:
        ev = self._take(key)
        self.env.timeout(float(arrival_s.min()) - self.env.now).callbacks.append(lambda _e: ev.succeed(arrival_s))

    def receive(self, key: tuple) -> simpy.Event:
        return self._take(key)

    @property
    def undelivered(self) -> int:
        return len(self._events)


def one_f_one_b(stage: int, num_stages: int, num_micro_batches: int) -> list[tuple[Phase, int]]:
    """Megatron's non-interleaved 1F1B order for one stage: warm-up forwards, steady 1F1B, cool-down."""
    warmup = min(num_stages - stage - 1, num_micro_batches)
    order = [(Phase.FORWARD, i) for i in range(warmup)]
    for i in range(num_micro_batches - warmup):
        order += [(Phase.FORWARD, warmup + i), (Phase.BACKWARD, i)]
    order += [(Phase.BACKWARD, i) for i in range(num_micro_batches - warmup, num_micro_batches)]
    return order


@dataclass
class PlacementWork:
    """This step's placement costs (seconds): blocking work at the start of the step, per stage; the time after
    the step start when an overlapped migration has delivered a layer's experts; per-stage replica syncs."""

    migration_s: np.ndarray  # [pp] blocking migrations of the stage's layers, one after another
    shadow_s: np.ndarray  # [pp] shadow weight broadcast + gradient reduce
    replica_sync_s: np.ndarray  # [pp]
    layer_ready_s: dict[int, float]  # layer -> overlapped migration done


@dataclass
class StepContext:
    sc: Scenario
    static: StaticWork
    moe: dict[int, MoeLayerWork]  # global layer index -> this step's MoE work
    step: int
    log: RecordLog
    placement: PlacementWork | None = None


def simulate_step(ctx: StepContext, start_order: np.ndarray | None = None) -> float:
    """Run one step; append its records; return the step time (s). `start_order` permutes the order in
    which the stages' processes are created (a test uses it to show the order does not matter)."""
    env = simpy.Environment()
    mail = Mailbox(env)
    lay = ctx.sc.layout
    finish = np.zeros((lay.pp, lay.ranks_per_stage))
    blocks = [ctx.log.block(ctx.step, s * lay.ranks_per_stage, lay.ranks_per_stage) for s in range(lay.pp)]
    order = np.arange(lay.pp) if start_order is None else np.asarray(start_order)
    for stage in order:
        env.process(_Stage(env, ctx, mail, int(stage), blocks[int(stage)]).run(finish))
    env.run()
    if mail.undelivered:  # a message nobody sent or received: a schedule bug, not user input
        raise AssertionError(f"{mail.undelivered} pipeline messages never delivered")
    step_s = float(finish.max())
    for stage, blk in enumerate(blocks):
        idle = finish[stage] < step_s
        if idle.any():
            blk.add(-1, -1, Phase.STEP, OpKind.IDLE, finish[stage], step_s, keep=idle)
    ctx.log.flush()  # the step's blocks become columns now, before the next step's arrays are built
    return step_s


def _group_end(t: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Each rank's group's last arrival, where the stage's ranks reshaped to `shape` form groups along `axis`."""
    return np.broadcast_to(t.reshape(shape).max(axis=axis, keepdims=True), shape).reshape(-1)


class _Stage:
    """One pipeline stage's ranks, q = 0 .. ranks_per_stage - 1 (q = tp_rank + tp * (cp_rank + cp * dp_rank)
    = etp_rank + etp * (ep_rank + ep * edp_rank), moesim.sim.workload)."""

    def __init__(self, env: simpy.Environment, ctx: StepContext, mail: Mailbox, stage: int, log: RecordBlock):
        self.env, self.ctx, self.mail, self.stage, self.log = env, ctx, mail, stage, log
        lay = ctx.sc.layout
        q = lay.ranks_per_stage
        # collective groups as (shape, axis) over the stage's ranks
        self.tp_group = ((q // lay.tp, lay.tp), 1)  # q // tp
        self.ep_group = ((lay.edp, lay.ep, lay.etp), 1)  # (q // (ep * etp), q % etp)
        self.cp_group = ((lay.dp, lay.cp, lay.tp), 1)  # (q // (cp * tp), q % tp)
        self.dp_group = ((lay.dp_cp, lay.tp), 0)  # q % tp
        self.edp_group = ((lay.edp, lay.ep * lay.etp), 0)  # q % (ep * etp)

    def run(self, finish: np.ndarray):
        ctx, st, stage = self.ctx, self.ctx.static, self.stage
        sc, lay = ctx.sc, ctx.sc.layout
        layers = range(stage * sc.layers_per_stage, (stage + 1) * sc.layers_per_stage)
        last = stage == lay.pp - 1
        t = np.zeros(lay.ranks_per_stage)
        pw = ctx.placement
        if pw is not None:
            ops = ((OpKind.MIGRATION, float(pw.migration_s[stage])), (OpKind.SHADOW, float(pw.shadow_s[stage])))
            t = self._compute(t, -1, -1, Phase.STEP, tuple(o for o in ops if o[1] > 0))
        for phase, mb in one_f_one_b(stage, lay.pp, sc.num_micro_batches):
            fwd = phase is Phase.FORWARD
            if stage > 0 if fwd else not last:  # upstream
                arrival = yield self.mail.receive((stage, mb, phase))
                waited = arrival > t
                if waited.any():
                    self.log.add(mb, -1, phase, OpKind.PP_WAIT, t, arrival, keep=waited)
                    t = np.where(waited, arrival, t)
            if last and not fwd:
                t = self._compute(t, mb, -1, phase, self._lm_head_ops(phase))
            for layer in (layers if fwd else reversed(layers)):
                t = self._layer(t, layer, mb, phase)
            if last and fwd:
                t = self._compute(t, mb, -1, phase, self._lm_head_ops(phase))
            if not last if fwd else stage > 0:  # downstream
                yield from self._advance(t)
                link_stage = stage if fwd else stage - 1
                self.mail.send((stage + 1 if fwd else stage - 1, mb, phase), t + st.p2p_s[link_stage])
        t = self._collective(t, self.dp_group, lay.dp_cp, st.dp_dense_s[stage], -1, -1, Phase.STEP,
                             OpKind.DP_SYNC_DENSE, float(st.grad_bytes[stage, 0]))
        t = self._collective(t, self.edp_group, lay.edp, st.dp_expert_s[stage], -1, -1, Phase.STEP,
                             OpKind.DP_SYNC_EXPERT, float(st.grad_bytes[stage, 1]))
        if pw is not None and pw.replica_sync_s[stage] > 0:
            t = self._compute(t, -1, -1, Phase.STEP, ((OpKind.REPLICA_SYNC, float(pw.replica_sync_s[stage])),))
        if st.weight_cast_s[stage].any():  # done on the step's first micro-batch; the step's length is the same
            casts = ((OpKind.MEMORY_BOUND, float(st.weight_cast_s[stage, 0])),
                     (OpKind.LAUNCH, float(st.weight_cast_s[stage, 1])))
            t = self._compute(t, -1, -1, Phase.STEP, casts)
        t = self._compute(t, -1, -1, Phase.STEP, ((OpKind.OPTIMIZER, float(st.optimizer_s[stage])),))
        yield from self._advance(t)
        finish[stage] = t

    def _lm_head_ops(self, phase: Phase) -> tuple:
        lc = self.ctx.static.layers
        fwd = phase is Phase.FORWARD
        memory_bound, launch = lc.lm_head_extra_fwd_s if fwd else lc.lm_head_extra_bwd_s
        return ((OpKind.LM_HEAD, lc.lm_head_fwd_s if fwd else lc.lm_head_bwd_s), (OpKind.MEMORY_BOUND, memory_bound),
                (OpKind.LAUNCH, launch))

    def _advance(self, t: np.ndarray):
        """Move the stage's SimPy clock to its earliest rank (it never runs ahead of any rank)."""
        delay = float(t.min()) - self.env.now
        if delay > 0:
            yield self.env.timeout(delay)

    def _layer(self, t: np.ndarray, layer: int, mb: int, phase: Phase) -> np.ndarray:
        """Forward: attention (+ dense FFN | router) -> TP collectives -> dispatch -> experts -> combine.
        Backward runs the same blocks in reverse order with backward costs."""
        if phase is Phase.FORWARD:
            return self._moe_block(self._dense_block(t, layer, mb, phase), layer, mb, phase)
        return self._dense_block(self._moe_block(t, layer, mb, phase), layer, mb, phase)

    def _dense_block(self, t: np.ndarray, layer: int, mb: int, phase: Phase) -> np.ndarray:
        ctx, fwd = self.ctx, phase is Phase.FORWARD
        lc, lay = ctx.static.layers, ctx.sc.layout
        is_moe = layer in ctx.moe
        ops = [(OpKind.ATTENTION, lc.attention_fwd_s if fwd else lc.attention_bwd_s)]
        if is_moe:
            ops.append((OpKind.ROUTER, lc.router_fwd_s if fwd else lc.router_bwd_s))
        else:
            ops.append((OpKind.DENSE_FFN, lc.dense_ffn_fwd_s if fwd else lc.dense_ffn_bwd_s))
        kind = int(is_moe)
        ops.append((OpKind.MEMORY_BOUND, (lc.memory_bound_fwd_s if fwd else lc.memory_bound_bwd_s)[kind]))
        ops.append((OpKind.LAUNCH, (lc.launch_fwd_s if fwd else lc.launch_bwd_s)[kind]))
        t = self._compute(t, mb, layer, phase, ops)
        if lay.cp > 1:  # the ring's exposed exchange; every member of a ring waits for the others
            t = self._collective(t, self.cp_group, lay.cp, ctx.static.cp_comm_s[self.stage, :, int(not fwd)], mb,
                                 layer, phase, OpKind.CP_COMM, ctx.static.cp_bytes[int(not fwd)])
        if lay.tp > 1:
            t = self._collective(t, self.tp_group, lay.tp, ctx.static.tp_comm_s[self.stage, :, int(is_moe)], mb,
                                 layer, phase, OpKind.TP_COMM)
        return t

    def _moe_block(self, t: np.ndarray, layer: int, mb: int, phase: Phase) -> np.ndarray:
        moe = self.ctx.moe.get(layer)
        if moe is None:
            return t
        sc = self.ctx.sc
        pw = self.ctx.placement
        ready = pw.layer_ready_s.get(layer, 0.0) if pw is not None else 0.0
        late = t < ready  # an overlapped migration has not delivered this layer's experts yet
        if late.any():
            self.log.add(mb, layer, phase, OpKind.MIGRATION, t, ready, keep=late)
            t = np.where(late, t + (ready - t), t)
        ep = sc.layout.ep
        t = self._collective(t, self.ep_group, ep, moe.dispatch_s[mb], mb, layer, phase, OpKind.DISPATCH,
                             moe.sent_bytes[mb], moe.sent_rows[mb])
        lc = self.ctx.static.layers
        expert_s = moe.expert_fwd_s[mb] if phase is Phase.FORWARD \
            else moe.expert_bwd_s[mb] + moe.expert_fwd_s[mb] * lc.expert_rerun_fwd
        t = self._compute(t, mb, layer, phase, ((OpKind.EXPERT, expert_s),),
                          rows=moe.expert_rows[mb])
        activations_s = moe.computed_rows[mb] * (lc.expert_row_memory_bound_s if phase is Phase.FORWARD
                                                 else lc.expert_row_memory_bound_bwd_s)
        t = self._compute(t, mb, layer, phase, ((OpKind.MEMORY_BOUND, activations_s),))
        return self._collective(t, self.ep_group, ep, moe.combine_s[mb], mb, layer, phase, OpKind.COMBINE,
                                moe.sent_bytes[mb], moe.returned_rows[mb])

    def _compute(self, t: np.ndarray, mb: int, layer: int, phase: Phase, ops, rows=0) -> np.ndarray:
        """Back-to-back compute ops: each its own record, the clock advanced once by their sum."""
        total = 0.0
        for op, seconds in ops:
            start = t + total
            self.log.add(mb, layer, phase, op, start, start + seconds, 0.0, rows)
            total = total + seconds
        return t + total

    def _collective(self, t: np.ndarray, group: tuple, size: int, duration_s: np.ndarray, mb: int, layer: int,
                    phase: Phase, op: OpKind, nbytes=0.0, rows=0) -> np.ndarray:
        """Every member ends when the group's last member has arrived and the collective has run. A group's
        members share one duration (sim/workload.py computes it per group)."""
        end = (_group_end(t, *group) if size > 1 else t) + duration_s
        wait_s = np.maximum(0.0, end - duration_s - t)  # the group started when its last member arrived
        self.log.add(mb, layer, phase, op, t, end, nbytes, rows, wait_s)
        return end
