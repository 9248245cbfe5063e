"""FPN paper, Table 1 in miniature: an RPN on a single C4 map, on C5, and on the FPN.

    python -m experiments.fpn_table1 [--smoke] [--threads 2]

The three RPNs share everything but the features they read: the same backbone preset
(randomly initialised with the same seed), the same training images, schedule and
seed, and the same anchor sizes (16..256 px for our 256 px images: one size per
level on P2..P6, all five on the single map of the baselines). Each is scored by
class-agnostic COCO average recall of its proposals on the committed validation
split: AR100 and AR1000 (up to 100 or 1000 proposals per image), and
AR1000 for small, medium and large objects (area < 32**2, < 96**2, above).

Writes ``experiments/results/fpn_table1.json``; chapter 1 plots it.
"""

from __future__ import annotations

import argparse

import torch

from experiments import common
from fpnbook import backbone, data
from fpnbook.evaluate import coco_evaluate, to_coco_results
from fpnbook.rcnn import RPNModel
from fpnbook.train import DETECTRON_RECIPE, TrainConfig, predict, train

NAME = "fpn_table1"
VARIANTS = ("c4", "c5", "fpn")
BACKBONES = {"tiny": backbone.resnet_tiny, "small": backbone.resnet_small}

# Lin et al. (2017), Table 1, rows (a) conv4, (b) conv5, (c) FPN: ResNet-50, COCO minival, in %.
PAPER = {
    "c4": {"AR100": 36.1, "AR1000": 48.3, "ARs": 32.0, "ARm": 58.7, "ARl": 62.2},
    "c5": {"AR100": 36.3, "AR1000": 44.9, "ARs": 25.3, "ARm": 55.5, "ARl": 64.2},
    "fpn": {"AR100": 44.0, "AR1000": 56.3, "ARs": 44.9, "ARm": 63.4, "ARl": 66.2},
}
METRICS = ("AR100", "AR1000", "ARs", "ARm", "ARl")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny", help="fpnbook.backbone preset")
    p.add_argument("--train-images", type=int, default=1000, help="generated training images (cached)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    return p


def build_model(features: str, preset: str = "tiny") -> RPNModel:
    """An RPN reading ``features`` ("c4", "c5" or "fpn") of a fresh ``preset`` backbone.

    A lone RPN selects no proposals in training (there is no second stage to feed); at
    test time each level sends its 1000 best anchors to NMS and the image keeps 1000.
    """
    return RPNModel(BACKBONES[preset](), features, pre_nms_top_n=dict(training=1000, testing=1000),
                    post_nms_top_n=dict(training=1000, testing=1000))


def proposals_to_results(outputs: list[dict], image_ids: list[int]) -> list[dict]:
    """RPN outputs (boxes, scores) -> COCO result dicts of one class, for class-agnostic recall."""
    labelled = [{"boxes": o["boxes"], "scores": o["scores"], "labels": torch.ones_like(o["scores"], dtype=torch.int64)}
                for o in outputs]
    return to_coco_results(labelled, image_ids)


def average_recall(model: RPNModel, val: data.CocoDataset, num_images: int) -> dict[str, float]:
    """Class-agnostic AR100, AR1000 and AR1000 by size, in %, on the first ``num_images`` of ``val``."""
    subset = torch.utils.data.Subset(val, range(num_images))
    image_ids = val.image_ids[:num_images]
    outputs = predict(model, subset, device="cpu")
    stats = coco_evaluate(val.coco, proposals_to_results(outputs, image_ids), iou_types=("bbox",),
                          max_dets=(10, 100, 1000), use_categories=False, image_ids=image_ids)["bbox"]
    recall = {name: round(100 * stats[name], 2) for name in METRICS}
    recall["proposals_per_image"] = round(sum(len(o["boxes"]) for o in outputs) / num_images, 1)
    return recall


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.train_images, args.image_size, args.iterations = 8, 128, 3
    train_split = data.ensure_split("train", args.train_images, image_size=args.image_size, seed=args.seed,
                                    progress=not args.smoke)
    train_set = data.CocoDataset(*train_split)
    val = data.CocoDataset(*data.val_paths())
    num_val = 4 if args.smoke else len(val)
    config = dict(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  warmup_iters=min(100, args.iterations // 5), device="cpu",
                  log_every=max(1, args.iterations // 10), progress=not args.smoke)
    metrics = {"setup": {"backbone": f"resnet_{args.backbone}", "train_images": args.train_images,
                         "image_size": args.image_size, "val_images": num_val,
                         **{k: config[k] for k in ("iterations", "batch_size", "lr", "warmup_iters", "seed")}}}
    for features in args.variants:
        torch.manual_seed(args.seed)  # the same initial backbone for every variant
        model = build_model(features, args.backbone)
        with common.stopwatch() as took:
            records = train(model, train_set, TrainConfig(**config, **DETECTRON_RECIPE))
        metrics[features] = {**average_recall(model, val, num_val), "train_s": took["wall_s"],
                             "train_cpu_s": took["cpu_s"],
                             "loss": [round(r["loss"], 4) for r in records if "loss" in r],
                             "anchors_per_location": model.rpn.anchor_generator.num_anchors_per_location()}
        print(f"{features:>4}: " + "  ".join(f"{k} {metrics[features][k]:5.1f}" for k in METRICS)
              + f"  ({took['wall_s']:.0f} s)", flush=True)
    return metrics


main = lambda argv=None: common.main(NAME, run, build_parser, argv)  # noqa: E731

if __name__ == "__main__":
    main()
