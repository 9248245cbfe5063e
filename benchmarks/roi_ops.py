"""fpnbook's RoIAlign / RoIPool against torchvision's compiled kernels, forward + backward.

    python benchmarks/roi_ops.py [--threads 2] [--device auto|cpu|cuda] [--repeats 5] [--quick]

Cases: features [2, 256, 64, 64] (stride 4 over a 256 x 256 image) with 512 boxes,
pooled to 7x7 and 14x14 with sampling_ratio 2 and adaptive (-1); the same for
RoIPool; and a P2..P5 pyramid through MultiScaleRoIAlign. Each time is the best of
``--repeats`` runs of forward + backward (gradient w.r.t. the features) after a
warm-up run. ``ratio`` is fpnbook time / torchvision time: below 1 fpnbook is faster.

Peak memory is the extra memory one forward + backward needs beyond its inputs.
On CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before.
On CPU (Linux only): growth of the process's peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs`` after ``malloc_trim``), which counts every
allocation, torch's or not, at page granularity.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from fpnbook import ops, poolers


def random_boxes(count: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Proposal-like XYXY boxes: sides log-uniform in [8, image_size] pixels, inside the image."""
    side = torch.exp(torch.empty(count, 2).uniform_(2.08, float(torch.log(torch.tensor(float(image_size)))), generator=generator))
    start = torch.rand(count, 2, generator=generator) * (image_size - side)
    return torch.cat([start, start + side], 1)


def make_cases(quick: bool, device: torch.device) -> list[tuple[str, str, Callable, Callable, list[torch.Tensor]]]:
    """(op, case, fpnbook fn, torchvision fn, leaves): each fn maps the feature leaves to pooled output."""
    generator = torch.Generator().manual_seed(0)
    batch, channels, image, count = (2, 16, 64, 64) if quick else (2, 256, 256, 512)
    stride = 4
    features = torch.randn(batch, channels, image // stride, image // stride, generator=generator).to(device)
    boxes = [random_boxes(count // batch, image, generator).to(device) for _ in range(batch)]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=device), b], 1) for i, b in enumerate(boxes)])
    scale = 1 / stride
    size = f"{batch}x{channels}x{image // stride}x{image // stride}, {len(rois)} RoIs"
    cases = []
    for out in (7, 14):
        for ratio in (2, -1):
            cases.append((
                "roi_align", f"{size}, {out}x{out}, sampling {ratio}",
                lambda f, out=out, ratio=ratio: ops.roi_align(f[0], rois, out, scale, ratio),
                lambda f, out=out, ratio=ratio: torchvision.ops.roi_align(f[0], rois, out, scale, ratio),
                [features],
            ))
    for out in (7, 14):
        cases.append((
            "roi_pool", f"{size}, {out}x{out}",
            lambda f, out=out: ops.roi_pool(f[0], rois, out, scale),
            lambda f, out=out: torchvision.ops.roi_pool(f[0], rois, out, scale),
            [features],
        ))
    names = ["p2", "p3", "p4", "p5"]
    pyramid = [torch.randn(batch, channels, image // 2**k, image // 2**k, generator=generator).to(device) for k in range(2, 6)]
    shapes = [(image, image)] * batch
    for out in (7, 14):
        ours = poolers.MultiScaleRoIAlign(names, out, 2)
        theirs = torchvision.ops.MultiScaleRoIAlign(names, out, 2)
        cases.append((
            "MultiScaleRoIAlign", f"P2-P5, {batch}x{channels}ch, {image}px, {len(rois)} RoIs, {out}x{out}, sampling 2",
            lambda f, m=ours: m(OrderedDict(zip(names, f)), boxes, shapes),
            lambda f, m=theirs: m(OrderedDict(zip(names, f)), boxes, shapes),
            pyramid,
        ))
    return cases


def forward_backward(fn: Callable, leaves: list[torch.Tensor]) -> None:
    inputs = [leaf.detach().requires_grad_() for leaf in leaves]
    out = fn(inputs)
    out.backward(torch.ones_like(out))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms(pair: tuple[Callable, Callable], leaves: list[torch.Tensor], repeats: int, device: torch.device):
    """Best time of each of two functions in ms. Their runs alternate, so that a change in
    the machine's load in the middle of a case hits both."""
    best = [float("inf")] * len(pair)
    for fn in pair:
        forward_backward(fn, leaves)  # warm-up
    for _ in range(repeats):
        for i, fn in enumerate(pair):
            sync(device)
            start = time.perf_counter()
            forward_backward(fn, leaves)
            sync(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def peak_mb(fn: Callable, leaves: list[torch.Tensor], device: torch.device) -> float | None:
    """Extra memory at the peak of one forward + backward, in MiB (None where it cannot be measured)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward_backward(fn, leaves)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so reuse cannot hide growth
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        before = _status_kb("VmRSS")
        forward_backward(fn, leaves)
        return (_status_kb("VmHWM") - before) / 1024
    except (OSError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case; the best counts")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--only", default="", help="run only the ops whose name contains this")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu"))
    repeats = 1 if args.quick else args.repeats
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {where}; forward + backward, best of {repeats}")
    print("ratio = fpnbook / torchvision time; peak = extra memory of one forward + backward")
    print(f"{'op':<19} {'case':<58} {'fpnbook ms':>10} {'tv ms':>9} {'ratio':>6} {'peak MiB (ours / tv)':>21}")
    for op, case, ours, theirs, leaves in make_cases(args.quick, device):
        if args.only not in op:
            continue
        t_ours, t_theirs = best_ms((ours, theirs), leaves, repeats, device)
        m_ours, m_theirs = peak_mb(ours, leaves, device), peak_mb(theirs, leaves, device)
        memory = "n/a" if m_ours is None else f"{m_ours:.0f} / {m_theirs:.0f}"
        print(f"{op:<19} {case:<58} {t_ours:>10.1f} {t_theirs:>9.1f} {t_ours / t_theirs:>6.2f} {memory:>21}", flush=True)


if __name__ == "__main__":
    main()
