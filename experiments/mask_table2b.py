"""Mask R-CNN paper, Table 2b in miniature: multinomial (softmax) against independent (sigmoid) masks.

    python -m experiments.mask_table2b [--smoke] [--seeds 0 1 2] [--iterations 1500] [--threads 1]

The paper's mask branch predicts one 28 x 28 mask per class and trains only the channel
of the ground-truth class, with a per-pixel sigmoid: the classes never compete. The
alternative it ablates is FCN's per-pixel softmax over the classes (and the background),
which couples them. On ResNet-50-C4 it reports 24.8 (softmax) against 30.3 (sigmoid)
mask AP. This script trains the same mask head both ways and changes nothing else:

* features: C4 (stride 16, the paper's C4 setting) of the book's tiny GroupNorm ResNet,
  initialised from the book's pretrained ``checkpoints/backbone.pt`` (the body only), then
  a 1x1 conv to 64 channels;
* RoIs: the **ground-truth boxes**, in training and at evaluation, so that detection
  cannot differ between the two runs, only the masks can. RoIAlign 14 x 14
  (``sampling_ratio=2``, ``aligned=True``), then the Mask R-CNN head (4 x 3x3 conv, 2x
  deconv) and ``K + 1`` output channels (background and the 8 classes);
* loss: ``mask_loss`` on the ground-truth class's channel (sigmoid) or
  ``softmax_mask_loss`` over all channels (softmax); the mask of an RoI is then where
  that channel's sigmoid passes 0.5, or (FCN's reading) where its class wins the per-pixel
  argmax. The record also gives two other readings of each softmax model: its class's
  probability cut at 0.5 (``AP_softmax_p``), and any class against the background
  (``AP_softmax_fg``), which shows how much of the loss is the classes' competition;
* recipe: the book's defaults (AdamW, lr 1e-3, weight decay 0.05 off norms and biases,
  warm-up then cosine; ``fpnbook.train.TrainConfig``), batch 4 of the cached
  10,000-image training split;
* every seed starts both variants from the same weights and feeds them the same images in
  the same order; scored by COCO mask AP (pycocotools) on a generated split of
  ``--eval-images`` images of a seed no other run uses (each box's mask, score 1).

The record holds, per variant, every seed's AP / AP50 / AP75, their mean and sd, and
the per-seed paired difference sigmoid - softmax with its verdict
(``experiments.common.paired_verdict``). Writes ``experiments/results/mask_table2b.json``;
chapter 3 reads it.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from experiments import common
from experiments.gt_box_masks import GTBoxMaskModel, class_sigmoid_probs, mask_ap, splits, train_masks
from fpnbook.checkpoint import read_backbone
from fpnbook.roi_heads import mask_loss, softmax_mask_loss, softmax_mask_probs

NAME = "mask_table2b"
VARIANTS = ("softmax", "sigmoid")
METRICS = ("AP", "AP50", "AP75")
# He et al. (2017), Table 2b (ResNet-50-C4), mask AP in %.
PAPER = {"softmax": {"AP": 24.8, "AP50": 44.1, "AP75": 25.1}, "sigmoid": {"AP": 30.3, "AP50": 51.2, "AP75": 31.5}}
EVAL_SEED = 2026_0202  # the evaluation split's generator seed: no training split or other record uses it
INIT = common.RESULTS.parents[1] / "checkpoints" / "backbone.pt"


def loss_of(variant: str, logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    return mask_loss(logits, labels, targets) if variant == "sigmoid" else softmax_mask_loss(logits, labels, targets)


def probs_of(variant: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Tensor[L, 1, 28, 28]: each box's mask, to be pasted and cut at 0.5.

    sigmoid: its class channel's probability. softmax: FCN's reading, 1 where the box's
    class wins the per-pixel argmax ("softmax_p" instead cuts the class's softmax probability at 0.5,
    "softmax_fg" cuts 1 - the background's probability: any class at all).
    """
    if variant == "sigmoid":
        return class_sigmoid_probs(logits, labels)
    if variant == "softmax_p":
        return softmax_mask_probs(logits, labels)
    if variant == "softmax_fg":  # any class against the background: the mask without the class's competition
        return 1 - logits.softmax(dim=1)[:, :1]
    return (logits.argmax(dim=1, keepdim=True) == labels[:, None, None, None]).float()


def build_parser() -> argparse.ArgumentParser:
    return common.seeded_parser(NAME, __doc__.splitlines()[0], iterations=1500)


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.iterations, args.batch_size, args.eval_images, args.seeds = 2, 2, 4, args.seeds[:1]
    train_set, eval_set = splits(args.smoke, args.eval_images, EVAL_SEED)
    init = read_backbone(INIT) if args.init == "backbone" else None
    metrics: dict = {
        "setup": {"features": "resnet_tiny (GN) C4, stride 16, 1x1 conv to 64", "init": args.init,
                  "rois": "ground-truth boxes (train and eval)", "roi_align": "14 x 14, sampling_ratio=2, aligned=True",
                  "mask_head": "4 x 3x3 conv (64), 2x deconv, K + 1 channels", "iterations": args.iterations,
                  "batch_size": args.batch_size, "recipe": "TrainConfig defaults (AdamW 1e-3, wd 0.05, warm-up + cosine), no EMA",
                  "train_split": "generated, 10000 images of 256 px, seed 0",
                  "eval_split": f"generated val, {args.eval_images} images of 256 px, seed {EVAL_SEED}"
                  if not args.smoke else "committed val split (first 4 images)"},
        "paper": PAPER,
        "runs": {v: {} for v in VARIANTS},
    }
    common.resume_runs(NAME, args, metrics)
    for seed, variant in common.pending(metrics["runs"], args.seeds, VARIANTS):
        torch.manual_seed(seed)  # the same initial head weights for both variants of a seed
        model = GTBoxMaskModel(train_set.num_classes, init, level="c4", pool="align", aligned=True)
        with common.stopwatch() as took:
            losses = train_masks(model, lambda *a, v=variant: loss_of(v, *a), train_set, args.iterations,
                                 args.batch_size, seed, log=None if args.smoke else f"{variant} seed {seed}")
        stats = mask_ap(model, lambda *a, v=variant: probs_of(v, *a), eval_set, args.eval_images)
        row = {**{m: round(100 * stats[m], 2) for m in METRICS}, "train_s": took["wall_s"],
               **({f"AP_{reading}": round(100 * mask_ap(model, lambda *a, r=reading: probs_of(r, *a), eval_set,
                                                           args.eval_images)["AP"], 2)
                   for reading in ("softmax_p", "softmax_fg")} if variant == "softmax" else {}),
               "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}
        metrics["runs"][variant][str(seed)] = row
        print(f"seed {seed} {variant:>8}: " + "  ".join(f"{m} {row[m]:5.1f}" for m in METRICS)
              + f"  loss {row['final_loss']:.3f}  ({took['wall_s']:.0f} s)", flush=True)
        common.write_partial(NAME, args, metrics)
    metrics["summary"] = common.summarise(metrics["runs"], args.seeds, METRICS)
    metrics["sigmoid_minus_softmax"] = {m: common.compare(metrics["runs"], args.seeds, "sigmoid", "softmax", m)
                                        for m in METRICS}
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return common.main_seeded(NAME, run, build_parser, argv)


if __name__ == "__main__":
    main()
