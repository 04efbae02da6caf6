"""Runs each MoE layer's placement policy online, step by step: routing-side transforms, placement decisions,
and what they cost (migration, shadows, replica gradient sync). Pure numpy; the engine replays the costs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.placement import costs
from moesim.placement.base import Placement, balance_ratio
from moesim.placement.context import placement_context
from moesim.placement.registry import make_policy
from moesim.sim.engine import PlacementWork
from moesim.spec.placement import MigrationMode, PlacementPolicyKind
from moesim.spec.scenario import Scenario

EVENT_COLUMNS = ("step", "layer", "moved_slots", "migration_bytes", "migration_s", "shadowed_experts",
                 "max_replicas", "balance_before", "balance_after")


def integer_rows(x: np.ndarray) -> np.ndarray:
    """Round non-negative counts [..., E] to integers keeping each row's (integral) total: floor, then one more
    to the largest remainders (ties to the lower index). Routing transforms return shares of whole tokens."""
    x = np.asarray(x, dtype=np.float64)
    if np.array_equal(x, np.floor(x)):
        return x
    base = np.floor(x)
    short = np.rint(x.sum(-1) - base.sum(-1)).astype(np.int64)
    order = np.argsort(-(x - base), axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(x.shape[-1])[None].repeat(int(np.prod(x.shape[:-1])), 0)
                      .reshape(order.shape), axis=-1)
    return base + (rank < short[..., None])


class PlacementDriver:
    """One policy instance per MoE layer; the layer's EP groups (over edp and etp) share its placement."""

    def __init__(self, sc: Scenario, moe_layers: list[int]):
        self.sc = sc
        self.moe_layers = moe_layers
        stages = sorted({sc.stage_of_layer(layer) for layer in moe_layers})
        self.contexts = {s: placement_context(sc, s) for s in stages}
        self.policies = {layer: make_policy(sc.placement, self.contexts[sc.stage_of_layer(layer)])
                         for layer in moe_layers}
        self.current: dict[int, Placement] = {layer: p.initial() for layer, p in self.policies.items()}
        self.active = sc.placement.policy is not PlacementPolicyKind.STATIC
        self.events: list[dict] = []
        self._sync_cache: dict[int, tuple[Placement, float]] = {}
        tr = sc.training
        self.grad_bytes = {s: c.expert_weight_bytes / tr.dtype.weight_bytes * tr.grad_dtype.bytes
                           for s, c in self.contexts.items()}

    def step(self, step: int, loads: np.ndarray) -> tuple[np.ndarray, dict[int, Placement], PlacementWork]:
        """loads [M, moe layers, q, E] -> (routed loads, placement per layer, this step's costs)."""
        sc, lay = self.sc, self.sc.layout
        M, _, q, E = loads.shape
        pp = lay.pp
        work = PlacementWork(np.zeros(pp), np.zeros(pp), np.zeros(pp), {})
        overlapped = sc.placement.migration is MigrationMode.OVERLAPPED
        transferred_s = np.zeros(pp)  # per stage: overlapped transfers queued so far this step
        routed_all = loads  # copied only if a routing-side policy changes something

        for i, layer in enumerate(self.moe_layers):
            stage = sc.stage_of_layer(layer)
            ctx, policy, old = self.contexts[stage], self.policies[layer], self.current[layer]
            # [M * edp * etp, ep, E]: every EP group's sources, as policies see one group
            grouped = loads[:, i].reshape(M, lay.edp, lay.ep, lay.etp, E).transpose(0, 1, 3, 2, 4)
            flat = grouped.reshape(-1, lay.ep, E)
            routed = policy.route(flat, old)
            if routed is not flat:
                routed = integer_rows(np.asarray(routed, dtype=np.float64)).reshape(grouped.shape)
                if routed_all is loads:
                    routed_all = loads.astype(np.float64)
                routed_all[:, i] = routed.transpose(0, 1, 3, 2, 4).reshape(M, q, E)
            else:
                routed = grouped
            ep_loads = routed.reshape(M, -1, lay.ep, E).sum(1)  # [M, ep, E]: the stage's demand per EP rank
            new = policy.place(step, ep_loads, old)
            if new is not old and not new.same_as(old):
                mig = costs.migration(ctx, old, new)
                if mig.moved_slots:
                    total = ep_loads.sum(0)
                    self.events.append({
                        "step": step, "layer": layer, "moved_slots": mig.moved_slots,
                        "migration_bytes": mig.bytes, "migration_s": mig.seconds,
                        "shadowed_experts": int(len(np.unique(new.slot_expert[new.transient]))),
                        "max_replicas": int(new.replicas(E).max()),
                        "balance_before": float(balance_ratio(old.rank_load(total))),
                        "balance_after": float(balance_ratio(new.rank_load(total)))})
                    # a stage's transfers share its links: they run one after another in layer order, either
                    # before the step (blocking) or beside compute, each layer waiting for its own (overlapped)
                    if overlapped:
                        transferred_s[stage] += mig.seconds
                        work.layer_ready_s[layer] = float(transferred_s[stage])
                    else:
                        work.migration_s[stage] += mig.seconds
            self.current[layer] = new
            work.shadow_s[stage] += costs.shadow_s(ctx, new)
            cached = self._sync_cache.get(layer)
            if cached is None or cached[0] is not new:  # replica sets change only when the placement does
                cached = self._sync_cache[layer] = (new, costs.replica_sync_s(ctx, new, self.grad_bytes[stage]))
            work.replica_sync_s[stage] += cached[1]
        return routed_all, dict(self.current), work

    def events_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.events, columns=list(EVENT_COLUMNS))
