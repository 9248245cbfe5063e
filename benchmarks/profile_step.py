"""Where the time of a fpnbook training step goes: Mask R-CNN and RetinaNet under torch.profiler.

    python benchmarks/profile_step.py [--model both] [--steps 3] [--batch 4] [--threads 2]
                                      [--device auto] [--json PATH] [--quick]

Each model is ``fpnbook.models.build(ModelConfig(kind=..., num_classes=8))`` and trains on
batches of a generated 256 px split (``fpnbook.data.ensure_split``), as ``fpnbook train``
does: forward with targets, sum of the losses, backward, gradient clipping, AdamW step
(``fpnbook.train.make_optimizer`` with the default ``TrainConfig``), EMA update. Two
warm-up steps, then ``--steps`` steps timed without the profiler (the best of them is the
honest wall time of a step), then ``--steps`` more under ``torch.profiler`` (CPU, plus
CUDA kernels when the model runs on a GPU; float32, no mixed precision). Every step reads
a different batch.

**Stages.** The library marks the parts of its forward with
:func:`fpnbook.timing.stage`, a ``record_function("fpnbook::<name>")`` block that is a
no-op when no profiler runs; this script adds ``step``, ``forward``, ``backward``,
``clip_grad``, ``optimizer`` and ``ema``. Stages nest (``roi_align`` runs inside
``roi_heads``, which runs inside ``forward``). The first table gives for each stage:

- ``self ms``: milliseconds per step spent inside the stage but outside any stage nested
  in it (for ``rpn``: the RPN's glue code not covered by ``rpn.head``, ``rpn.anchors``,
  ...). A stage entered several times per step (``checks``, ``roi_align``: box and mask
  pooling) is summed over its entries. Self times partition the step, so the ``share``
  column sums to 100%; the row ``step`` is the loop's own glue (zero_grad, summing the
  losses), ``forward`` the model's (e.g. the RoI heads' loops between their stages).
- ``total ms``: everything inside the stage, nested stages included.

Times are CPU wall time of the thread that runs the step (with ``--threads`` > 1 the
intra-op threads work inside that time; they are not added on top). The backward pass
is one stage: autograd runs it after the forward, so its cost is not split by stage.
With a GPU, ``device ms`` adds the CUDA kernel time launched from each stage.

**Ops.** The second table lists the aten (and torchvision) ops by self time, i.e.
excluding the ops they call: calls and milliseconds per step, share of the step, and the
stages that time is spent in (fractions of the op's own time, those above 5%). Last, the
*convolution share*: the time inside every convolution op, forward (``aten::conv2d``,
``conv_transpose2d``, ``mkldnn_convolution``...) and backward (``ConvolutionBackward0``
and what it calls), over the step.

The profiler adds a few microseconds per op, so the many small ops of the box
bookkeeping look a little more expensive than they are. Both step times are printed; on
a busy machine they also differ by the load of the moment (the tables' shares are the
steadier numbers). ``--json PATH`` writes the same numbers.
``--quick`` is the smoke test: batch 2, one warm-up, one timed and one profiled step, on
a cached split of 8 images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from fpnbook import data  # noqa: E402
from fpnbook.models import ModelConfig, build  # noqa: E402
from fpnbook.timing import STAGE_PREFIX, stage  # noqa: E402
from fpnbook.train import ModelEMA, TrainConfig, make_optimizer, move_to, resolve_device  # noqa: E402

NUM_CLASSES = 8
IMAGE_SIZE = 256
MODELS = {"mask_rcnn": "Mask R-CNN", "retinanet": "RetinaNet"}
TOP_OPS = 15
# Every op of a convolution, forward and backward, by name; its sub-ops count with it.
CONVOLUTION = re.compile(r"conv(olution|_transpose|_depthwise|\d+d)|Convolution")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (and as many timed ones)")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 1 step, 8 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch = 1, 2
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--steps, --batch and --threads must be positive")
    return args


def load_batches(count: int, batch: int, num_images: int, device: torch.device) -> list[tuple[list, list]]:
    """``count`` batches of ``batch`` (image, target) pairs of the generated split, on ``device``.

    Images are Tensor[3, 256, 256]; targets carry ``boxes`` [G, 4], ``labels`` [G], ``masks``
    [G, 256, 256] as the dataset gives them (torchvision tv_tensors, as in ``fpnbook train``).
    Batch ``i`` takes images ``i * batch ...`` of the split, wrapping around.
    """
    image_dir, ann_file = data.ensure_split("train", num_images, image_size=IMAGE_SIZE, seed=0, progress=False)
    dataset = data.CocoDataset(image_dir, ann_file)
    batches = []
    for i in range(count):
        images, targets = data.collate([dataset[j % len(dataset)] for j in range(i * batch, (i + 1) * batch)])
        batches.append(move_to(images, targets, device))
    return batches


def make_step(kind: str, device: torch.device):
    """A seeded fresh model and its training step ``step(images, targets)``, marked in stages."""
    torch.manual_seed(0)
    model = build(ModelConfig(kind=kind, num_classes=NUM_CLASSES)).to(device).train()
    config = TrainConfig()
    optimizer = make_optimizer(model, config)
    ema = ModelEMA(model, config.ema_decay) if config.ema_decay else None
    params = [p for p in model.parameters() if p.requires_grad]

    def step(images: list, targets: list) -> None:
        with stage("step"):
            with stage("forward"):
                losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            with stage("backward"):
                loss.backward()
            if config.clip_grad_norm:
                with stage("clip_grad"):
                    nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
            with stage("optimizer"):
                optimizer.step()
            if ema is not None:
                with stage("ema"):
                    ema.update(model)
            if device.type == "cuda":
                torch.cuda.synchronize()  # queued kernels belong to this step
    return step


def enclosing(event):
    """The innermost stage event around ``event`` on its thread (itself excluded), or None."""
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(STAGE_PREFIX):
        parent = parent.cpu_parent
    return parent


def summarise(events, steps: int, cuda: bool) -> dict:
    """Stage and op tables of ``steps`` profiled steps (see the module docstring); times in ms per step."""
    events = [e for e in events if e.device_type == DeviceType.CPU]
    step_events = [e for e in events if e.name == STAGE_PREFIX + "step"]
    if len(step_events) != steps:
        raise RuntimeError(f"expected {steps} profiled steps, found {len(step_events)}")
    step_us = sum(e.cpu_time_total for e in step_events)
    per_step = 1e-3 / steps  # us summed over the steps -> ms per step
    stage_events = sorted((e for e in events if e.name.startswith(STAGE_PREFIX)), key=lambda e: e.time_range.start)

    def stage_name(event) -> str:
        return event.name[len(STAGE_PREFIX):]

    def owner(event):
        """The innermost stage around an op: up its call tree, else (an op of another thread,
        e.g. CUDA's autograd thread) the innermost stage whose time span holds its start."""
        found = enclosing(event)
        if found is None:
            holding = [s for s in stage_events if s.time_range.start <= event.time_range.start < s.time_range.end]
            found = max(holding, key=lambda s: s.time_range.start, default=None)
        return found

    stages: dict[str, dict] = {}
    for e in stage_events:  # in order of first entry, which orders the table
        depth, parent = 0, enclosing(e)
        while parent is not None:
            depth, parent = depth + 1, enclosing(parent)
        stages.setdefault(stage_name(e), {"name": stage_name(e), "depth": depth, "self_us": 0.0,
                                          "total_us": 0.0, "device_us": 0.0})
    for e in stage_events:
        row, parent = stages[stage_name(e)], enclosing(e)
        row["self_us"] += e.cpu_time_total
        if parent is not None:
            stages[stage_name(parent)]["self_us"] -= e.cpu_time_total
        # A stage entered again inside itself counts once in its total.
        outer = parent
        while outer is not None and outer.name != e.name:
            outer = enclosing(outer)
        if outer is None:
            row["total_us"] += e.cpu_time_total

    ops: dict[str, dict] = defaultdict(lambda: {"calls": 0, "self_us": 0.0, "device_us": 0.0,
                                                "stages": defaultdict(float)})
    conv_us = conv_device_us = 0.0
    for e in events:
        if e.name.startswith(STAGE_PREFIX) or e.name.startswith("ProfilerStep"):
            continue
        around = owner(e)
        if around is None:
            continue  # outside the steps (the profiler's own start and stop)
        where = stage_name(around)
        op = ops[e.name]
        op["calls"] += 1
        op["self_us"] += e.self_cpu_time_total
        op["stages"][where] += e.self_cpu_time_total
        if cuda:
            op["device_us"] += e.self_device_time_total
            stages[where]["device_us"] += e.self_device_time_total
        if CONVOLUTION.search(e.name):
            parent = e.cpu_parent
            while parent is not None and not CONVOLUTION.search(parent.name):
                parent = parent.cpu_parent
            if parent is None:  # the outermost op of this convolution: count it with its sub-ops
                conv_us += e.cpu_time_total
                conv_device_us += e.device_time_total if cuda else 0.0

    def ms(us: float) -> float:
        return round(us * per_step, 3)

    def share(us: float) -> float:
        return round(us / step_us, 4)

    stage_rows = []
    for row in stages.values():
        out = {"name": row["name"], "depth": row["depth"], "self_ms": ms(row["self_us"]),
               "share": share(row["self_us"]), "total_ms": ms(row["total_us"])}
        if cuda:
            out["device_ms"] = ms(row["device_us"])
        stage_rows.append(out)
    op_rows = []
    for name, op in sorted(ops.items(), key=lambda item: -item[1]["self_us"])[:TOP_OPS]:
        where = sorted(op["stages"].items(), key=lambda item: -item[1])
        out = {"name": name, "calls": round(op["calls"] / steps, 1), "self_ms": ms(op["self_us"]),
               "share": share(op["self_us"]),
               # Where this op's time is spent: fractions of its own time, the main stages only.
               "stages": {s: round(us / op["self_us"], 3) for s, us in where[:3] if us > 0.05 * op["self_us"]}}
        if cuda:
            out["device_ms"] = ms(op["device_us"])
        op_rows.append(out)
    result = {"step_ms_profiled": ms(step_us), "stages": stage_rows, "top_ops": op_rows,
              "convolution_ms": ms(conv_us), "convolution_share": share(conv_us)}
    if cuda:
        result["convolution_device_ms"] = ms(conv_device_us)
    return result


def profile_model(kind: str, batches: list, warmup: int, steps: int, device: torch.device) -> dict:
    """Warm up, time ``steps`` steps, profile ``steps`` more; the numbers of :func:`summarise`."""
    step = make_step(kind, device)
    batches = iter(batches)
    for _ in range(warmup):
        step(*next(batches))
    walls = []
    for _ in range(steps):
        images, targets = next(batches)
        start = time.perf_counter()
        step(images, targets)
        walls.append(time.perf_counter() - start)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(*next(batches))
    result = summarise(prof.events(), steps, cuda)
    # The best, as fpnbook.timing.best_times: other work on the machine only ever adds time.
    return {"step_ms": round(1e3 * min(walls), 1), **result}


def print_report(kind: str, result: dict, batch: int, device: torch.device) -> None:
    cuda = "device_ms" in result["stages"][0]
    print(f"\nfpnbook {MODELS[kind]} training step, {batch} x {IMAGE_SIZE} px, device {device}, "
          f"{torch.get_num_threads()} threads: {result['step_ms']:.0f} ms/step "
          f"({result['step_ms_profiled']:.0f} ms under the profiler)")
    print(f"{'stage':<28}{'self ms':>9}{'share':>8}{'total ms':>10}" + (f"{'device ms':>11}" if cuda else ""))
    for row in result["stages"]:
        name = "  " * row["depth"] + row["name"]
        line = f"{name:<28}{row['self_ms']:>9.1f}{row['share']:>8.1%}{row['total_ms']:>10.1f}"
        print(line + (f"{row['device_ms']:>11.1f}" if cuda else ""))
    print(f"\ntop {len(result['top_ops'])} ops by self time")
    print(f"{'op':<52}{'calls':>7}{'ms':>8}{'share':>8}  stages")
    for op in result["top_ops"]:
        where = ", ".join(f"{s} {v:.0%}" for s, v in op["stages"].items())
        print(f"{op['name'][:51]:<52}{op['calls']:>7.0f}{op['self_ms']:>8.1f}{op['share']:>8.1%}  {where}")
    print(f"convolution share of the step: {result['convolution_share']:.1%} "
          f"({result['convolution_ms']:.1f} ms of {result['step_ms_profiled']:.1f}, forward + backward)")


def write_json(path: Path, payload: dict) -> None:
    """Write atomically: a temporary file beside ``path``, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    os.chmod(f.name, 0o644)  # a temporary file is private (0600); the result is for everyone to read
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    warmup = 1 if args.quick else 2
    count = warmup + 2 * args.steps
    # Enough images that no batch repeats; --quick reuses one small cached split.
    num_images = 8 if args.quick else max(64, count * args.batch)
    batches = load_batches(count, args.batch, num_images, device)
    kinds = list(MODELS) if args.model == "both" else [args.model]
    results = {}
    for kind in kinds:
        results[kind] = profile_model(kind, batches, warmup, args.steps, device)
        print_report(kind, results[kind], args.batch, device)
    payload = {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
               "image_size": IMAGE_SIZE, "steps": args.steps, "num_classes": NUM_CLASSES,
               "torch": torch.__version__, "models": results}
    if args.json is not None:
        write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
