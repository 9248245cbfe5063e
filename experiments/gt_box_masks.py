"""The mask branch alone, on ground-truth boxes: what Mask R-CNN Tables 2b and 2c/2d vary.

Both tables change one thing of the mask branch (the per-pixel loss, or the RoI feature
extractor) and compare mask AP. To fit a CPU budget they drop what does not change: the
RoIs are the **ground-truth boxes**, in training and at evaluation, so there is no RPN
and no box head and detection cannot differ between runs; only the masks can.

* :class:`GTBoxMaskModel`: one level of the book's tiny GroupNorm ResNet (its body from
  ``checkpoints/backbone.pt``), a 1x1 conv to 64 channels, RoIAlign or RoIPool 14 x 14
  of the boxes, the Mask R-CNN mask head (4 x 3x3 conv, 2x deconv) and ``K + 1`` mask
  logit maps of 28 x 28 per box;
* :func:`train_masks`: the book's default recipe (``fpnbook.train.TrainConfig``: AdamW,
  warm-up then cosine, gradient clipping, no EMA), batches in an order that depends only
  on the seed;
* :func:`mask_ap`: COCO mask AP (pycocotools) of each ground-truth box's mask, pasted into
  the image with score 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import Tensor, nn

from fpnbook import data
from fpnbook.backbone import resnet_tiny
from fpnbook.evaluate import coco_evaluate, coco_from_dict, to_coco_results
from fpnbook.images import batch_images
from fpnbook.ops import roi_align, roi_pool
from fpnbook.roi_heads import MaskHead, MaskPredictor, paste_masks_in_image, project_masks_on_boxes
from fpnbook.train import TrainConfig, make_optimizer, make_scheduler

ROI_SIZE, MASK_SIZE, WIDTH = 14, 28, 64
STRIDES = {"c4": 16, "c5": 32}  # the backbone level each model reads, and its stride
POOLS = ("align", "pool")
# loss(logits [L, K+1, 28, 28], labels [L], targets [L, 28, 28]) -> scalar
MaskLoss = Callable[[Tensor, Tensor, Tensor], Tensor]
# probs(logits, labels) -> Tensor[L, 1, 28, 28], each box's mask probability
MaskProbs = Callable[[Tensor, Tensor], Tensor]


class GTBoxMaskModel(nn.Module):
    """``level`` -> 1x1 conv -> ``pool`` features of the given boxes -> mask head -> ``num_classes + 1`` logits per box.

    ``pool``: ``"align"`` (``roi_align``, ``sampling_ratio=2``, ``aligned`` as given) or
    ``"pool"`` (``roi_pool``: box corners rounded to the feature grid, bins max-pooled).
    ``init``: a pretrained-backbone file's state (``fpnbook.checkpoint.read_backbone``); its body is copied.
    """

    def __init__(self, num_classes: int, init: dict | None = None, level: str = "c4", pool: str = "align",
                 aligned: bool = True) -> None:
        super().__init__()
        if level not in STRIDES:
            raise ValueError(f"level must be one of {sorted(STRIDES)}, got {level!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.level, self.pool, self.aligned, self.stride = level, pool, aligned, STRIDES[level]
        self.backbone = resnet_tiny()
        if init is not None:
            self.backbone.load_state_dict(init["body"])
        channels = self.backbone.out_channels[self.backbone.names.index(level)]
        self.reduce = nn.Conv2d(channels, WIDTH, 1)
        self.head = MaskHead(WIDTH, layers=(WIDTH,) * 4)
        self.predictor = MaskPredictor(WIDTH, WIDTH, num_classes + 1)

    def forward(self, batch: Tensor, boxes: list[Tensor]) -> Tensor:
        """batch [B, 3, H, W] normalised; boxes: B x Tensor[L_i, 4] XYXY pixels -> logits [sum L_i, K + 1, 28, 28]."""
        feature = F.relu(self.reduce(self.backbone(batch)[self.level]))
        if self.pool == "pool":
            rois = roi_pool(feature, boxes, ROI_SIZE, 1 / self.stride)
        else:
            rois = roi_align(feature, boxes, ROI_SIZE, 1 / self.stride, sampling_ratio=2, aligned=self.aligned)
        return self.predictor(self.head(rois))


class ClassMeanMasks(nn.Module):
    """A reference that reads no feature at all: every box gets its class's mean 28 x 28 mask target.

    Built from the first ``count`` images of a training set (:meth:`fit`); its "logits" are
    the mean masks themselves, [L, K + 1, 28, 28], to be read with :func:`class_channel`. It
    shows how much of a mask AP the box and class alone explain.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(num_classes + 1, MASK_SIZE, MASK_SIZE))

    @torch.no_grad()
    def fit(self, dataset: data.CocoDataset, count: int, pooled: Iterable[int] | None = None) -> "ClassMeanMasks":
        """Mean mask targets of the objects of the first ``count`` images of ``dataset``.

        ``pooled``: labels whose objects are averaged into one mean mask that every class
        gets, a reference that knows masks but not which class a box holds (None: each
        class its own mean).
        """
        sums, counts = torch.zeros_like(self.means), torch.zeros(len(self.means))
        pooled = None if pooled is None else torch.tensor(sorted(pooled))
        for i in range(min(count, len(dataset))):
            _, target = dataset[i]
            boxes, labels = target["boxes"].as_subclass(Tensor), target["labels"]
            masks = target["masks"].as_subclass(Tensor)
            if pooled is not None:
                keep = torch.isin(labels, pooled)
                boxes, masks, labels = boxes[keep], masks[keep], torch.zeros_like(labels[keep])  # all into row 0
            if len(boxes):
                sums.index_add_(0, labels, project_masks_on_boxes(masks, boxes, torch.arange(len(boxes)), MASK_SIZE))
                counts += torch.bincount(labels, minlength=len(counts)).float()
        self.means.copy_(sums / counts.clamp(min=1)[:, None, None])
        if pooled is not None:
            self.means.copy_(self.means[:1].expand_as(self.means))
        return self

    def forward(self, batch: Tensor, boxes: list[Tensor]) -> Tensor:
        return self.means.expand(sum(len(b) for b in boxes), *self.means.shape)


def class_channel(logits: Tensor, labels: Tensor) -> Tensor:
    """Each box's own class channel, as it is: Tensor[L, 1, 28, 28]."""
    return logits[torch.arange(len(labels)), labels][:, None]


def class_sigmoid_probs(logits: Tensor, labels: Tensor) -> Tensor:
    """Mask R-CNN's reading: the sigmoid of each box's own class channel, Tensor[L, 1, 28, 28]."""
    return class_channel(logits, labels).sigmoid()


def splits(smoke: bool, eval_images: int, eval_seed: int) -> tuple[data.CocoDataset, data.CocoDataset]:
    """The cached 10,000-image training split, and a generated evaluation split of ``eval_images`` of ``eval_seed``.

    ``smoke`` trains on 8 generated images and evaluates on the committed validation split
    instead: a smoke run shows the script runs, not how well, and should not spend minutes
    generating splits on a fresh machine.
    """
    if smoke:
        train_set = data.CocoDataset(*data.ensure_split("train", 8, image_size=256, seed=0, progress=False))
        return train_set, data.CocoDataset(*data.val_paths())
    train_set = data.CocoDataset(*data.ensure_split("train", 10000, image_size=256, seed=0, progress=False))
    return train_set, data.CocoDataset(*data.ensure_split("val", eval_images, image_size=256, seed=eval_seed,
                                                          progress=False))


def train_masks(model: GTBoxMaskModel, loss_fn: MaskLoss, dataset: data.CocoDataset, iterations: int,
                batch_size: int, seed: int, log: str | None = None) -> list[float]:
    """Train ``model`` with the book's default recipe; returns the loss of every step.

    The batch order depends only on ``seed``, so every variant of a seed sees the same
    images in the same order. Images without objects are skipped. ``log``: a prefix to
    print the mean loss every 100 steps with (None prints nothing).
    """
    config = TrainConfig(iterations=iterations, batch_size=batch_size, warmup_iters=min(100, iterations // 5),
                         ema_decay=None, seed=seed)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    losses: list[float] = []
    model.train()
    for step in range(iterations):
        items = [dataset[order[(step * batch_size + j) % len(dataset)].item()] for j in range(batch_size)]
        items = [(image, target) for image, target in items if len(target["boxes"])]
        if not items:
            continue
        images, targets = zip(*items)
        batch, _ = batch_images(list(images))
        boxes = [t["boxes"].as_subclass(Tensor) for t in targets]
        labels = torch.cat([t["labels"] for t in targets])
        mask_targets = torch.cat([project_masks_on_boxes(t["masks"].as_subclass(Tensor), b, torch.arange(len(b)),
                                                         MASK_SIZE) for t, b in zip(targets, boxes)])
        loss = loss_fn(model(batch, boxes), labels, mask_targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log is not None and (step + 1) % 100 == 0:
            print(f"  {log} step {step + 1}: loss {sum(losses[-100:]) / len(losses[-100:]):.3f}", flush=True)
    return losses


def restricted_gt(dataset: data.CocoDataset, category_ids) -> COCO:
    """``dataset``'s ground truth with only ``category_ids``' annotations and categories (all images kept)."""
    coco = copy.deepcopy(dataset.coco.dataset)
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in category_ids]
    coco["categories"] = [c for c in coco["categories"] if c["id"] in category_ids]
    return coco_from_dict(coco, f"{dataset.ann_file}, restricted to categories {sorted(category_ids)}")


@torch.no_grad()
def mask_ap(model: GTBoxMaskModel, probs_fn: MaskProbs, dataset: data.CocoDataset, count: int,
            labels_only: Iterable[int] | None = None) -> dict[str, float]:
    """COCO mask stats of the masks ``probs_fn`` reads for the ground-truth boxes of the first ``count`` images.

    Each box gets its mask, pasted into the image and cut at 0.5, with score 1.
    ``labels_only``: score only the objects and categories of these labels (default: all).
    """
    model.eval()
    outputs, image_ids = [], []
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        boxes, labels = target["boxes"].as_subclass(Tensor), target["labels"]
        batch, _ = batch_images([image])
        probs = probs_fn(model(batch, [boxes]), labels) if len(boxes) else torch.zeros(0, 1, MASK_SIZE, MASK_SIZE)
        masks = paste_masks_in_image(probs, boxes, tuple(image.shape[-2:]))
        outputs.append({"boxes": boxes, "labels": labels, "scores": torch.ones(len(labels)), "masks": masks})
        image_ids.append(dataset.image_ids[i])
    results = to_coco_results(outputs, image_ids, dataset.label_to_cat_id)
    gt = dataset.coco
    if labels_only is not None:
        category_ids = {dataset.label_to_cat_id[label] for label in labels_only}
        results = [r for r in results if r["category_id"] in category_ids]
        gt = restricted_gt(dataset, category_ids)
    return coco_evaluate(gt, results, iou_types=("segm",), image_ids=image_ids)["segm"]
