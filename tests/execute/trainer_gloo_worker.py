"""One gloo rank of the executed-model tests:
``python trainer_gloo_worker.py RANK WORLD PORT CASE_FILE [triton | train] OUT_DIR``.

CASE_FILE holds (scenario, routing) pickled by the test. By default the rank takes step 0's placement (shadows
broadcast), runs step 0's passes and the gradient reductions (no optimizer step) and saves its parameters'
gradients by name and its losses to OUT_DIR/rankR.pt; with `triton` the experts run on moesim's Triton kernels in
the interpreter. With `train` it runs every step of the scenario (warm-up included: placement, passes, gradient
reductions, Adam) and saves its losses, its parameters after the last step by name and the ops it recorded.
A plain subprocess (no pickling of the rank function), so a hung rank can be killed.
"""

from __future__ import annotations

import os
import pickle
import sys

import torch


def main() -> None:
    rank, world, port, case_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[-1]
    mode = sys.argv[5] if len(sys.argv) > 6 else ""
    if mode == "triton":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from moesim.execute.train import Trainer

    with open(case_file, "rb") as fh:
        sc, routing = pickle.load(fh)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(sc, routing, rank, torch.device("cpu"), torch.float32, triton_experts=mode == "triton")
        if mode == "train":
            for step in range(sc.simulation.warmup_steps + sc.simulation.steps):
                trainer.step(step)
            saved = {"params": {name: t.detach().clone() for name, t in trainer.params.items()
                                if isinstance(t, torch.Tensor)},
                     "ops": [row[4] for row in trainer.timeline.rows]}
        else:
            trainer.place(0)
            trainer.forward_backward(0)
            trainer.sync_gradients(0)
            saved = {"grads": {name: t.grad.clone() for name, t in trainer.params.items()
                               if isinstance(t, torch.Tensor) and t.grad is not None},
                     "shards": trainer.params["shards"]}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save({**saved, "losses": trainer.losses}, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
