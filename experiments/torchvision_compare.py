"""fpnbook's Mask R-CNN against torchvision's, same backbone, heads, initial weights, data and schedule.

    python -m experiments.torchvision_compare [--smoke] [--threads 2] [--fpnbook-run DIR]

Both models start from the same weights: one seeded ``fpnbook.models.build`` Mask R-CNN
(tiny ResNet + FPN, P2..P6), and a torchvision ``MaskRCNN`` around a copy of its backbone
with every head weight copied over (RPN, 2-fc box head, 4-conv mask head). torchvision
keeps its own RPN, RoI heads and C++ ``MultiScaleRoIAlign``, and is set to our anchors
(16..256 px), canonical scale 112, proposal counts and RoI batch; its transform gets
``min_size = max_size = 256`` and our mean/std, so it normalises and pads but never resizes.

Both are trained by the same :func:`fpnbook.train.train` loop and schedule on the same
cached generated split (with the CLI's random flip), then scored with COCO AP on the
committed validation split. ``--fpnbook-run DIR`` reuses a ``python -m fpnbook train``
run of the same schedule and seed (e.g. the one behind ``checkpoints/mask_rcnn.pt``)
instead of training fpnbook's model again: it is the same computation, and the script
checks that its settings match. Last, it times a training step and inference of both
trained models on two validation images, taking turns (best of ``--repeats``).

Writes ``experiments/results/torchvision_compare.json``; chapter 5 reads it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from experiments import common
from fpnbook import data
from fpnbook.checkpoint import load_checkpoint
from fpnbook.models import COCO_SIZING, ModelConfig, build
from fpnbook.interop import to_torchvision
from fpnbook.timing import best_times, infer_fn, train_step_fn
from fpnbook.train import DETECTRON_RECIPE, TrainConfig, evaluate_model, read_metrics, resolve_device, train

NAME = "torchvision_compare"
SCHEDULE = ("iterations", "batch_size", "lr", "warmup_iters", "seed")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=1000, help="generated training images (cached)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each step (best is kept)")
    p.add_argument("--fpnbook-run", type=Path, default=None,
                   help="a `fpnbook train --model mask_rcnn` run folder of the same schedule to reuse")
    return p


def throughput(models: dict[str, nn.Module], images: list, targets: list, repeats: int,
               device: torch.device) -> dict[str, dict[str, float]]:
    """Training and inference images/s of each model on the same batch, interleaved."""
    train_s = best_times({n: train_step_fn(m, images, targets) for n, m in models.items()}, repeats, device)
    infer_s = best_times({n: infer_fn(m, images) for n, m in models.items()}, repeats, device)
    return {n: {"train_images_per_s": round(len(images) / train_s[n], 3),
                "inference_images_per_s": round(len(images) / infer_s[n], 3)} for n in models}


def reuse_run(run: Path, config: TrainConfig) -> tuple[dict, float, list[dict]]:
    """(COCO results, train seconds, metrics) of a `fpnbook train` run, after checking its schedule."""
    state = load_checkpoint(run / "last.pt")
    theirs = state.get("train_config") or {}
    mismatched = {k: (theirs.get(k), getattr(config, k)) for k in SCHEDULE if theirs.get(k) != getattr(config, k)}
    if mismatched or state.get("model_config", {}).get("kind") != "mask_rcnn":
        raise ValueError(f"--fpnbook-run {run} is not a mask_rcnn run of this schedule: {mismatched}")
    summary = json.loads((run / "summary.json").read_text())
    return summary["val"], summary["train_seconds"], read_metrics(run / "metrics.jsonl")


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.train_images, args.image_size, args.iterations, args.batch_size, args.warmup = 4, 64, 2, 2, 1
        args.repeats, args.fpnbook_run = 1, None
    images_dir, ann = data.ensure_split("train", args.train_images, args.image_size, seed=0, progress=False)
    train_set = data.CocoDataset(images_dir, ann, transforms=v2.RandomHorizontalFlip(0.5))
    val_set = data.CocoDataset(images_dir, ann) if args.smoke else data.CocoDataset(*data.val_paths())
    config = TrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup_iters=min(args.warmup, args.iterations), device="auto", log_every=5, progress=False,
                         **DETECTRON_RECIPE)
    device = resolve_device("auto")
    torch.manual_seed(args.seed)  # as `fpnbook train` does, so the initial weights equal its run's
    ours = build(ModelConfig(kind="mask_rcnn", num_classes=train_set.num_classes, **COCO_SIZING))
    theirs = to_torchvision(ours, args.image_size)
    results, seconds, curves = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("fpnbook", ours), ("torchvision", theirs)):
            if name == "fpnbook" and args.fpnbook_run is not None:
                results[name], seconds[name], records = reuse_run(args.fpnbook_run, config)
                model.load_state_dict(load_checkpoint(args.fpnbook_run / "last.pt")["model"])
            else:
                start = time.perf_counter()
                records = train(model, train_set, out_dir_config(config, Path(tmp) / name))
                seconds[name] = round(time.perf_counter() - start, 1)
                results[name] = evaluate_model(model, val_set)
            curves[name] = [[r["step"], round(r["loss"], 4)] for r in records if "loss" in r]
    images = [val_set[i][0].to(device) for i in range(2)]
    targets = [{k: v.to(device) for k, v in val_set[i][1].items() if k in ("boxes", "labels", "masks")} for i in range(2)]
    speed = throughput({"fpnbook": ours.to(device), "torchvision": theirs.to(device)}, images, targets,
                       args.repeats, device)
    return {
        "schedule": {k: getattr(config, k) for k in SCHEDULE} | {"train_images": args.train_images,
                                                                 "image_size": args.image_size},
        "fpnbook_run_reused": str(args.fpnbook_run) if args.fpnbook_run else None,
        "val": {n: {t: {k: round(v, 4) for k, v in r.items()} for t, r in res.items()} for n, res in results.items()},
        "train_seconds": seconds,
        "loss_curves": curves,
        "throughput": speed,
        "throughput_ratio": {k: round(speed["fpnbook"][k] / speed["torchvision"][k], 3) for k in speed["fpnbook"]},
    }


def out_dir_config(config: TrainConfig, out: Path):
    """``train``'s arguments after the dataset: the config with ``out_dir`` set, so metrics are logged."""
    return TrainConfig(**{**config.__dict__, "out_dir": str(out)})


def main(argv: list[str] | None = None) -> dict:
    return common.main(NAME, run, build_parser, argv)


if __name__ == "__main__":
    main()
