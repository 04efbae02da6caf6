"""Collective algorithms as byte matrices over a group's members, independent of how a network times them.

Shapes: G concurrent groups of n members, `ranks [G, n]` global ranks; byte matrices `[..., G, n, n]`
(member i sends [i, j] bytes to member j). A network times each returned matrix as a direct exchange.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _node_lookup(ranks: np.ndarray, gpus_per_node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node [G, n], local [G, n], member [G, nodes, gpus_per_node] index of the member at (node, local) or -1)."""
    node, local = ranks // gpus_per_node, ranks % gpus_per_node
    nodes = int(node.max()) + 1
    member = np.full((ranks.shape[0], nodes, gpus_per_node), -1)
    g = np.repeat(np.arange(ranks.shape[0]), ranks.shape[1])
    member[g, node.ravel(), local.ravel()] = np.tile(np.arange(ranks.shape[1]), ranks.shape[0])
    return node, local, member


@lru_cache(maxsize=64)
def _hierarchical_routes(ranks_key: bytes, shape: tuple[int, int], gpus_per_node: int):
    ranks = np.frombuffer(ranks_key, dtype=np.int64).reshape(shape)
    G, n = shape
    node, local, member = _node_lookup(ranks, gpus_per_node)
    gi = np.arange(G)[:, None, None]
    # aggregator on the source's node: the member with the destination's local rank (its rail), else the source
    a = member[gi, node[:, :, None], local[:, None, :]]  # [G, s, d]
    a = np.where(a >= 0, a, np.arange(n)[None, :, None])
    # its peer on the destination's node, on the same rail, else the destination itself
    a_local = np.take_along_axis(local, a.reshape(G, -1), axis=1).reshape(G, n, n)
    b = member[gi, node[:, None, :], a_local]
    b = np.where(b >= 0, b, np.arange(n)[None, None, :])
    same = node[:, :, None] == node[:, None, :]
    a = np.where(same, np.arange(n)[None, None, :], a)  # same node: one direct NVLink hop in phase 1
    return a, b, same


def hierarchical_all_to_all(matrix: np.ndarray, ranks: np.ndarray, gpus_per_node: int) -> list[np.ndarray]:
    """2DH all-to-all (Tutel; DeepEP's normal kernels route the same way) as three phases run one after another:
    1. inside each node, every source hands the bytes for a remote GPU to the member on that GPU's rail
       (bytes for its own node go straight to their destination);
    2. across nodes, member to member on the same rail (one aggregated message per remote node);
    3. inside the destination node, from the rail member to the destination (empty when the group holds the
       same local ranks on every node, the usual case).
    matrix [..., G, n, n] -> three matrices of the same shape; the bytes of every pair are conserved."""
    m = np.asarray(matrix, dtype=np.float64)
    ranks = np.ascontiguousarray(ranks, dtype=np.int64)
    G, n = ranks.shape
    a, b, same = _hierarchical_routes(ranks.tobytes(), (G, n), gpus_per_node)
    lead = m.shape[:-3]
    k = int(np.prod(lead, dtype=np.int64))
    flat = m.reshape(k, G, n, n)
    src = np.arange(n)[None, :, None]
    dst = np.arange(n)[None, None, :]
    base = (np.arange(k)[:, None, None, None] * G + np.arange(G)[None, :, None, None]) * n * n

    def scatter(i: np.ndarray, j: np.ndarray, weights: np.ndarray) -> np.ndarray:
        idx = base + (np.broadcast_to(i, (G, n, n)) * n + np.broadcast_to(j, (G, n, n)))[None]
        return np.bincount(idx.ravel(), weights.ravel(), k * G * n * n).reshape(m.shape)

    inter = np.where(same[None], 0.0, flat)
    phase1 = scatter(src, a, flat)  # intra pairs go to d (a = d there); inter pairs to the rail member
    phase2 = scatter(a, b, inter)
    phase3 = scatter(b, dst, inter)
    for p in (phase1, phase2, phase3):
        p.reshape(k, G, n, n)[:, :, np.arange(n), np.arange(n)] = 0.0  # a hop to oneself moves nothing
    return [phase1, phase2, phase3]


def ring_step_matrix(ranks: np.ndarray, gpus_per_node: int) -> np.ndarray:
    """[G, n, n] fraction of the buffer each member sends in ONE step of a ring collective, with NCCL-style
    channels: a group with c members per node runs c rings at once, each on 1/c of the data, channel k leaving
    every node from a different member (so each crossing uses a different NIC). Crossings are rail-aligned as
    NCCL's are: a node enters at the local rank the previous node left from (nodes alternate the direction they
    walk their members), so only the closing hop of an odd number of nodes changes rail. Rows sum to 1/n."""
    ranks = np.asarray(ranks)
    G, n = ranks.shape
    out = np.zeros((G, n, n))
    for g in range(G):
        order = np.argsort(ranks[g], kind="stable")
        node = ranks[g][order] // gpus_per_node
        _, counts = np.unique(node, return_counts=True)
        c = int(counts.min())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for k in range(c):
            walks = []
            for i, (s, cnt) in enumerate(zip(starts, counts)):
                walk = np.roll(order[s:s + cnt], -k)  # enters at member k, leaves at member k - 1
                walks.append(walk if i % 2 == 0 else walk[::-1])  # reversed: enters where the last node left
            ring = np.concatenate(walks)
            out[g, ring, np.roll(ring, -1)] += 1.0 / (n * c)
    return out


def hierarchical_groups(ranks: np.ndarray, gpus_per_node: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Split each group into its per-node subgroups [G * nodes, m] and its per-rail subgroups [G * m, nodes], or
    None when the group is not m members on each of several nodes with the same local ranks (then a flat ring)."""
    ranks = np.sort(np.asarray(ranks), axis=-1)
    G, n = ranks.shape
    node = ranks // gpus_per_node
    nodes = len(np.unique(node[0]))
    if nodes == 1 or n % nodes:
        return None
    m = n // nodes
    per_node = ranks.reshape(G, nodes, m)
    local = per_node % gpus_per_node
    if not (node.reshape(G, nodes, m) == node.reshape(G, nodes, m)[:, :, :1]).all() or \
            not (local == local[:, :1, :]).all():
        return None
    return per_node.reshape(G * nodes, m), per_node.transpose(0, 2, 1).reshape(G * m, nodes)
