"""Timing: fair wall-clock comparisons, and named stages for the profiler.

:func:`best_times` is fair to both sides: warm up, take turns, keep the best of several runs.
:func:`stage` names a block of a model's forward (``fpnbook::rpn.proposals``, ...), so that
``benchmarks/profile_step.py`` can say which part of a training step the time goes to.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

def train_step_fn(model: torch.nn.Module, images: list, targets: list) -> Callable[[], None]:
    """One detection training step (forward, backward, SGD) on a throwaway copy, so timing never changes ``model``."""
    import copy

    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def infer_fn(model: torch.nn.Module, images: list) -> Callable[[], None]:
    """One inference pass of ``model`` (eval mode, no gradients) on ``images``."""
    @torch.no_grad()
    def infer() -> None:
        model.eval()(images)
    return infer


# Prefix of every stage's name in a profiler trace, so the stages stand apart from aten ops.
STAGE_PREFIX = "fpnbook::"


def stage(name: str) -> AbstractContextManager:
    """Context manager: the block shows as ``fpnbook::<name>`` in a ``torch.profiler`` trace.

    Outside a profiler it is a no-op (about 1.5 us), so the library keeps these blocks in its
    forward code for good. The check matters: an unconditional ``record_function`` costs ~30 us
    on a CPU even when nothing records it.
    """
    if torch._C._autograd._profiler_enabled():
        return torch.profiler.record_function(STAGE_PREFIX + name)
    return contextlib.nullcontext()


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
