"""Expert GEMM throughput against tokens per expert: the Triton grouped GEMM (GPU only), the per-expert torch
loop and torch's dense matmul (the ceiling), for the model presets' expert shapes (bf16 on a GPU; fp32 and the
small quick shape on a CPU). Prints TFLOP/s and the Triton kernel's fraction of the dense ceiling.
Usage: .venv/bin/python benchmarks/bench_kernels.py [--quick]
The issue's goal on H100-class GPUs: >= 70 % of dense bf16 peak at >= 4k tokens per expert."""

from __future__ import annotations

import sys

import pandas as pd

from moesim.calibration.kernels import FULL_TOKENS, QUICK_SHAPES, QUICK_TOKENS, measure_kernels, preset_shapes


def main() -> None:
    import torch

    quick = "--quick" in sys.argv
    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", "bf16") if gpu else ("cpu", "fp32")
    if not gpu:
        torch.set_num_threads(1)
    shapes = (preset_shapes()[:1] if quick else preset_shapes()) if gpu else QUICK_SHAPES
    tokens = ((256, 4096) if quick else FULL_TOKENS) if gpu else QUICK_TOKENS
    df = measure_kernels(shapes, tokens, dtype, device, repeats=10, warmup=3)
    df = df[df["distribution"] == "even"].copy()
    df["TFLOPs"] = df["flop"] / df["time_median_s"] / 1e12
    table = df.pivot_table(index=["hidden", "ffn", "tokens_per_expert"], columns="impl", values="TFLOPs")
    if "triton" in table:
        table["triton / dense"] = table["triton"] / table["torch_matmul"]
    name = torch.cuda.get_device_name() if gpu else "CPU, 1 thread"
    print(f"# {name}, {dtype}, TFLOP/s per implementation (median of 10)")
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(table.round(4).to_string())


if __name__ == "__main__":
    main()
