"""The SimPy engine: one process per pipeline stage replays Megatron's 1F1B schedule (interleaved 1F1B over the
stage's model chunks when layout.vpp > 1; moesim.cost.pipeline) of one training step for all of the stage's ranks
at once.

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

from moesim.cost.pipeline import schedule
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
    return [(phase, mb) for phase, mb, _ in pipeline_schedule(stage, num_stages, num_micro_batches)]


def pipeline_schedule(stage: int, num_stages: int, num_micro_batches: int,
                      num_chunks: int = 1) -> list[tuple[Phase, int, int]]:
    """(phase, micro-batch, model chunk) of one stage in Megatron's order: 1F1B with one chunk, interleaved 1F1B
    with more (moesim.cost.pipeline)."""
    return [(Phase.FORWARD if forward else Phase.BACKWARD, mb, chunk)
            for forward, mb, chunk in schedule(stage, num_stages, num_micro_batches, num_chunks)]


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
        # passes next to one of the other kind in the schedule (1F1B's steady state): they can overlap a partner
        order = pipeline_schedule(stage, lay.pp, ctx.sc.num_micro_batches, lay.vpp)
        self.chunk = 0  # the model chunk whose pass runs now
        self.paired = {op: any(0 <= j < len(order) and order[j][0] is not op[0] for j in (i - 1, i + 1))
                       for i, op in enumerate(order)}

    def run(self, finish: np.ndarray):
        ctx, st, stage = self.ctx, self.ctx.static, self.stage
        sc, lay = ctx.sc, ctx.sc.layout
        chunks = [sc.chunk_layers(stage, c) for c in range(lay.vpp)]
        last = stage == lay.pp - 1
        t = np.zeros(lay.ranks_per_stage)
        pw = ctx.placement
        if pw is not None:
            ops = ((OpKind.MIGRATION, float(pw.migration_s[stage])), (OpKind.SHADOW, float(pw.shadow_s[stage])))
            t = self._compute(t, -1, -1, Phase.STEP, tuple(o for o in ops if o[1] > 0))
        # Model chunk c of stage s is virtual stage c·pp + s: it receives from the virtual stage before it (the last
        # stage's chunk c feeds stage 0's chunk c + 1) and sends to the one after. The model's first chunk
        # (stage 0, chunk 0) embeds its input; its last (last stage, last chunk) runs the LM head and the loss.
        for phase, mb, chunk in pipeline_schedule(stage, lay.pp, sc.num_micro_batches, lay.vpp):
            fwd = phase is Phase.FORWARD
            self.chunk, layers = chunk, chunks[chunk]
            first, head = stage == 0 and chunk == 0, last and chunk == lay.vpp - 1
            if not first if fwd else not head:  # upstream
                arrival = yield self.mail.receive((stage, chunk, mb, phase))
                waited = arrival > t
                if waited.any():
                    self.log.add(mb, -1, phase, OpKind.PP_WAIT, t, arrival, keep=waited)
                    t = np.where(waited, arrival, t)
            if head and not fwd:
                t = self._compute(t, mb, -1, phase, self._lm_head_ops(phase))
            for layer in (layers if fwd else reversed(layers)):
                t = self._layer(t, layer, mb, phase)
            if head and fwd:
                t = self._compute(t, mb, -1, phase, self._lm_head_ops(phase))
            if not head if fwd else not first:  # downstream
                yield from self._advance(t)
                link_stage = stage if fwd else (stage - 1) % lay.pp  # p2p_s[s]: stage s to s + 1 (mod pp)
                peer = ((stage + 1) % lay.pp, chunk + int(last)) if fwd \
                    else ((stage - 1) % lay.pp, chunk - int(stage == 0))
                self.mail.send((*peer, mb, phase), t + st.p2p_s[link_stage])
        t = self._collective(t, self.dp_group, lay.dp_cp, st.dp_dense_s[stage], -1, -1, Phase.STEP,
                             OpKind.DP_SYNC_DENSE, float(st.grad_bytes[stage, 0]), hidden_s=st.dp_hidden_s[0, stage])
        t = self._collective(t, self.edp_group, lay.edp, st.dp_expert_s[stage], -1, -1, Phase.STEP,
                             OpKind.DP_SYNC_EXPERT, float(st.grad_bytes[stage, 1]), hidden_s=st.dp_hidden_s[1, stage])
        t = self._contention(t, -1, -1, Phase.STEP, st.dp_hidden_s[0, stage] + st.dp_hidden_s[1, stage])
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
            tp_s = ctx.static.tp_comm_s[self.stage, :, int(is_moe)]
            hidden = 0.0
            if ctx.sc.comm.tp_comm_overlap:  # userbuffers: the collectives run inside the neighbouring GEMMs
                hidden = np.minimum(tp_s, lc.tp_overlap_budget_s[int(is_moe)][int(not fwd)])
                tp_s = tp_s - hidden
            t = self._collective(t, self.tp_group, lay.tp, tp_s, mb, layer, phase, OpKind.TP_COMM, hidden_s=hidden)
            t = self._contention(t, mb, layer, phase, hidden)
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
        lc = self.ctx.static.layers
        (dispatch_s, hide_dispatch), (combine_s, hide_combine) = self._a2a_exposed(moe, layer, mb, phase)
        t = self._collective(t, self.ep_group, ep, dispatch_s, mb, layer, phase, OpKind.DISPATCH,
                             moe.sent_bytes[mb], moe.sent_rows[mb], hidden_s=hide_dispatch)
        expert_s = moe.expert_fwd_s[mb] if phase is Phase.FORWARD \
            else moe.expert_bwd_s[mb] + moe.expert_fwd_s[mb] * lc.expert_rerun_fwd
        t = self._compute(t, mb, layer, phase, ((OpKind.EXPERT, expert_s),),
                          rows=moe.expert_rows[mb])
        activations_s = moe.computed_rows[mb] * (lc.expert_row_memory_bound_s if phase is Phase.FORWARD
                                                 else lc.expert_row_memory_bound_bwd_s)
        t = self._compute(t, mb, layer, phase, ((OpKind.MEMORY_BOUND, activations_s),))
        t = self._collective(t, self.ep_group, ep, combine_s, mb, layer, phase, OpKind.COMBINE,
                             moe.sent_bytes[mb], moe.returned_rows[mb], hidden_s=hide_combine)
        return self._contention(t, mb, layer, phase, hide_dispatch + hide_combine)

    def _a2a_exposed(self, moe, layer: int, mb: int, phase: Phase):
        """((dispatch exposed, hidden), (combine exposed, hidden)) seconds [q] of this micro-batch's all-to-alls.
        moe_a2a_overlap (Megatron's 1F1B all-to-all overlap; DualPipe alike): in the steady state a forward and a
        backward of two micro-batches run together, so the all-to-alls of one hide behind the other's compute of
        the same layer; the EP group hides what its least busy member's compute covers. Warm-up and cool-down
        passes have no partner. shared_expert_overlap: the shared experts run during the dispatch."""
        sc, lc, fwd = self.ctx.sc, self.ctx.static.layers, phase is Phase.FORWARD
        d, c = moe.dispatch_s[mb], moe.combine_s[mb]
        none = np.zeros_like(d)
        if sc.comm.moe_a2a_overlap and self.paired[(phase, mb, self.chunk)]:
            other = 1 if fwd else 0  # the partner's pass
            expert = moe.expert_bwd_s[mb] + moe.expert_fwd_s[mb] * lc.expert_rerun_fwd if fwd else moe.expert_fwd_s[mb]
            budget = ((lc.attention_fwd_s, lc.attention_bwd_s)[other] + (lc.router_fwd_s, lc.router_bwd_s)[other]
                      + expert)
            shape, axis = self.ep_group
            budget = np.broadcast_to(budget.reshape(shape).min(axis=axis, keepdims=True), shape).reshape(-1)
            total = d + c
            keep = np.where(total > 0, np.maximum(0.0, total - budget) / np.where(total > 0, total, 1.0), 0.0)
            return (d * keep, d - d * keep), (c * keep, c - c * keep)
        if sc.comm.shared_expert_overlap:
            hidden = np.minimum(d, lc.shared_expert_s[0 if fwd else 1])
            return (d - hidden, hidden), (c, none)
        return (d, none), (c, none)

    def _compute(self, t: np.ndarray, mb: int, layer: int, phase: Phase, ops, rows=0) -> np.ndarray:
        """Back-to-back compute ops: each its own record, the clock advanced once by their sum."""
        total = 0.0
        for op, seconds in ops:
            start = t + total
            self.log.add(mb, layer, phase, op, start, start + seconds, 0.0, rows)
            total = total + seconds
        return t + total

    def _collective(self, t: np.ndarray, group: tuple, size: int, duration_s: np.ndarray, mb: int, layer: int,
                    phase: Phase, op: OpKind, nbytes=0.0, rows=0, hidden_s=0.0) -> np.ndarray:
        """Every member ends when the group's last member has arrived and the collective's exposed part
        (`duration_s`) has run; `hidden_s` more of it ran under compute. A group's members share one duration
        (sim/workload.py computes it per group)."""
        end = (_group_end(t, *group) if size > 1 else t) + duration_s
        wait_s = np.maximum(0.0, end - duration_s - t)  # the group started when its last member arrived
        self.log.add(mb, layer, phase, op, t, end, nbytes, rows, wait_s, hidden_s=hidden_s)
        return end

    def _contention(self, t: np.ndarray, mb: int, layer: int, phase: Phase, hidden_s) -> np.ndarray:
        """The compute that hid `hidden_s` of communication runs slower by the profile's overlap_slowdown."""
        slow = self.ctx.sc.cluster.profile.efficiency.overlap_slowdown * hidden_s
        if np.any(slow > 0):
            return self._compute(t, mb, layer, phase, ((OpKind.CONTENTION, slow),))
        return t
