"""Focal loss paper, Table 1 in miniature: RetinaNet trained with CE, α-balanced CE and focal loss.

    python -m experiments.focal_table1 [--smoke] [--threads 2]

Every variant is the same tiny RetinaNet (``fpnbook.models.retinanet_tiny``: GroupNorm
ResNet, 64-channel FPN P3..P7, 9 anchors per location, GroupNorm in the subnets because
it trains from scratch), started from the same random weights with the classifier bias
at the prior π = 0.01, trained on the same images with the same schedule and seed. Only
the classification loss differs:

* ``ce``: plain binary cross entropy (γ = 0, no α);
* ``alpha_ce``: α-balanced CE with α = 0.75, the best α of the paper's Table 1a (we
  take the paper's choice instead of sweeping α, to fit the CPU budget);
* ``fl``: focal loss, γ = 2, α = 0.25 (the paper's default);
* ``fl_g1``, ``fl_g5`` (optional, ``--variants``): γ = 1 and γ = 5, α = 0.25, from Table 1b.

Each is scored by COCO box AP (pycocotools) on the committed validation split.

The FL model's classifier logits on the validation anchors are also saved, as histograms
from which the paper's Figure 4 (cumulative loss) can be drawn: every (anchor, class) pair
the loss sees, split into positives (target 1) and negatives (target 0); ignored anchors
are left out. Writes ``experiments/results/focal_table1.json`` and
``focal_table1_scores.json`` beside it; chapter 2 plots the first (its Figure 4 comes
from the shipped RetinaNet checkpoint instead).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from experiments import common
from fpnbook import data
from fpnbook.images import batch_images
from fpnbook.matching import BETWEEN_THRESHOLDS
from fpnbook.models import retinanet_tiny
from fpnbook.retinanet import RetinaNet
from fpnbook.train import DETECTRON_RECIPE, TrainConfig, evaluate_model, train

NAME = "focal_table1"
SCORES_NAME = "focal_table1_scores.json"
# The classification loss of each variant: RetinaNet keyword arguments.
VARIANTS = {
    "ce": dict(loss="ce"),
    "alpha_ce": dict(loss="alpha_ce", focal_alpha=0.75),
    "fl": dict(loss="focal", focal_gamma=2.0, focal_alpha=0.25),
    "fl_g1": dict(loss="focal", focal_gamma=1.0, focal_alpha=0.25),
    "fl_g5": dict(loss="focal", focal_gamma=5.0, focal_alpha=0.25),
}
# Lin et al. (2017), Table 1a/1b: RetinaNet R-50, 600 px, COCO minival, box AP in %.
PAPER = {
    "ce": {"AP": 30.2, "AP50": 46.7, "AP75": 32.8, "note": "α = 0.5 row of Table 1a (CE up to a factor 2)"},
    "alpha_ce": {"AP": 31.1, "AP50": 49.4, "AP75": 33.0, "note": "α = 0.75, best α-CE, Table 1a"},
    "fl": {"AP": 34.0, "AP50": 52.5, "AP75": 36.5, "note": "γ = 2, α = 0.25, Table 1b"},
    "fl_g1": {"AP": 33.7, "AP50": 52.0, "AP75": 36.2, "note": "γ = 1, α = 0.25, Table 1b"},
    "fl_g5": {"AP": 32.2, "AP50": 49.6, "AP75": 34.8, "note": "γ = 5, α = 0.25, Table 1b"},
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Logit histogram bins for the saved scores: sigmoid(-16) ~ 1e-7, the clamp ends catch the rest.
LOGIT_RANGE, LOGIT_BINS = 16.0, 1280


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=1000, help="generated training images (cached)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["ce", "alpha_ce", "fl"])
    return p


def build_model(variant: str, num_classes: int) -> RetinaNet:
    """The tiny RetinaNet with ``variant``'s classification loss and the π = 0.01 prior."""
    return retinanet_tiny(num_classes, head_norm="gn", prior=0.01, **VARIANTS[variant])


@torch.no_grad()
def logit_histograms(model: RetinaNet, dataset: data.CocoDataset, batch_size: int = 4) -> dict:
    """Histograms of the classifier's logits over the labelled (anchor, class) pairs of ``dataset``.

    Returns ``{"logit_edges": [LOGIT_BINS + 1], "pos_counts": [LOGIT_BINS], "neg_counts": [LOGIT_BINS]}``
    as lists: positives are the true class at foreground anchors, negatives every other
    class there and every class at background anchors (exactly what the loss sums over).
    """
    model.eval()
    edges = torch.linspace(-LOGIT_RANGE, LOGIT_RANGE, LOGIT_BINS + 1)
    pos_counts, neg_counts = torch.zeros(LOGIT_BINS, dtype=torch.int64), torch.zeros(LOGIT_BINS, dtype=torch.int64)
    for start in range(0, len(dataset), batch_size):
        images, targets = zip(*(dataset[i] for i in range(start, min(start + batch_size, len(dataset)))))
        batch, _ = batch_images(list(images))
        features = list(model.backbone(batch).values())
        logits = model.head(features)["cls_logits"]  # [B, N, K]
        anchors = torch.cat(model.anchor_generator.anchors_per_level(tuple(batch.shape[-2:]), features))
        matched = model.match(targets, anchors)  # [B, N]
        for b, target in enumerate(targets):
            foreground = matched[b] >= 0
            labels = torch.where(foreground, target["labels"][matched[b].clamp(min=0)], 0) if len(target["labels"]) \
                else torch.zeros_like(matched[b])
            is_positive = F.one_hot(labels, model.num_classes + 1)[:, 1:].bool()  # [N, K]
            valid = (matched[b] != BETWEEN_THRESHOLDS)[:, None].expand_as(is_positive)
            bins = torch.bucketize(logits[b].clamp(-LOGIT_RANGE, LOGIT_RANGE * 0.9999), edges[1:-1])
            pos_counts += torch.bincount(bins[valid & is_positive], minlength=LOGIT_BINS)
            neg_counts += torch.bincount(bins[valid & ~is_positive], minlength=LOGIT_BINS)
    return {"logit_edges": [round(e, 4) for e in edges.tolist()], "pos_counts": pos_counts.tolist(),
            "neg_counts": neg_counts.tolist()}


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.train_images, args.image_size, args.iterations, args.batch_size = 8, 128, 2, 2
    train_split = data.ensure_split("train", args.train_images, image_size=args.image_size, seed=args.seed,
                                    progress=not args.smoke)
    train_set = data.CocoDataset(*train_split)
    # --smoke scores the 8 training images: it shows the script runs, not how well.
    val = train_set if args.smoke else data.CocoDataset(*data.val_paths())
    if args.smoke and args.out is None:
        args.out = common.result_path(NAME, args)  # one temporary folder for both files
    config = dict(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  warmup_iters=min(50, args.iterations // 5), device="cpu",
                  log_every=max(1, args.iterations // 20), progress=not args.smoke)
    metrics = {"setup": {"model": "retinanet_tiny(head_norm='gn', prior=0.01)", "train_images": args.train_images,
                         "image_size": args.image_size, "val_images": len(val),
                         **{k: config[k] for k in ("iterations", "batch_size", "lr", "warmup_iters", "seed")}},
               "paper": {v: PAPER[v] for v in args.variants}}
    for variant in args.variants:
        torch.manual_seed(args.seed)  # the same initial weights for every variant
        model = build_model(variant, train_set.num_classes)
        with common.stopwatch() as took:
            records = train(model, train_set, TrainConfig(**config, **DETECTRON_RECIPE))
        stats = evaluate_model(model, val, device="cpu")["bbox"]
        gamma, alpha = model.focal_params()
        metrics[variant] = {**{m: round(100 * stats[m], 2) for m in METRICS}, "gamma": gamma, "alpha": alpha,
                            "train_s": took["wall_s"], "train_cpu_s": took["cpu_s"],
                            "steps": [r["step"] for r in records if "loss" in r],
                            "classification_loss": [round(r["classification"], 4) for r in records if "loss" in r],
                            "box_loss": [round(r["bbox_regression"], 4) for r in records if "loss" in r]}
        print(f"{variant:>8}: " + "  ".join(f"{m} {metrics[variant][m]:5.1f}" for m in METRICS)
              + f"  ({took['wall_s']:.0f} s)", flush=True)
        if variant == "fl":
            scores = {"experiment": NAME, "variant": "fl", **logit_histograms(model, val)}
            path = common.result_path(NAME, args).parent / SCORES_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(scores, separators=(",", ":")) + "\n", encoding="utf-8")
            metrics["scores_file"] = SCORES_NAME
    return metrics


main = lambda argv=None: common.main(NAME, run, build_parser, argv)  # noqa: E731

if __name__ == "__main__":
    main()
