"""SI constants and converters. Inside moesim every quantity is SI (seconds, bytes, FLOP, bytes/s);
YAML uses human units with explicit suffixes and io/ converts once with these constants."""

KiB = 1024
MiB = 1024**2
GiB = 1024**3
KB = 1e3
MB = 1e6
GB = 1e9

US = 1e-6  # seconds per microsecond
MS = 1e-3  # seconds per millisecond

TFLOP = 1e12  # FLOP per TFLOP (TFLOP/s -> FLOP/s)
GFLOP = 1e9

GB_PER_S = 1e9  # bytes/s per GB/s (nccl-tests convention: GB = 1e9 bytes)
GBIT_PER_S = 1e9 / 8  # bytes/s per Gb/s (NIC line rates)
