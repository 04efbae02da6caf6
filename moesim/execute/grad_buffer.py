"""Megatron's contiguous gradient buffer and its distributed optimizer, for one group of parameters.

The parameters' `.grad` are views of one flat buffer (Megatron's DistributedDataParallel grad buffer), so the
backward accumulates into it in place and the data-parallel reduction is one collective on it, without copies.
With the distributed optimizer (`--use-distributed-optimizer`) the parameters are views of one flat buffer too:
the gradients are reduce-scattered, this rank's optimizer updates its 1/size shard of the flat parameters (its
Adam state is that shard's only), and the updated shards are all-gathered back. The buffers are padded to a
multiple of the group size, as Megatron pads its buckets.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# torch's current names (the older ones warn that they are deprecated), falling back to the older ones
ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


class GradBuffer:
    def __init__(self, params: list[torch.Tensor], group, size: int, index: int, sharded: bool,
                 device: torch.device, dtype: torch.dtype):
        """params: the group's parameters in the same order on every member; group/size/index: the process group,
        its size and this rank's place in it; sharded: the distributed optimizer (only when size > 1)."""
        self.params, self.group, self.size = params, group, size
        self.sharded = sharded and size > 1
        self.numels = [p.numel() for p in params]
        total = sum(self.numels)
        self.padded = -(-total // size) * size
        self.offsets = [sum(self.numels[:i]) for i in range(len(params))]
        self.grad = torch.zeros(self.padded, device=device, dtype=dtype)
        self.shard = None
        if self.sharded:
            self.data = torch.zeros(self.padded, device=device, dtype=dtype)
            for p, start, n in zip(params, self.offsets, self.numels):
                self.data[start:start + n].copy_(p.detach().reshape(-1))
                p.data = self.data[start:start + n].view_as(p)
            width = self.padded // size
            self.shard = self.data.narrow(0, index * width, width).requires_grad_(True)  # what Adam updates
        self.bind()

    @property
    def nbytes(self) -> float:
        return float(self.grad.numel() * self.grad.element_size())

    def bind(self) -> None:
        """Point every parameter's .grad at its piece of the buffer (autograd then adds into it in place)."""
        for p, start, n in zip(self.params, self.offsets, self.numels):
            p.grad = self.grad[start:start + n].view_as(p)

    def optimizer_params(self) -> list[torch.Tensor]:
        """What this rank's optimizer updates: its shard of the flat parameters, or every parameter."""
        return [self.shard] if self.shard is not None else list(self.params)

    def reduce(self) -> None:
        """The mean gradient over the group: all-reduced into the buffer, or reduce-scattered into the shard's."""
        if self.size == 1 or not self.padded:
            return
        if self.sharded:
            out = self.grad.new_empty(self.padded // self.size)
            REDUCE_SCATTER(out, self.grad, group=self.group)
            self.shard.grad = out.div_(self.size)
        else:
            dist.all_reduce(self.grad, group=self.group)
            self.grad.div_(self.size)

    def gather(self) -> None:
        """The distributed optimizer's all-gather of the updated shards into every member's parameters."""
        if self.sharded:
            ALL_GATHER(self.data, self.shard.detach().clone(), group=self.group)

    def zero(self) -> None:
        self.grad.zero_()
        if self.shard is not None:
            self.shard.grad = None
