"""Mask R-CNN paper, Table 2c/2d in miniature: the same mask head fed by RoIPool or by RoIAlign, at stride 16 and 32.

    python -m experiments.roialign_table2 [--smoke] [--threads 2]

The experiment isolates the one thing Table 2c/2d varies, the RoI feature extractor,
and drops everything else a Mask R-CNN does, to fit a shared two-core CPU:

* images are the 256 px synthetic images halved to 128 px (masks and boxes too), for speed;
* features come from a single level of the tiny GroupNorm ResNet (``resnet_tiny``):
  C4 (stride 16, as the paper's ResNet-50-C4 of Table 2c) or C5 (stride 32, Table 2d),
  through a 1x1 conv to 32 channels so the mask head is the same in every run;
* the RoIs are the **ground-truth boxes**, both in training and at evaluation. There is
  no RPN and no box head, so detection quality cannot differ between runs: only the
  masks do. Mask targets are the ground-truth masks cut out by the same boxes
  (``project_masks_on_boxes``, 28 x 28);
* RoI features are 14 x 14, by ``roi_pool`` or by ``roi_align`` (``sampling_ratio=2``,
  ``aligned=False``, as in the paper);
* the mask head is two 3x3 conv layers of 32 channels, then ``MaskPredictor``
  (2x deconv, then one class-agnostic 28 x 28 mask), trained with the sigmoid loss.
  Class-agnostic masks learn faster in a short schedule; the paper finds them nearly
  as good (29.7 vs 30.3 AP, Table 2b).

Every run starts from the same weights, sees the same images in the same order with
the same schedule, and is scored on the committed validation split by COCO mask AP
(pycocotools): each ground-truth box gets the mask predicted for its class, pasted
into the image, with score 1. The numbers measure mask quality given perfect boxes,
so they are higher than the paper's, which also pay for detection errors; the gaps
between RoIPool and RoIAlign are the thing to compare.
Writes ``experiments/results/roialign_table2.json``; chapter 3 reads it.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor, nn

from experiments import common
from fpnbook import data
from fpnbook.boxes import xyxy_to_xywh
from fpnbook.backbone import resnet_tiny
from fpnbook.evaluate import coco_evaluate, coco_from_dict, to_coco_results
from fpnbook.images import batch_images
from fpnbook.ops import roi_align, roi_pool
from fpnbook.roi_heads import MaskHead, MaskPredictor, mask_loss, paste_masks_in_image, project_masks_on_boxes

NAME = "roialign_table2"
LEVELS = {16: "c4", 32: "c5"}  # stride -> resnet_tiny feature
POOLS = ("pool", "align")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# He et al. (2017), Table 2c (ResNet-50-C4, stride 16) and 2d (ResNet-50-C5, stride 32), mask AP in %.
PAPER = {
    "pool_s16": {"AP": 26.9, "AP50": 48.8, "AP75": 26.4},
    "align_s16": {"AP": 30.3, "AP50": 51.2, "AP75": 31.5},
    "pool_s32": {"AP": 23.6, "AP50": 46.5, "AP75": 21.6},
    "align_s32": {"AP": 30.9, "AP50": 51.8, "AP75": 32.1},
}
ROI_SIZE, MASK_SIZE, WIDTH = 14, 28, 32


class GTBoxMaskModel(nn.Module):
    """Backbone level -> 1x1 conv -> RoI features of the given boxes -> one 28x28 mask logit map per box."""

    def __init__(self, stride: int, pool: str) -> None:
        super().__init__()
        if stride not in LEVELS:
            raise ValueError(f"stride must be one of {sorted(LEVELS)}, got {stride!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.stride, self.pool = stride, pool
        self.backbone = resnet_tiny()
        channels = self.backbone.out_channels[self.backbone.names.index(LEVELS[stride])]
        self.reduce = nn.Conv2d(channels, WIDTH, 1)
        self.head = MaskHead(WIDTH, layers=(WIDTH, WIDTH))
        self.predictor = MaskPredictor(WIDTH, WIDTH, 1)  # class-agnostic: one mask per RoI

    def forward(self, batch: Tensor, boxes: list[Tensor]) -> Tensor:
        """batch [B, 3, H, W] normalised; boxes: B x Tensor[L_i, 4] XYXY pixels -> logits [sum L_i, 1, 28, 28]."""
        feature = F.relu(self.reduce(self.backbone(batch)[LEVELS[self.stride]]))
        if self.pool == "pool":
            rois = roi_pool(feature, boxes, ROI_SIZE, 1 / self.stride)
        else:
            rois = roi_align(feature, boxes, ROI_SIZE, 1 / self.stride, sampling_ratio=2, aligned=False)
        return self.predictor(self.head(rois))


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, default=160, help="first N images of the cached 1000-image split")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--strides", nargs="+", type=int, choices=sorted(LEVELS), default=[16, 32])
    return p


def shrink(image: Tensor, target: dict) -> tuple[Tensor, dict]:
    """Halve an image and its objects: 2x2 mean of pixels, masks kept where over half covered, boxes / 2.

    Objects whose mask vanishes are dropped. The target keeps ``boxes``, ``labels``, ``masks``, ``image_id``.
    """
    image = F.avg_pool2d(image[None].as_subclass(Tensor), 2)[0]
    masks = (F.avg_pool2d(target["masks"].as_subclass(Tensor)[:, None].float(), 2)[:, 0] > 0.5).to(torch.uint8)
    keep = masks.flatten(1).any(1).bool()
    return image, {"boxes": target["boxes"].as_subclass(Tensor)[keep] / 2, "labels": target["labels"][keep],
                   "masks": masks[keep], "image_id": target["image_id"]}


def load_all(dataset: data.CocoDataset, count: int | None = None) -> list[tuple[Tensor, dict]]:
    """The first ``count`` images (all when None) that hold an object, halved by :func:`shrink`, in memory."""
    items = []
    for i in range(len(dataset)):
        image, target = shrink(*dataset[i])
        if len(target["boxes"]):
            items.append((image, target))
        if len(items) == count:
            break
    return items


def coco_ground_truth(items: list[tuple[Tensor, dict]], dataset: data.CocoDataset) -> COCO:
    """A COCO ground truth for the halved images (RLE masks), so pycocotools scores them at their size."""
    images, annotations = [], []
    for image, target in items:
        height, width = image.shape[-2:]
        images.append({"id": target["image_id"], "height": height, "width": width})
        rles = mask_utils.encode(np.asfortranarray(target["masks"].permute(1, 2, 0).numpy()))
        for box, label, rle in zip(xyxy_to_xywh(target["boxes"]).tolist(), target["labels"].tolist(), rles):
            annotations.append({"id": len(annotations) + 1, "image_id": target["image_id"], "bbox": box,
                                "category_id": dataset.label_to_cat_id[label], "iscrowd": 0,
                                "area": float(mask_utils.area(rle)),
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return coco_from_dict({"images": images, "annotations": annotations,
                           "categories": list(dataset.coco.cats.values())}, "the resized validation split")


def train_one(model: GTBoxMaskModel, items: list, args: argparse.Namespace) -> list[float]:
    """AdamW with a short warmup and a cosine decay; the batch order depends only on the seed."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = max(1, args.iterations // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * i / args.iterations)))
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(args.seed))
    losses = []
    model.train()
    for step in range(args.iterations):
        picks = [order[(step * args.batch_size + j) % len(items)].item() for j in range(args.batch_size)]
        images, targets = zip(*(items[i] for i in picks))
        batch, _ = batch_images(list(images))
        boxes = [t["boxes"] for t in targets]
        logits = model(batch, boxes)
        mask_targets = torch.cat([project_masks_on_boxes(t["masks"], b, torch.arange(len(b)),
                                                         MASK_SIZE) for t, b in zip(targets, boxes)])
        loss = mask_loss(logits, torch.zeros(len(logits), dtype=torch.long), mask_targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if not args.smoke and (step + 1) % 25 == 0:
            print(f"  step {step + 1}: loss {sum(losses[-25:]) / 25:.3f}", flush=True)
    return losses


@torch.no_grad()
def evaluate_masks(model: GTBoxMaskModel, items: list, gt: COCO, label_to_cat_id: dict) -> dict[str, float]:
    """COCO mask AP of the masks predicted for the ground-truth boxes (score 1 each)."""
    model.eval()
    outputs, image_ids = [], []
    for image, target in items:
        boxes, labels = target["boxes"], target["labels"]
        batch, _ = batch_images([image])
        logits = model(batch, [boxes])
        probs = logits.sigmoid()
        masks = paste_masks_in_image(probs, boxes, tuple(image.shape[-2:]))
        outputs.append({"boxes": boxes, "labels": labels, "scores": torch.ones(len(labels)), "masks": masks})
        image_ids.append(target["image_id"])
    results = to_coco_results(outputs, image_ids, label_to_cat_id)
    return coco_evaluate(gt, results, iou_types=("segm",))["segm"]


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.train_images, args.iterations, args.batch_size = 4, 2, 2
    train_set = data.CocoDataset(*data.ensure_split("train", 1000, image_size=256, seed=0, progress=False))
    items = load_all(train_set, args.train_images)
    val_set = data.CocoDataset(*data.val_paths())
    val = load_all(val_set, 4 if args.smoke else None)  # --smoke shows the script runs, not how well
    gt = coco_ground_truth(val, val_set)
    metrics = {"setup": {"backbone": "resnet_tiny (GN), C4 for stride 16, C5 for stride 32, 1x1 conv to 32",
                         "rois": "ground-truth boxes (train and eval)", "roi_size": ROI_SIZE, "mask_size": MASK_SIZE,
                         "roi_align": "sampling_ratio=2, aligned=False", "train_images": len(items),
                         "image_size": "128 (the 256 px images halved)", "val_images": len(val),
                         "iterations": args.iterations,
                         "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW, warmup + cosine",
                         "seed": args.seed},
               "paper": PAPER}
    for stride in args.strides:
        for pool in POOLS:
            key = f"{pool}_s{stride}"
            torch.manual_seed(args.seed)  # the same initial weights for both pools at a stride
            model = GTBoxMaskModel(stride, pool)
            with common.stopwatch() as took:
                losses = train_one(model, items, args)
            stats = evaluate_masks(model, val, gt, val_set.label_to_cat_id)
            metrics[key] = {**{m: round(100 * stats[m], 2) for m in METRICS}, "train_s": took["wall_s"],
                            "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                            "loss": [round(v, 4) for v in losses[:: max(1, len(losses) // 50)]]}
            print(f"{key:>9}: " + "  ".join(f"{m} {metrics[key][m]:5.1f}" for m in METRICS)
                  + f"  loss {metrics[key]['final_loss']:.3f}  ({took['wall_s']:.0f} s)", flush=True)
            # Keep what has finished, so a run stopped half way still leaves its first rows.
            partial = {"experiment": NAME, "partial": True, "smoke": args.smoke, "seed": args.seed, "metrics": metrics}
            common.write_record(common.result_path(NAME, args).with_suffix(".partial.json"), partial)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    record = common.main(NAME, run, build_parser, argv)
    args = build_parser().parse_args(argv)
    if not args.smoke or args.out is not None:  # the full record is written: the partial one is stale
        common.result_path(NAME, args).with_suffix(".partial.json").unlink(missing_ok=True)
    return record


if __name__ == "__main__":
    main()
