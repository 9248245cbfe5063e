"""FPN paper, Table 1 in miniature: an RPN on C4, on C5, on the FPN, and on the FPN's three ablations.

    python -m experiments.fpn_table1 [--smoke] [--seeds 0 1 2] [--threads 1]

The RPNs share everything but the features they read: the same backbone preset (its
body started from the book's pretrained ``checkpoints/backbone.pt``, everything above it
fresh with the same seed), the same training images, schedule (the book's default
recipe) and seed, and the same anchor sizes (16..256 px for our 256 px images: one size
per level on P2..P6, all five on a single map). The rows:

* (a) ``c4`` and (b) ``c5``: a single map of the backbone;
* (c) ``fpn``: the Feature Pyramid Network, P2..P6;
* (d) ``bottom_up``: the pyramid without its top-down pathway (each level its own
  lateral 1x1 and 3x3 conv);
* (e) ``no_lateral``: the top-down pathway without lateral connections;
* (f) ``p2``: the full FPN, but only its finest map P2, with every anchor size on it.

Each is scored by class-agnostic COCO average recall of its proposals on a generated
split of ``--eval-images`` images of a seed no training split uses (enough large
objects to measure ARl): AR100 and AR1000 (up to 100 or 1000 proposals per image), and
AR1000 for small, medium and large objects (area < 32**2, < 96**2, above). Every seed
trains every row; each of the paper's orderings gets a per-seed paired verdict
(``experiments.common.paired_verdict``).

Writes ``experiments/results/fpn_table1.json``; chapter 1 plots it.
"""

from __future__ import annotations

import argparse

import torch

from experiments import common
from fpnbook import backbone, data
from fpnbook.checkpoint import read_backbone
from fpnbook.evaluate import coco_evaluate, to_coco_results
from fpnbook.rcnn import RPN_FEATURES, RPNModel
from fpnbook.train import predict, train

NAME = "fpn_table1"
VARIANTS = RPN_FEATURES  # c4, c5, fpn, bottom_up, no_lateral, p2
EVAL_SEED = 2026_0203  # the evaluation split's generator seed: no training split or other record uses it
INIT = common.RESULTS.parents[1] / "checkpoints" / "backbone.pt"
BACKBONES = {"tiny": backbone.resnet_tiny, "small": backbone.resnet_small}

# Lin et al. (2017), Table 1, rows (a) conv4, (b) conv5, (c) FPN, (d) bottom-up pyramid,
# (e) top-down without lateral, (f) only the finest level: ResNet-50, COCO minival, in %.
PAPER = {
    "c4": {"AR100": 36.1, "AR1000": 48.3, "ARs": 32.0, "ARm": 58.7, "ARl": 62.2},
    "c5": {"AR100": 36.3, "AR1000": 44.9, "ARs": 25.3, "ARm": 55.5, "ARl": 64.2},
    "fpn": {"AR100": 44.0, "AR1000": 56.3, "ARs": 44.9, "ARm": 63.4, "ARl": 66.2},
    "bottom_up": {"AR100": 37.4, "AR1000": 49.5, "ARs": 30.5, "ARm": 59.9, "ARl": 68.0},
    "no_lateral": {"AR100": 34.5, "AR1000": 46.1, "ARs": 26.5, "ARm": 57.4, "ARl": 64.7},
    "p2": {"AR100": 38.4, "AR1000": 51.3, "ARs": 35.1, "ARm": 59.7, "ARl": 67.6},
}
METRICS = ("AR100", "AR1000", "ARs", "ARm", "ARl")
# The paper's orderings to check: (better row, worse row, metric).
CLAIMS = (("fpn", "c4", "AR1000"), ("fpn", "c5", "AR1000"), ("fpn", "c4", "ARs"), ("fpn", "c5", "ARs"),
          ("fpn", "bottom_up", "AR1000"), ("fpn", "no_lateral", "AR1000"), ("fpn", "p2", "AR1000"))


def build_parser() -> argparse.ArgumentParser:
    p = common.seeded_parser(NAME, __doc__.splitlines()[0], iterations=600)
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny", help="fpnbook.backbone preset")
    p.add_argument("--train-images", type=int, default=1000, help="generated training images (cached)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    return p


def build_model(features: str, preset: str = "tiny", init: dict | None = None) -> RPNModel:
    """An RPN reading ``features`` (one of :data:`VARIANTS`) of a ``preset`` backbone, its body from ``init``.

    A lone RPN selects no proposals in training (there is no second stage to feed); at
    test time each level sends its 1000 best anchors to NMS and the image keeps 1000.
    """
    body = BACKBONES[preset]()
    if init is not None:
        body.load_state_dict(init["body"])
    return RPNModel(body, features, pre_nms_top_n=dict(training=1000, testing=1000),
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
        args.train_images, args.image_size, args.iterations, args.seeds = 8, 128, 3, args.seeds[:1]
        args.eval_images = 4
    if args.init == "backbone" and (args.backbone != "tiny" or args.image_size != 256) and not args.smoke:
        raise SystemExit("--init backbone fits --backbone tiny on 256 px images; use --init scratch otherwise")
    train_set = data.CocoDataset(*data.ensure_split("train", args.train_images, image_size=args.image_size,
                                                    seed=0, progress=not args.smoke))
    if args.smoke:  # --smoke shows the script runs, not how well: no split to generate
        val, num_val = data.CocoDataset(*data.val_paths()), 4
    else:
        val = data.CocoDataset(*data.ensure_split("val", args.eval_images, image_size=args.image_size,
                                                  seed=EVAL_SEED, progress=False))
        num_val = len(val)
    init = read_backbone(INIT) if args.init == "backbone" and args.backbone == "tiny" else None
    areas = [a["area"] for a in val.coco.loadAnns(val.coco.getAnnIds(imgIds=val.image_ids[:num_val]))]
    objects = {"small": sum(a < 32**2 for a in areas), "medium": sum(32**2 <= a < 96**2 for a in areas),
               "large": sum(a >= 96**2 for a in areas)}
    metrics: dict = {"setup": {"backbone": f"resnet_{args.backbone}", "init": args.init if init else "scratch",
                               "train_images": args.train_images, "image_size": args.image_size,
                               "eval_split": f"generated val, {num_val} images, seed {EVAL_SEED}" if not args.smoke
                               else "committed val split (first 4 images)", "val_images": num_val, "eval_objects": objects,
                               "iterations": args.iterations, "batch_size": args.batch_size,
                               "recipe": "TrainConfig defaults (AdamW, warm-up + cosine, EMA)"},
                     "paper": PAPER, "runs": {v: {} for v in args.variants}}
    common.resume_runs(NAME, args, metrics)
    for seed, features in common.pending(metrics["runs"], args.seeds, args.variants):
        config = common.table_config(args, seed)
        torch.manual_seed(seed)  # the same initial weights for every variant of a seed
        model = build_model(features, args.backbone, init)
        with common.stopwatch() as took:
            records = train(model, train_set, config)
        row = {**average_recall(model, val, num_val), "train_s": took["wall_s"], "train_cpu_s": took["cpu_s"],
               "final_loss": round(sum(r["loss"] for r in records[-5:] if "loss" in r)
                                   / max(1, sum("loss" in r for r in records[-5:])), 4),
               "anchors_per_location": model.rpn.anchor_generator.num_anchors_per_location()}
        metrics["runs"][features][str(seed)] = row
        print(f"seed {seed} {features:>10}: " + "  ".join(f"{k} {row[k]:5.1f}" for k in METRICS)
              + f"  ({took['wall_s']:.0f} s)", flush=True)
        common.write_partial(NAME, args, metrics)
    metrics["summary"] = common.summarise(metrics["runs"], args.seeds, METRICS)
    metrics["claims"] = common.ordering_claims(metrics["runs"], args.seeds, CLAIMS, PAPER)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return common.main_seeded(NAME, run, build_parser, argv)


if __name__ == "__main__":
    main()
