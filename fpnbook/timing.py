"""Timing that is fair to both sides: warm up, take turns, keep the best of several runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_times(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
               warmup: int = 1) -> dict[str, float]:
    """Best wall time in seconds of each function.

    The functions take turns, so a burst of load from elsewhere on the machine hits all of
    them alike; on CUDA each run is bracketed by synchronisations so queued kernels count.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
