"""What each token dispatcher puts on the wire: rows from each EP rank to each other, given the rows each source
sends to each destination under plain all-to-all. Pure numpy; the network models time the resulting matrices.

Shapes: rows [..., src, dst] over the members of one EP group (dst in the group's order); node_of and local_of
[ep] give each member's node and its local rank (GPU index) in that node.

moesim routes counts, not tokens: how many of a source's tokens reach a destination at least once follows from
its rows there, assuming a token's k choices are drawn without replacement from the experts in proportion to the
source's rows (uniform routing: exactly hypergeometric).
"""

from __future__ import annotations

import numpy as np

from moesim.spec.errors import SpecError


def tokens_reaching(rows: np.ndarray, tokens: int, top_k: int, num_experts: int) -> np.ndarray:
    """How many of a source's `tokens` (each with top_k distinct experts of num_experts) send at least one of
    their `rows` to a destination (a GPU or a node). A token misses the destination when none of its k choices
    lands there; choice i falls on it with probability share · E / (E − i), share = rows / (tokens · k). Bounded
    by the rows themselves and by rows / k (a token brings at most k rows)."""
    rows = np.asarray(rows, dtype=np.float64)
    share = rows / float(tokens * top_k)
    miss = np.ones_like(rows)
    for i in range(top_k):
        miss = miss * np.clip(1.0 - share * num_experts / (num_experts - i), 0.0, 1.0)
    return np.clip(tokens * (1.0 - miss), rows / top_k, rows)


def allgather_rows(shape: tuple[int, ...], tokens: int) -> np.ndarray:
    """[..., src, dst] rows of the allgather dispatcher: every member sends its `tokens` to every other member,
    whatever the routing (the combine is the mirror reduce-scatter)."""
    ep = shape[-1]
    return np.broadcast_to(tokens * (1.0 - np.eye(ep)), shape).astype(np.float64)


def relay_index(node_of: np.ndarray, local_of: np.ndarray) -> np.ndarray:
    """[ep, nodes] the member on each of the group's nodes with the same local rank as member s: where DeepEP
    sends s's tokens for that node. Raises SpecError when a node of the group lacks that local rank (an EP group
    must hold whole nodes, or lie inside one)."""
    nodes = np.unique(node_of)
    where = {(int(n), int(g)): i for i, (n, g) in enumerate(zip(node_of, local_of))}
    relay = np.empty((len(node_of), len(nodes)), dtype=np.int64)
    for s, g in enumerate(local_of):
        for j, n in enumerate(nodes):
            if (int(n), int(g)) not in where:
                raise SpecError("comm.dispatcher", "flex", f"EP groups of whole nodes or inside one node (the group "
                                f"of ranks on nodes {nodes.tolist()} has no local rank {int(g)} on node {int(n)})")
            relay[s, j] = where[(int(n), int(g))]
    return relay


def flex_rows(rows: np.ndarray, tokens: int, top_k: int, num_experts: int, node_of: np.ndarray,
              local_of: np.ndarray) -> np.ndarray:
    """[..., src, dst] rows on the wire under DeepEP (Megatron's flex dispatcher): inside the source's node one
    copy per (token, GPU) over NVLink; to another node one copy per (token, node) over the scale-out network to the
    GPU of the source's local rank (same rail), which forwards one copy per (token, GPU) over NVLink to the other
    GPUs of its node. A relay's own rows stay on it. Both phases are summed into one matrix: the flow model charges
    each link what both put on it."""
    rows = np.asarray(rows, dtype=np.float64)
    nodes, node_idx = np.unique(node_of, return_inverse=True)
    ep = len(node_of)
    relay = relay_index(node_of, local_of)  # [ep, nodes]
    per_gpu = tokens_reaching(rows, tokens, top_k, num_experts)  # [..., src, dst]
    onehot = np.eye(len(nodes))[node_idx]  # [ep, nodes]
    per_node = tokens_reaching(rows @ onehot, tokens, top_k, num_experts)  # [..., src, nodes]
    same = node_idx[:, None] == node_idx[None, :]
    wire = np.where(same, per_gpu, 0.0)  # inside the node: direct
    src = np.repeat(np.arange(ep), len(nodes))
    dst_node = np.tile(np.arange(len(nodes)), ep)
    remote = node_idx[src] != dst_node
    # phase 1: source -> its relay on every other node (distinct (src, relay) pairs)
    wire[..., src[remote], relay[src[remote], dst_node[remote]]] += per_node[..., src[remote], dst_node[remote]]
    # phase 2: each relay forwards to the other GPUs of its node what sources of its local rank sent there
    local_onehot = np.eye(int(local_of.max()) + 1)[local_of]  # [ep, locals]
    by_local = np.einsum("...sd,sl->...ld", np.where(same, 0.0, per_gpu), local_onehot)  # [..., local rank, dst]
    locals_, dsts = np.meshgrid(np.arange(local_onehot.shape[1]), np.arange(ep), indexing="ij")
    locals_, dsts = locals_.ravel(), dsts.ravel()
    present = np.isin(locals_, local_of)
    locals_, dsts = locals_[present], dsts[present]
    first_of_local = {int(g): int(np.flatnonzero(local_of == g)[0]) for g in np.unique(local_of)}
    relays = relay[[first_of_local[int(g)] for g in locals_], node_idx[dsts]]
    forward = relays != dsts
    wire[..., relays[forward], dsts[forward]] += by_local[..., locals_[forward], dsts[forward]]
    return wire
