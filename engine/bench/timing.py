"""Timing helpers: medians and percentiles, peak memory, a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def median_ms(function: Callable[[], object], repeats: int, warm_up: int = 1) -> float:
    """Median wall-clock milliseconds of function() over repeats calls, after warm_up calls."""
    for _ in range(warm_up):
        function()
    samples = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (numpy's default method); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB): getrusage, else psutil."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    except ImportError:
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / (1024 * 1024)


def cpu_model() -> str:
    """lscpu's 'Model name' (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, cores, load average and GPU (when torch sees one), for the JSON report."""
    import torch

    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count() or 0,
            "python": platform.python_version(), "torch": torch.__version__}
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False) or 0
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    info["cpu_sgemm_gflops"] = round(cpu_sgemm_gflops(), 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_sgemm_gflops(size: int = 512, repeats: int = 20) -> float:
    """The host's float32 matrix-product rate with torch's threads (best of a few timed runs
    of repeats products): shared VMs vary by hour, and this says how fast this one was."""
    import torch

    a = torch.randn(size, size)
    a @ a
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 * repeats / best / 1e9
