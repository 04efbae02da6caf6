"""One gloo rank of the executed-model test:
``python trainer_gloo_worker.py RANK WORLD PORT CASE_FILE [triton] OUT_DIR``.

CASE_FILE holds (scenario, routing) pickled by the test. The rank takes step 0's placement (shadows
broadcast), runs step 0's passes and the gradient reductions (no optimizer step) and saves its parameters'
gradients by name and its losses to OUT_DIR/rankR.pt. A plain subprocess (no pickling of the rank function), so a
hung rank can be killed. With `triton`, the experts run on moesim's Triton kernels in the interpreter.
"""

from __future__ import annotations

import os
import pickle
import sys

import torch


def main() -> None:
    rank, world, port, case_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[-1]
    triton = sys.argv[5:-1] == ["triton"]
    if triton:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from moesim.execute.train import Trainer

    with open(case_file, "rb") as fh:
        sc, routing = pickle.load(fh)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(sc, routing, rank, torch.device("cpu"), torch.float32, triton_experts=triton)
        trainer.place(0)
        trainer.forward_backward(0)
        trainer.sync_gradients(0)
        grads = {name: t.grad.clone() for name, t in trainer.params.items()
                 if isinstance(t, torch.Tensor) and t.grad is not None}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save({"grads": grads, "losses": trainer.losses, "shards": trainer.params["shards"]},
               os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
