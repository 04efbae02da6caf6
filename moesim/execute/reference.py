"""The executed model on one process: every rank's tokens, every expert, no communication; the test oracle of
moesim.execute.train.

Each (token, choice) the gate kept adds ``gate * expert(rms_norm(a)[token])``, computed token by token with the
expert's own weights; a dropped choice adds nothing; capacity padding computes zeros and is not looked at. The
step's loss is the pipelines' mean losses summed over micro-batches, so the gradients the ranks hold after their
all-reduces are: dense weights d(loss)/dp (dp all-reduce of means), experts d(loss)/edp (an expert's replicas
average over the edp group the gradients of the EP groups' tokens). A pipeline's stages hold its layers; the
reference holds them all.
"""

from __future__ import annotations

import numpy as np
import torch

from moesim.execute.routing_plan import group_slots, rank_routing
from moesim.execute.train import attention, dense_ffn, ffn, init_params, lm_head, rms_norm, tokens_of
from moesim.sim.simulate import LayerRouting
from moesim.spec.scenario import Scenario


def reference_step(sc: Scenario, routing: list[LayerRouting], step: int) -> tuple[dict, torch.Tensor]:
    """(params with their .grad scaled as the ranks' are after the all-reduces, total loss) of `step`."""
    m, lay = sc.model, sc.layout
    moe_layers = [i for i in range(m.num_layers) if m.is_moe_layer(i)]
    by_key = {(r.step, r.layer): r for r in routing}
    slots = {layer: group_slots(by_key[(step, layer)].placement, m.num_experts, lay.ep) for layer in moe_layers}
    params, dense, experts = init_params(sc, {layer: list(range(m.num_experts)) for layer in moe_layers},
                                         torch.device("cpu"), torch.float32)
    seq = sc.training.seq_len * sc.training.micro_batch_size
    groups = lay.ep_groups()[0].reshape(-1, lay.ep)  # [edp * etp, ep] ranks of stage 0 (every stage alike)
    shard = seq // lay.tp  # sequence parallel: TP rank t routes tokens [t * shard, (t + 1) * shard)
    total = torch.zeros(())
    for d in range(lay.dp):  # each data-parallel replica's pipeline: all its stages and TP ranks at once
        for mb in range(sc.num_micro_batches):
            tokens = tokens_of(sc, step, mb, d, seq)
            x = params["embed"][tokens[:-1]]
            for layer in range(m.num_layers):
                a = attention(x, params, layer, m, seq)
                if not m.is_moe_layer(layer):
                    x = dense_ffn(a, params, layer)
                    continue
                n = rms_norm(a, params[f"{layer}.ln2"])
                probs = torch.softmax(n @ params[f"{layer}.router"], dim=-1)
                y = a
                for t in range(lay.tp):
                    q = d * lay.tp + t  # the stage's local rank routing these tokens
                    index = int(np.flatnonzero((groups == q).any(1))[0])  # q's EP group
                    sources = groups[index] % lay.ranks_per_stage
                    me = int(np.flatnonzero(sources == q)[0])
                    r = by_key[(step, layer)]
                    rr = rank_routing(r.loads[mb], r.sent[mb], r.computed[mb, index], sources, me, m.top_k,
                                      slots[layer])
                    ids = torch.as_tensor(rr.expert_ids)
                    gate = probs[t * shard:(t + 1) * shard].gather(1, ids)
                    for slot in rr.send_slots[rr.send_slots >= 0].tolist():  # the kept choices
                        i, j = divmod(slot, m.top_k)
                        out = ffn(n[t * shard + i:t * shard + i + 1], params, f"{layer}.expert{int(ids[i, j])}")
                        y = y.index_add(0, torch.tensor([t * shard + i]), out * gate[i, j])
                if m.num_shared_experts:
                    y = y + ffn(n, params, f"{layer}.shared")
                x = y
            total = total + lm_head(x, tokens[1:], params, m, 1.0 / sc.num_micro_batches)
    total.backward()
    for t in dense:  # the ranks hold slices of TP-split weights: moesim.execute.train.tp_slices
        t.grad /= lay.dp_cp
    for t in experts:
        if t.grad is not None:
            t.grad /= lay.edp
    return params, total
