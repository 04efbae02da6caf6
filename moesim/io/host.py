"""What this machine is, as the calibration names it: a CPU rank's device description."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as /proc/cpuinfo gives it (e.g. "AMD EPYC", "Intel(R) Xeon(R) Processor"), else the
    platform's processor or machine name."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_rank_description(cpu: str | None = None) -> str:
    """A CPU rank of `moesim calibrate` and `moesim execute` (one thread), as a profile's gpu.name records it."""
    return f"CPU rank: {cpu if cpu is not None else cpu_model()}, 1 thread"
