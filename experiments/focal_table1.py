"""Focal loss paper, Table 1 in miniature: RetinaNet trained with CE, α-balanced CE and focal loss of several γ.

    python -m experiments.focal_table1 [--smoke] [--seeds 0 1 2] [--iterations 800] [--threads 1]

Every row is the shipped RetinaNet's architecture (``fpnbook.models.retinanet_tiny``:
GroupNorm ResNet with its body from the book's pretrained ``checkpoints/backbone.pt``,
64-channel FPN P3..P7, 9 anchors per location, GroupNorm in the subnets, the classifier
bias at the prior π = 0.01), trained with the book's default recipe (AdamW, warm-up then
cosine, EMA; ``fpnbook.train.TrainConfig``) on the cached 10,000-image training split.
Only the classification loss differs:

* ``ce``: plain binary cross entropy (γ = 0, no α; Table 1a's α = 0.5 row, up to a factor 2);
* ``alpha_ce``: α-balanced CE with α = 0.75, the best α of Table 1a, which is also
  Table 1b's γ = 0 row;
* ``fl_g05``, ``fl_g1``, ``fl``, ``fl_g5``: focal loss with γ = 0.5 (α = 0.5), γ = 1,
  γ = 2 (the paper's default) and γ = 5 (α = 0.25), Table 1b's γ sweep with its best α.

Every seed starts all rows from the same weights and feeds them the same images in the
same order. Each is scored by COCO box AP (pycocotools) on a generated split of
``--eval-images`` images of a seed no other run uses. The record holds every seed's
numbers, their mean and sd, and a per-seed paired verdict
(``experiments.common.paired_verdict``) for each of the paper's orderings in
:data:`CLAIMS`. Writes ``experiments/results/focal_table1.json``; chapter 2 reads it.
"""

from __future__ import annotations

import argparse

import torch

from experiments import common
from fpnbook import data
from fpnbook.checkpoint import load_backbone, read_backbone
from fpnbook.models import ModelConfig, retinanet_tiny
from fpnbook.retinanet import RetinaNet
from fpnbook.train import evaluate_model, train

NAME = "focal_table1"
# The classification loss of each row: RetinaNet keyword arguments.
VARIANTS = {
    "ce": dict(loss="ce"),
    "alpha_ce": dict(loss="alpha_ce", focal_alpha=0.75),
    "fl_g05": dict(loss="focal", focal_gamma=0.5, focal_alpha=0.5),
    "fl_g1": dict(loss="focal", focal_gamma=1.0, focal_alpha=0.25),
    "fl": dict(loss="focal", focal_gamma=2.0, focal_alpha=0.25),
    "fl_g5": dict(loss="focal", focal_gamma=5.0, focal_alpha=0.25),
}
# Lin et al. (2017), Table 1a/1b: RetinaNet R-50, 600 px, COCO minival, box AP in %.
PAPER = {
    "ce": {"AP": 30.2, "AP50": 46.7, "AP75": 32.8, "note": "α = 0.5 row of Table 1a (CE up to a factor 2)"},
    "alpha_ce": {"AP": 31.1, "AP50": 49.4, "AP75": 33.0, "note": "α = 0.75, best α-CE, Table 1a (γ = 0 of 1b)"},
    "fl_g05": {"AP": 32.9, "AP50": 51.7, "AP75": 35.2, "note": "γ = 0.5, α = 0.5, Table 1b"},
    "fl_g1": {"AP": 33.7, "AP50": 52.0, "AP75": 36.2, "note": "γ = 1, α = 0.25, Table 1b"},
    "fl": {"AP": 34.0, "AP50": 52.5, "AP75": 36.5, "note": "γ = 2, α = 0.25, Table 1b"},
    "fl_g5": {"AP": 32.2, "AP50": 49.6, "AP75": 34.8, "note": "γ = 5, α = 0.25, Table 1b"},
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
EVAL_SEED = 2026_0205  # the evaluation split's generator seed: no training split or other record uses it
INIT = common.RESULTS.parents[1] / "checkpoints" / "backbone.pt"
# The paper's orderings to check: (better row, worse row, metric).
CLAIMS = (("fl", "alpha_ce", "AP"), ("fl", "ce", "AP"), ("fl", "alpha_ce", "AP75"), ("fl_g05", "alpha_ce", "AP"),
          ("fl_g1", "alpha_ce", "AP"), ("fl", "fl_g5", "AP"))


def build_parser() -> argparse.ArgumentParser:
    p = common.seeded_parser(NAME, __doc__.splitlines()[0], iterations=600)
    p.add_argument("--train-images", type=int, default=10000, help="generated training images (cached)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    return p


def build_model(variant: str, num_classes: int, init: dict | None = None) -> RetinaNet:
    """The shipped RetinaNet's architecture with ``variant``'s classification loss, its body from ``init``."""
    model = retinanet_tiny(num_classes, head_norm="gn", prior=0.01, **VARIANTS[variant])
    if init is not None:
        load_backbone(model, init, ModelConfig(kind="retinanet", num_classes=num_classes))
    return model


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.train_images, args.iterations, args.batch_size, args.eval_images = 8, 2, 2, 4
        args.seeds, args.variants = args.seeds[:1], ["alpha_ce", "fl"]
    train_set = data.CocoDataset(*data.ensure_split("train", args.train_images, image_size=256, seed=0,
                                                    progress=not args.smoke))
    if args.smoke:  # --smoke shows the script runs, not how well: no split to generate
        val = data.CocoDataset(*data.val_paths())
        args.eval_images = len(val)
    else:
        val = data.CocoDataset(*data.ensure_split("val", args.eval_images, image_size=256, seed=EVAL_SEED,
                                                  progress=False))
    init = read_backbone(INIT) if args.init == "backbone" else None
    metrics: dict = {
        "setup": {"model": "retinanet_tiny(head_norm='gn', prior=0.01), the shipped RetinaNet's architecture",
                  "init": args.init, "train_split": f"generated, {args.train_images} images of 256 px, seed 0",
                  "eval_split": f"generated val, {len(val)} images of 256 px, seed {EVAL_SEED}"
                  if not args.smoke else "committed val split (48 images)",
                  "iterations": args.iterations, "batch_size": args.batch_size,
                  "recipe": "TrainConfig defaults (AdamW, warm-up + cosine, EMA)"},
        "paper": {v: PAPER[v] for v in args.variants},
        "runs": {v: {} for v in args.variants},
    }
    common.resume_runs(NAME, args, metrics)
    for seed, variant in common.pending(metrics["runs"], args.seeds, args.variants):
        config = common.table_config(args, seed)
        torch.manual_seed(seed)  # the same initial weights for every row of a seed
        model = build_model(variant, train_set.num_classes, init)
        with common.stopwatch() as took:
            records = train(model, train_set, config)
        stats = evaluate_model(model, val, device="cpu")["bbox"]
        gamma, alpha = model.focal_params()
        losses = [r for r in records if "loss" in r]
        row = {**{m: round(100 * stats[m], 2) for m in METRICS}, "gamma": gamma, "alpha": alpha,
               "train_s": took["wall_s"], "train_cpu_s": took["cpu_s"],
               "classification_loss": [round(r["classification"], 4) for r in losses],
               "box_loss": [round(r["bbox_regression"], 4) for r in losses]}
        metrics["runs"][variant][str(seed)] = row
        metrics["steps"] = [r["step"] for r in losses]
        print(f"seed {seed} {variant:>8}: " + "  ".join(f"{m} {row[m]:5.1f}" for m in METRICS)
              + f"  ({took['wall_s']:.0f} s)", flush=True)
        common.write_partial(NAME, args, metrics)
    metrics["summary"] = common.summarise(metrics["runs"], args.seeds, METRICS)
    metrics["claims"] = common.ordering_claims(metrics["runs"], args.seeds, CLAIMS, PAPER)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return common.main_seeded(NAME, run, build_parser, argv)


if __name__ == "__main__":
    main()
