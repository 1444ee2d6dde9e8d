"""Wall-clock timing shared by the benchmark scripts (imported as `timing`: they run as scripts from here)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def device_name(device: torch.device) -> str:
    """What the models ran on, for a results header: the GPU's name, or the CPU and whether a GPU sat unused."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU, a GPU present but unused" if torch.cuda.is_available() else "CPU, no GPU"


def synchronize(device: torch.device | None) -> None:
    """Wait for queued CUDA work, so a timer stops when the work is done rather than when it was queued."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall seconds of one call of `run`, synchronised on CUDA."""
    synchronize(device)
    tick = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - tick


def best_seconds(runs: dict[str, Callable[[], object]], repeats: int,
                 device: torch.device | None = None) -> dict[str, float]:
    """Best wall time of each run over `repeats` rounds; the runs alternate within a round, so load
    from other processes on a shared machine hits all of them alike."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], seconds(run, device))
    return best
