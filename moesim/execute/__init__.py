"""Execution of MoE layers on torch.distributed (expert parallelism); import the submodules directly."""
