"""Column layouts of the raw calibration samples (one row per measured configuration), shared by the measuring,
fitting and writing code. Times are seconds over `repeats` timed runs after warm-up."""

from __future__ import annotations

# Expert GEMM samples. impl: "triton" (moesim.kernels grouped GEMM), "torch_loop" (per-expert torch matmuls,
# the reference), "torch_matmul" (one dense matmul of the same FLOP: the ceiling). distribution: "even" or
# "skewed" token counts across experts; tokens_per_expert is the mean. flop counts the useful (unpadded) work.
KERNEL_COLUMNS = ("impl", "dtype", "hidden", "ffn", "num_experts", "distribution", "tokens_per_expert",
                  "flop", "time_median_s", "time_p10_s", "time_p90_s", "repeats")

# Collective samples, nccl-tests conventions: `bytes` is the per-rank buffer size nccl-tests calls "size"
# (all-reduce: the buffer; all-gather / reduce-scatter: the gathered output; all-to-all: what one rank sends in
# total, its own share included); algbw = bytes / time; busbw = algbw x factor (all-reduce 2(n-1)/n,
# all-gather / reduce-scatter / all-to-all (n-1)/n, p2p 1). op: all_reduce, all_gather, reduce_scatter,
# all_to_all, all_to_all_skewed (one rank receives `skew` times the others' share), p2p.
# tier: "intra_node" (all ranks on one host), "inter_node" (one rank per host, same local rank), "pair" (p2p).
COLLECTIVE_COLUMNS = ("op", "tier", "ranks", "bytes", "time_median_s", "time_p10_s", "time_p90_s", "algbw_GBps",
                      "busbw_GBps", "repeats", "src", "dst")

BUSBW_FACTOR = {  # nccl-tests: busbw = algbw x factor(n)
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "all_to_all_skewed": lambda n: (n - 1) / n,
    "p2p": lambda n: 1.0,
}
