"""One gloo rank of the EP MoE layer test: ``python moe_gloo_worker.py RANK WORLD PORT OUT_DIR``.

Runs every case of :func:`make_case` in one process group and saves this rank's shard of the outputs and
gradients to ``OUT_DIR/rank{RANK}.pt``. Run as a plain subprocess (no pickling), so a hung rank can be killed.
"""

from __future__ import annotations

import os
import sys

import torch

H, FF, TOKENS_PER_RANK, TOP_K = 16, 24, 12, 2
CASES = ("router", "skewed", "zero_rows")


def make_case(name: str, world: int) -> dict:
    """Seeded full inputs for all ranks: x [T, h], router [h, E], experts [E, ...], forced ids or None."""
    experts = 2 * world
    g = torch.Generator().manual_seed(1234 + CASES.index(name) * 17 + world)
    T = TOKENS_PER_RANK * world
    case = {
        "x": torch.randn(T, H, generator=g),
        "w_router": torch.randn(H, experts, generator=g) * 0.5,
        "w_gate": torch.randn(experts, H, FF, generator=g) * H ** -0.5,
        "w_up": torch.randn(experts, H, FF, generator=g) * H ** -0.5,
        "w_down": torch.randn(experts, FF, H, generator=g) * FF ** -0.5,
        "grad_y": torch.randn(T, H, generator=g),
        "expert_ids": None,
    }
    if name == "skewed":  # ~90 % of the choices go to rank 0's two experts (k distinct experts per token)
        first = torch.randint(0, 2, (T,), generator=g)
        other = torch.randint(2, experts, (T,), generator=g)
        second = torch.where(torch.rand(T, generator=g) < 0.8, 1 - first, other)
        case["expert_ids"] = torch.stack([first, second], 1)
    elif name == "zero_rows":  # only rank 0's experts: every other rank receives no rows
        first = torch.randint(0, 2, (T,), generator=g)
        case["expert_ids"] = torch.stack([first, 1 - first], 1)
    return case


def run_rank(rank: int, world: int) -> dict:
    import torch.distributed as dist

    from moesim.execute.moe_layer import allreduce_grad, moe_layer_ep

    results = {}
    for name in CASES:
        c = make_case(name, world)
        e_local = c["w_gate"].shape[0] // world
        tok = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
        exp = slice(rank * e_local, (rank + 1) * e_local)
        x = c["x"][tok].clone().requires_grad_(True)
        w_router = c["w_router"].clone().requires_grad_(True)
        w = {k: c[k][exp].clone().requires_grad_(True) for k in ("w_gate", "w_up", "w_down")}
        ids = None if c["expert_ids"] is None else c["expert_ids"][tok]
        y, info = moe_layer_ep(x, w_router, w["w_gate"], w["w_up"], w["w_down"], TOP_K, 2 * world, ids)
        y.backward(c["grad_y"][tok])
        allreduce_grad(w_router.grad)
        results[name] = {"y": y.detach(), "x_grad": x.grad, "w_router_grad": w_router.grad,
                         **{f"{k}_grad": v.grad for k, v in w.items()},
                         "send_splits": info.send_splits, "recv_splits": info.recv_splits}
    dist.barrier()
    return results


def main() -> None:
    rank, world, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = run_rank(rank, world)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
