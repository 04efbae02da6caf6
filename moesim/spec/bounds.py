"""Bounds on every physical quantity and size a file may give, in SI, declared once. Wide enough for any machine
from one CPU core to well beyond today's largest GPU clusters and models; narrow enough that nothing derived from
them leaves float range or wraps an integer (a 1e-300 TFLOP/s peak once made every timestamp inf, a 1e300 us
latency broke the step-time histogram). Error lines and the JSON Schema show them in each key's written unit."""

from __future__ import annotations

# hardware (hw_profiles/*.yaml)
MIN_FLOP_PER_S, MAX_FLOP_PER_S = 1e9, 1e21  # 1 GFLOP/s .. 1 ZFLOP/s (0.001 .. 1e9 TFLOP/s) per GPU
MIN_BYTES_PER_S, MAX_BYTES_PER_S = 1e6, 1e15  # 1 MB/s .. 1 PB/s per link, NIC or HBM
MIN_TABLE_BYTES_PER_S = 1e3  # a measured busbw: tiny messages over gloo reach only ~100 KB/s
MIN_MEMORY_BYTES, MAX_MEMORY_BYTES = 1e6, 1e15  # 1 MB .. 1 PB of memory per GPU
MAX_LATENCY_S = 1.0  # a latency or per-peer overhead longer than a second is no interconnect
MIN_EFFICIENCY = 1e-3  # fractions of peak in [0.1 %, 100 %]
MAX_DEVICES = 4096  # GPUs in one NVLink domain, NICs in one node (NVL72 has 72)
MAX_NODES = 65_536  # nodes in a cluster (today's largest: ~12,500 8-GPU nodes)
MAX_OVERSUBSCRIPTION = 100.0  # leaf-to-spine (real fabrics: 1 to 4)
MAX_TILE_ROWS = 65_536  # an expert GEMM's row tile (real: 64 to 256)
MAX_SMS = 65_536  # streaming multiprocessors or cores of one device (H100: 132)
MAX_RANKS = 2**20  # ranks in a measured collective

FRACTION = dict(ge=MIN_EFFICIENCY, le=1.0)
BANDWIDTH = dict(ge=MIN_BYTES_PER_S, le=MAX_BYTES_PER_S)
LATENCY = dict(ge=0.0, le=MAX_LATENCY_S)

# model and training sizes: products such as tokens x hidden x ffn x layers stay far inside float range, counts of
# tokens and parameters inside int64
MAX_LAYERS = 4096  # the deepest published LLMs have ~130
MAX_HIDDEN = 2**20  # model width (largest published: ~25k)
MAX_HEADS = 2**16  # attention heads, key/value heads, head width
MAX_FFN = 2**22  # FFN width of a dense layer or an expert (largest published: ~50k)
MAX_EXPERTS = 2**14  # routed or shared experts per layer (largest published: 2,048; 2**16: minutes per step)
MAX_VOCAB = 2**24  # vocabulary (largest published: ~260k)
MAX_SEQUENCES = 2**24  # sequences per step or micro-batch
MAX_SEQ_LEN = 2**24  # tokens per sequence (16 Mi; the longest contexts trained: ~10 M)
MAX_STATE_BYTES_PER_PARAM = 1024.0  # optimizer state (Adam mixed precision: 12)
INT32_MAX = 2**31 - 1  # routed assignments per (micro-batch, source rank): loads are int32 counts
