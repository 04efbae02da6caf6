"""One gloo rank that trains: ``python trainer_steps_worker.py RANK WORLD PORT CASE_FILE OUT_DIR``.

CASE_FILE holds (scenario, routing) pickled by the test. The rank runs every step of the scenario (warm-up
included: placement, passes, gradient reductions, Adam) and saves its losses, its parameters after the last step
by name and the ops it recorded to OUT_DIR/rankR.pt.
"""

from __future__ import annotations

import os
import pickle
import sys

import torch


def main() -> None:
    rank, world, port, case_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from moesim.execute.train import Trainer

    with open(case_file, "rb") as fh:
        sc, routing = pickle.load(fh)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(sc, routing, rank, torch.device("cpu"), torch.float32)
        for step in range(sc.simulation.warmup_steps + sc.simulation.steps):
            trainer.step(step)
        params = {name: t.detach().clone() for name, t in trainer.params.items() if isinstance(t, torch.Tensor)}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save({"params": params, "losses": trainer.losses, "ops": [row[4] for row in trainer.timeline.rows]},
               os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
