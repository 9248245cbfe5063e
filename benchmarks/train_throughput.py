"""Training and inference speed of fpnbook's Mask R-CNN against torchvision's, same backbone and settings.

    python benchmarks/train_throughput.py [--threads 2] [--device auto] [--size 256] [--batch 2]
                                          [--data random|generated] [--quick]

Both models start from the same weights: torchvision's ``MaskRCNN`` gets a copy of our
backbone (tiny ResNet + FPN, P2..P6) and of every head weight, and our anchors, proposal
counts, RoI batch per image and canonical scale
(:func:`fpnbook.interop.to_torchvision`). Its transform is set to
``min_size = max_size = size`` and our mean/std, so it normalises and pads but never
resizes. What differs is the code: our RPN, matching, sampling, RoIAlign (pure PyTorch,
chapter 3) and heads against torchvision's (with its C++ RoIAlign); both use
torchvision's NMS kernel.

The batch: ``--data random`` (default) draws random images with 2..8 random box-shaped
objects; ``--data generated`` takes the first ``--batch`` images of the generated
training split (``fpnbook.data.ensure_split``, cached; at least 8 images, ``--size`` px),
real shapes with real masks, as ``fpnbook train`` sees them.

Rows: a training step (forward, backward, SGD step) and inference, in images per
second, warm-up first, then the best of N with the two models taking turns, and the
ratio fpnbook / torchvision (above 1: fpnbook is faster). Peak memory of a training
step: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the peak growth of the
resident set (``/proc/self/statm``, sampled every 2 ms) over a training step after a
first one, each model measured in its own fresh process (skipped by ``--quick``).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import torch

from common import model_benchmark_args
from fpnbook import data
from fpnbook.checkpoint import load_checkpoint  # noqa: E402
from fpnbook.interop import to_torchvision
from fpnbook.timing import best_times, infer_fn, train_step_fn
from fpnbook.models import COCO_SIZING, ModelConfig, build

NUM_CLASSES = 8
DATA = ("random", "generated")


def build_models(image_size: int, device: torch.device, sizing: str = "book",
                 weights: Path | None = None) -> dict[str, torch.nn.Module]:
    """Our Mask R-CNN and its torchvision twin, from the same weights (seeded, or ``weights``: a checkpoint).

    ``sizing`` ``"coco"`` gives both models COCO's 2000/2000/512 training counts, ``"book"``
    the defaults (600/300/128), ``"both"`` all four models, named ``fpnbook``/``torchvision``
    (book) and ``fpnbook-coco``/``torchvision-coco``.
    """
    models = {}
    for name, counts in (("", {}), ("-coco", COCO_SIZING)):
        if (sizing == "coco" and not counts) or (sizing == "book" and counts):
            continue
        torch.manual_seed(0)
        ours = build(ModelConfig(kind="mask_rcnn", num_classes=NUM_CLASSES, **counts))
        if weights is not None:  # a trained RPN proposes as in real training, not at random
            ours.load_state_dict(load_checkpoint(weights)["model"])
        theirs = to_torchvision(ours, image_size)
        models[f"fpnbook{name}"], models[f"torchvision{name}"] = ours.to(device), theirs.to(device)
    if sizing == "coco":
        models = {name.removesuffix("-coco"): model for name, model in models.items()}
    return models


def make_batch(batch: int, image_size: int, device: torch.device) -> tuple[list, list]:
    """Random images with 2..8 random boxes (8 px to half the image) and their box-shaped masks."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        n = int(torch.randint(2, 9, (1,), generator=g))
        size = 8 + torch.rand(n, 2, generator=g) * (image_size / 2 - 8)
        corner = torch.rand(n, 2, generator=g) * (image_size - size)
        boxes = torch.cat([corner, corner + size], dim=1)
        masks = torch.zeros(n, image_size, image_size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist()):
            m[y1:y2, x1:x2] = 1
        labels = torch.randint(1, NUM_CLASSES + 1, (n,), generator=g)
        images.append(torch.rand(3, image_size, image_size, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def generated_batch(batch: int, image_size: int, device: torch.device) -> tuple[list, list]:
    """The first ``batch`` images of the generated training split and their boxes, labels and masks.

    Images Tensor[3, S, S] in 0..1; targets ``boxes`` [G, 4] XYXY, ``labels`` int64 [G] in
    1..8, ``masks`` uint8 [G, S, S], as plain tensors (not tv_tensors), the same for both models.
    """
    # At least 8 images, so that small batches share one cached split with the other benchmarks.
    image_dir, ann_file = data.ensure_split("train", max(batch, 8), image_size=image_size, seed=0, progress=False)
    dataset = data.CocoDataset(image_dir, ann_file)
    if dataset.num_classes > NUM_CLASSES:
        raise ValueError(f"the generated split has {dataset.num_classes} classes, the models only {NUM_CLASSES}")
    images, targets = [], []
    for i in range(batch):
        image, target = dataset[i]
        images.append(image.as_subclass(torch.Tensor).to(device))
        targets.append({k: target[k].as_subclass(torch.Tensor).to(device) for k in ("boxes", "labels", "masks")})
    return images, targets


def batch_of(kind: str, batch: int, image_size: int, device: torch.device) -> tuple[list, list]:
    """The benchmark's batch: ``kind`` is ``"random"`` (:func:`make_batch`) or ``"generated"`` (:func:`generated_batch`)."""
    if kind == "generated":
        return generated_batch(batch, image_size, device)
    return make_batch(batch, image_size, device)


def rss_mib() -> float:
    """This process's resident set now, in MiB (Linux; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_memory_mib(name: str, image_size: int, batch: int, device: str, threads: int, kind: str = "random",
                    sizing: str = "book", weights: Path | None = None) -> float:
    """Peak memory a training step of model ``name`` adds, in MiB (see the module docstring)."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    model = build_models(image_size, device, sizing, weights)[name]
    images, targets = batch_of(kind, batch, image_size, device)
    step = train_step_fn(model, images, targets)
    step()  # the first step allocates the gradients and momentum buffers
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # ru_maxrss cannot be reset, so sample the resident set while the step runs.
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    step()
    done.set()
    sampler.join()
    return max(peak[0], rss_mib()) - before


def main(argv: list[str] | None = None) -> dict[str, float]:
    def add_data(parser) -> None:
        parser.add_argument("--data", choices=DATA, default="random",
                            help="random images and boxes (default), or the generated training split")
        parser.add_argument("--sizing", choices=("book", "coco", "both"), default="book",
                            help="training proposal counts and RoIs per image: the book's defaults (600/300/128), "
                                 "COCO's (2000/2000/512), or both side by side, for both models")
        parser.add_argument("--weights", type=Path, default=None,
                            help="start every model from this fpnbook Mask R-CNN checkpoint (e.g. a trained one)")

    args, device = model_benchmark_args(__doc__.splitlines()[0], 5, "smoke run: 128 px, no warm-up, 1 repeat, no memory",
                                        argv, add_data)
    size, warmup, repeats = (128, 0, 1) if args.quick else (args.size, 2, args.repeats)
    models = build_models(size, device, args.sizing, args.weights)
    images, targets = batch_of(args.data, args.batch, size, device)
    print(f"Mask R-CNN (tiny ResNet + FPN P2-P6, {NUM_CLASSES} classes), {args.batch} x {size}px"
          + (" generated images" if args.data == "generated" else "")
          + f", {args.sizing} sizing, device {device}, {torch.get_num_threads()} threads, best of {repeats}")
    rows = {
        "train step": best_times({n: train_step_fn(m, images, targets) for n, m in models.items()}, repeats, device, warmup),
        "inference": best_times({n: infer_fn(m, images) for n, m in models.items()}, repeats, device, warmup),
    }
    print(f"{'':<14}{'fpnbook img/s':>15}{'torchvision img/s':>19}{'ratio':>8}")
    ratios = {}
    for suffix in dict.fromkeys(name[len("fpnbook"):] for name in models if name.startswith("fpnbook")):
        for row, seconds in rows.items():
            ours, theirs = args.batch / seconds["fpnbook" + suffix], args.batch / seconds["torchvision" + suffix]
            ratios[row + suffix] = ours / theirs
            print(f"{row + suffix:<18}{ours:>11.2f}{theirs:>19.2f}{ratios[row + suffix]:>8.2f}")
    if args.sizing == "both":
        for model in ("fpnbook", "torchvision"):
            speedup = rows["train step"][model + "-coco"] / rows["train step"][model]
            ratios[f"{model} train step, book / coco sizing"] = speedup
            print(f"{model} training step with the book's counts: {speedup:.2f}x faster than with COCO's")
    if not args.quick and args.sizing != "both":
        # A fresh process per model, so one model's freed-but-kept heap does not hide the other's growth.
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            mib = {n: pool.apply(step_memory_mib, (n, size, args.batch, str(device), args.threads, args.data, args.sizing,
                                                  args.weights))
                   for n in models}
        what = "max_memory_allocated" if device.type == "cuda" else "resident set growth"
        print(f"{'peak MiB':<14}{mib['fpnbook']:>15.0f}{mib['torchvision']:>19.0f}"
              f"{mib['torchvision'] / max(mib['fpnbook'], 1e-9):>8.2f}  ({what} over a training step; ratio theirs/ours)")
        ratios["memory torchvision/fpnbook"] = mib["torchvision"] / max(mib["fpnbook"], 1e-9)
    return ratios


if __name__ == "__main__":
    main()
