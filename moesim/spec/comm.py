"""How the training system moves tokens and overlaps communication with compute: Megatron-LM's MoE token
dispatcher and its overlap flags, each field named after the flag it mirrors."""

from __future__ import annotations

from moesim.spec.base import SpecEnum, SpecModel, spec_field


class TokenDispatcher(SpecEnum):
    """Megatron-LM --moe-token-dispatcher-type (fidelity.md 4)."""

    ALLTOALL = "alltoall"  # one row per (token, chosen expert) to the expert's rank, all-to-all by per-rank splits
    ALLGATHER = "allgather"  # every rank gathers the EP x ETP group's tokens and keeps its experts' rows; the
    # combine is the mirror reduce-scatter (Megatron's default dispatcher)
    FLEX = "flex"  # DeepEP: one copy per (token, destination node) over the scale-out network to the GPU of the
    # same local rank, forwarded over NVLink to each destination GPU once per (token, GPU)


class CommSpec(SpecModel):
    dispatcher: TokenDispatcher = spec_field(
        TokenDispatcher.ALLTOALL, help="MoE token dispatcher (Megatron-LM --moe-token-dispatcher-type): alltoall, "
        "allgather (Megatron's default) or flex (DeepEP: one copy per destination node, then NVLink)")
    overlap_grad_reduce: bool = spec_field(
        False, help="reduce gradients over data parallel during the backward, bucket by bucket "
        "(Megatron-LM --overlap-grad-reduce): only the last stage chunk's bucket stays exposed")
    overlap_param_gather: bool = spec_field(
        False, help="with the distributed optimizer, all-gather updated parameters during the next forward "
        "(Megatron-LM --overlap-param-gather)")
    tp_comm_overlap: bool = spec_field(
        False, help="overlap the sequence-parallel all-gather / reduce-scatter with the neighbouring GEMMs "
        "(Megatron-LM --tp-comm-overlap, Transformer Engine userbuffers)")
    moe_a2a_overlap: bool = spec_field(
        False, help="hide the expert all-to-alls behind another micro-batch's compute (Megatron-LM "
        "--overlap-moe-expert-parallel-comm with --delay-wgrad-compute; DeepSeek-V3's DualPipe overlaps alike)")
    shared_expert_overlap: bool = spec_field(
        False, help="run the shared experts while the dispatch is in flight (Megatron-LM "
        "--moe-shared-expert-overlap; alltoall and flex dispatchers)")
