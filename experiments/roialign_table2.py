"""Mask R-CNN paper, Table 2c/2d in miniature: the same mask branch fed by RoIPool or by RoIAlign, at stride 16 and 32.

    python -m experiments.roialign_table2 [--smoke] [--seeds 0 1 2] [--iterations 1200] [--threads 1]

Table 2c compares RoI feature extractors on ResNet-50-C4 (stride 16), Table 2d on C5
(stride 32, where RoIPool's rounding moves the read region by up to 32 pixels). This
script isolates that one choice and keeps the rest of the mask branch of Table 2b
(``experiments.gt_box_masks``):

* features: C4 (stride 16) or C5 (stride 32) of the book's tiny GroupNorm ResNet, its body
  from ``checkpoints/backbone.pt``, then a 1x1 conv to 64 channels;
* RoIs: the **ground-truth boxes**, in training and at evaluation, so detection cannot
  differ between runs; only the masks can;
* RoI features of 14 x 14 by ``roi_pool`` (corners rounded to the grid, bins max-pooled)
  or by ``roi_align`` (``sampling_ratio=2``, ``aligned=False``: the paper's RoIAlign,
  without the half-pixel shift detectron2 added later);
* the Mask R-CNN mask head, ``K + 1`` per-class sigmoid masks, the loss on the
  ground-truth class's channel; the book's default recipe, batch 4 of the cached
  10,000-image training split;
* every seed starts the four rows from the same weights (the same for both pools at a
  stride) and feeds them the same images in the same order; scored by COCO mask AP
  (pycocotools) on a generated split of ``--eval-images`` images of a seed no other run
  uses (each box's mask, score 1). The numbers measure masks given perfect boxes, so they
  are higher than the paper's; the gaps between RoIPool and RoIAlign are what to compare.

The record holds every seed's AP / AP50 / AP75 per row, their mean and sd, and a
per-seed paired verdict (``experiments.common.paired_verdict``) for each of the paper's
claims: RoIAlign beats RoIPool at each stride; the gain is larger at stride 32; the gain
is larger at AP75 than at AP50. It also scores a reference that reads no feature, each
box's class-mean mask (``class_mean_masks``), to show what the box and class alone explain.
Writes ``experiments/results/roialign_table2.json``;
chapter 3 reads it.
"""

from __future__ import annotations

import argparse

import torch

from experiments import common
from experiments.gt_box_masks import (ClassMeanMasks, GTBoxMaskModel, class_channel, class_sigmoid_probs, mask_ap,
                                     splits, train_masks)
from fpnbook.checkpoint import read_backbone
from fpnbook.roi_heads import mask_loss

NAME = "roialign_table2"
LEVELS = {16: "c4", 32: "c5"}  # stride -> backbone level
POOLS = ("pool", "align")
METRICS = ("AP", "AP50", "AP75")
EVAL_SEED = 2026_0204  # the evaluation split's generator seed: no training split or other record uses it
INIT = common.RESULTS.parents[1] / "checkpoints" / "backbone.pt"
# He et al. (2017), Table 2c (ResNet-50-C4, stride 16) and 2d (ResNet-50-C5, stride 32), mask AP in %.
PAPER = {
    "pool_s16": {"AP": 26.9, "AP50": 48.8, "AP75": 26.4},
    "align_s16": {"AP": 30.3, "AP50": 51.2, "AP75": 31.5},
    "pool_s32": {"AP": 23.6, "AP50": 46.5, "AP75": 21.6},
    "align_s32": {"AP": 30.9, "AP50": 51.8, "AP75": 32.1},
}


def build_parser() -> argparse.ArgumentParser:
    p = common.seeded_parser(NAME, __doc__.splitlines()[0], iterations=1200)
    p.add_argument("--strides", nargs="+", type=int, choices=sorted(LEVELS), default=[16, 32])
    return p


def gains(runs: dict, seeds: list[int], stride: int) -> dict:
    """Per seed, RoIAlign - RoIPool at ``stride`` for every metric: ``{str(seed): {metric: gain}}``."""
    return {str(s): {m: round(runs[f"align_s{stride}"][str(s)][m] - runs[f"pool_s{stride}"][str(s)][m], 2)
                     for m in METRICS} for s in seeds}


def claims(runs: dict, seeds: list[int], strides: list[int]) -> list[dict]:
    """The paper's orderings, each with its paper gap and our per-seed paired verdict."""
    paper_gain = {st: {m: round(PAPER[f"align_s{st}"][m] - PAPER[f"pool_s{st}"][m], 2) for m in METRICS}
                  for st in strides}
    gain = {f"s{st}": gains(runs, seeds, st) for st in strides}
    found = []
    for st in strides:
        for m in ("AP", "AP75"):
            found.append({"claim": f"RoIAlign beats RoIPool at stride {st} ({m})", "paper_gap": paper_gain[st][m],
                          **common.compare(runs, seeds, f"align_s{st}", f"pool_s{st}", m)})
        found.append({"claim": f"at stride {st} the gain is larger at AP75 than at AP50",
                      "paper_gap": round(paper_gain[st]["AP75"] - paper_gain[st]["AP50"], 2),
                      **common.paired_verdict([gain[f"s{st}"][str(s)]["AP75"] for s in seeds],
                                              [gain[f"s{st}"][str(s)]["AP50"] for s in seeds])})
    if set(strides) == {16, 32}:
        for m in ("AP", "AP75"):
            found.append({"claim": f"the gain is larger at stride 32 than at 16 ({m})",
                          "paper_gap": round(paper_gain[32][m] - paper_gain[16][m], 2),
                          **common.compare(gain, seeds, "s32", "s16", m)})
    return found


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.iterations, args.batch_size, args.eval_images, args.seeds = 2, 2, 4, args.seeds[:1]
    train_set, eval_set = splits(args.smoke, args.eval_images, EVAL_SEED)
    init = read_backbone(INIT) if args.init == "backbone" else None
    metrics: dict = {
        "setup": {"features": "resnet_tiny (GN) C4 (stride 16) or C5 (stride 32), 1x1 conv to 64", "init": args.init,
                  "rois": "ground-truth boxes (train and eval)",
                  "roi_features": "14 x 14: roi_pool, or roi_align with sampling_ratio=2, aligned=False",
                  "mask_head": "4 x 3x3 conv (64), 2x deconv, K + 1 sigmoid masks, loss on the GT class",
                  "iterations": args.iterations, "batch_size": args.batch_size,
                  "recipe": "TrainConfig defaults (AdamW 1e-3, wd 0.05, warm-up + cosine), no EMA",
                  "train_split": "generated, 10000 images of 256 px, seed 0",
                  "eval_split": f"generated val, {args.eval_images} images of 256 px, seed {EVAL_SEED}"
                  if not args.smoke else "committed val split (first 4 images)"},
        "paper": PAPER,
        "runs": {f"{pool}_s{stride}": {} for stride in args.strides for pool in POOLS},
    }
    common.resume_runs(NAME, args, metrics)
    rows = {f"{pool}_s{stride}": (stride, pool) for stride in args.strides for pool in POOLS}
    for seed, key in common.pending(metrics["runs"], args.seeds, list(rows)):
        stride, pool = rows[key]
        torch.manual_seed(seed)  # the same initial weights for both pools at a stride
        model = GTBoxMaskModel(train_set.num_classes, init, level=LEVELS[stride], pool=pool, aligned=False)
        with common.stopwatch() as took:
            losses = train_masks(model, mask_loss, train_set, args.iterations, args.batch_size, seed,
                                 log=None if args.smoke else f"{key} seed {seed}")
        stats = mask_ap(model, class_sigmoid_probs, eval_set, args.eval_images)
        row = {**{m: round(100 * stats[m], 2) for m in METRICS}, "train_s": took["wall_s"],
               "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}
        metrics["runs"][key][str(seed)] = row
        print(f"seed {seed} {key:>9}: " + "  ".join(f"{m} {row[m]:5.1f}" for m in METRICS)
              + f"  loss {row['final_loss']:.3f}  ({took['wall_s']:.0f} s)", flush=True)
        common.write_partial(NAME, args, metrics)
    # A reference that reads no feature: each box gets its class's mean mask (from as many
    # training images as one run sees). How close the rows come to it says how much of
    # their AP the features add beyond the box and the class.
    means = ClassMeanMasks(train_set.num_classes).fit(train_set, args.iterations * args.batch_size)
    metrics["class_mean_masks"] = {m: round(100 * v, 2) for m, v in
                                   mask_ap(means, class_channel, eval_set, args.eval_images).items() if m in METRICS}
    sides = torch.tensor([a["bbox"][2] * a["bbox"][3] for a in eval_set.coco.loadAnns(eval_set.coco.getAnnIds())]).sqrt()
    metrics["eval_median_box_side_px"] = round(sides.median().item(), 1)
    metrics["summary"] = common.summarise(metrics["runs"], args.seeds, METRICS)
    metrics["gains"] = {f"s{st}": gains(metrics["runs"], args.seeds, st) for st in args.strides}
    metrics["claims"] = claims(metrics["runs"], args.seeds, args.strides)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return common.main_seeded(NAME, run, build_parser, argv)


if __name__ == "__main__":
    main()
