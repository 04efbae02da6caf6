"""Column layouts of the raw calibration samples (one row per measured configuration), shared by the measuring,
fitting and writing code. Times are seconds over `repeats` timed runs after warm-up."""

from __future__ import annotations

# nccl-tests: busbw = algbw x factor(n); defined beside the network models that time the same collectives
from moesim.network.bandwidth import BUSBW_FACTOR as BUSBW_FACTOR

# Expert GEMM samples. impl: "triton" (moesim.kernels grouped GEMM), "torch_loop" (per-expert torch matmuls,
# the reference), "torch_matmul" (one dense matmul of the same FLOP: the ceiling). distribution: "even" or
# "skewed" token counts across experts; tokens_per_expert is the mean. flop counts the useful (unpadded) work.
KERNEL_COLUMNS = ("impl", "dtype", "hidden", "ffn", "num_experts", "distribution", "tokens_per_expert",
                  "flop", "time_median_s", "time_p10_s", "time_p90_s", "repeats")

# Expert FFN samples (expert_ffn.csv): the routed experts' SwiGLU FFN as `moesim execute` trains it, E experts
# of tokens_per_expert rows each, inputs and weights requiring gradients. impl "torch_loop": one
# moesim.kernels.reference.swiglu_ffn per expert (what a CPU rank runs); "triton": moesim.kernels.expert_ffn (a
# GPU's). pass "forward": the call; "forward_backward": the call and the backward of its outputs (weight
# gradients accumulating, as in a step); the backward is their difference (the fit takes it). flop: the timed
# call's useful FLOP, forward 2 x rows x hidden x ffn x 3 GEMMs, forward_backward 3x that.
EXPERT_FFN_FILE = "expert_ffn.csv"
EXPERT_FFN_COLUMNS = ("impl", "dtype", "hidden", "ffn", "num_experts", "tokens_per_expert", "pass", "flop",
                      "time_median_s", "time_p10_s", "time_p90_s", "repeats")
EXPERT_FFN_PASSES = ("forward", "forward_backward")

# Collective samples, nccl-tests conventions: `bytes` is the per-rank buffer size nccl-tests calls "size"
# (all-reduce: the buffer; all-gather / reduce-scatter: the gathered output; all-to-all: what one rank sends in
# total, its own share included); algbw = bytes / time; busbw = algbw x factor (all-reduce 2(n-1)/n,
# all-gather / reduce-scatter / all-to-all (n-1)/n, p2p 1). op: all_reduce, all_gather, reduce_scatter,
# all_to_all, all_to_all_skewed (one rank receives `skew` times the others' share), p2p.
# tier: "intra_node" (all ranks on one host), "inter_node" (one rank per host, same local rank), "pair" (p2p).
# time_mean_s: the mean over repeats of the slowest rank's time (nccl-tests' time; algbw = bytes / time_mean_s),
# time_median_s / _p10_s / _p90_s: its quantiles (moesim.calibration.collectives says how each call is timed).
COLLECTIVE_COLUMNS = ("op", "tier", "ranks", "bytes", "time_mean_s", "time_median_s", "time_p10_s", "time_p90_s",
                      "algbw_GBps", "busbw_GBps", "repeats", "src", "dst")

# ------------------------------------------------------------------------------------------- compute model
# The compute model's samples (`moesim calibrate` writes them beside kernels.csv; moesim/calibration/compute.py
# measures them, compute_fit.py fits the profile's compute keys to them). Every time is the wall time of ONE call
# out of `calls` back-to-back calls timed together (CUDA events around them on a GPU, the wall clock on a CPU),
# so the per-call launch cost is in it, as the simulator charges one launch per kernel on top of its op time.
# time_median_s, time_p10_s, time_p90_s: that per-call time's median and 10th/90th percentiles over `repeats`
# timings, after warm-up.
GEMM_FILE = "gemm.csv"
ELEMENTWISE_FILE = "elementwise.csv"
LAUNCH_FILE = "launch.csv"
ATTENTION_FILE = "attention.csv"
COMPUTE_FILES = (GEMM_FILE, ELEMENTWISE_FILE, LAUNCH_FILE, ATTENTION_FILE)

# Dense GEMMs [m, k] x [k, n] -> [m, n], row-major operands, in `dtype` (the calibrated training dtype);
# flop = 2 m n k. The grid covers skinny m (a few rows: operand-bound) and small k (output-write bound).
GEMM_COLUMNS = ("dtype", "m", "n", "k", "flop", "time_median_s", "time_p10_s", "time_p90_s", "calls", "repeats")

# Element-wise kernels on contiguous tensors of `elements` elements of `dtype`. op "copy": dst.copy_(src) reads
# and writes each element once; "add": torch.add(a, b, out=c) reads two and writes one. bytes: all bytes read
# and written by one call; bandwidth_GBps = bytes / time_median_s / 1e9 (STREAM's convention).
ELEMENTWISE_COLUMNS = ("op", "dtype", "elements", "bytes", "time_median_s", "time_p10_s", "time_p90_s",
                       "bandwidth_GBps", "calls", "repeats")

# Launch overhead: op "add_scalar" is x.add_(1) on a one-element tensor, as close to an empty kernel as torch
# gets; its per-call time back-to-back is the cost one more kernel adds (launch, dispatch, the gap between
# kernels).
LAUNCH_COLUMNS = ("op", "dtype", "time_median_s", "time_p10_s", "time_p90_s", "calls", "repeats")

# The fused attention core: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True) on
# [batch, heads, seq_len, head_dim] tensors of `dtype` (q, k and v alike, requiring gradients, as in training).
# pass "forward": the call alone; "forward_backward": the call and torch.autograd.grad of its output for q, k and v
# (FlashAttention's benchmark's fwd+bwd). The backward pass's time is forward_backward's minus forward's (the fit
# takes it; both rows are kept as measured). flop: FlashAttention's convention for the timed call, which is what
# moesim.cost.compute.attention_flop counts: forward 4·batch·heads·head_dim·seq_len²/2 (causal: seq_len/2 keys
# per query, keys_per_query), forward_backward 3.5x that (the backward is 2.5x the forward, cost/attention.py).
# backend: the SDPA implementation torch dispatched to (torch._fused_sdp_choice: flash_attention,
# efficient_attention, cudnn_attention, math, ...; "unknown" where torch does not say).
ATTENTION_COLUMNS = ("dtype", "pass", "batch", "heads", "seq_len", "head_dim", "flop", "time_median_s",
                     "time_p10_s", "time_p90_s", "calls", "repeats", "backend")
ATTENTION_PASSES = ("forward", "forward_backward")
