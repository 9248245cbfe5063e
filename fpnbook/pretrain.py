"""The book's own pretrained backbone: dense shape segmentation on freshly generated images.

Every detector in the papers starts from a ResNet pretrained on ImageNet. The book
cannot download one, so it makes its own: a ResNet body and FPN trained to label every
pixel of generated images with its shape class (0 is background, 1..8 the
:data:`fpnbook.data.SHAPE_CLASSES`). Dense labels give a training signal at every pixel
of every image, where a detector's classifier sees a few hundred sampled RoIs; so a
short pretraining teaches the features what each shape looks like, and detectors
initialised from it (:func:`fpnbook.checkpoint.build_from_backbone`) converge in far fewer steps.

The pretraining images come from the generator with their own seed stream
(``split="pretrain"``), so they are never the images of a train or val split.

* :class:`ShapesSemantic`: image ``i`` is a fresh generated image with its label map.
* :class:`SemanticPretrainer`: body + FPN (the same modules, and parameter names, as a
  Mask R-CNN's ``model.backbone``) and a small per-pixel classifier. It follows the
  detectors' protocol (``model(images, targets)`` returns a loss dict in training), so
  :func:`fpnbook.train.train` trains it, checkpoints, EMA and resume included.
* :func:`backbone_state` / :func:`export_backbone`: what the shipped file holds, and how a
  run's ``last.pt`` becomes one. Reading the file and starting a detector from it is
  :mod:`fpnbook.checkpoint`'s job (``read_backbone``, ``load_backbone``, ``build_from_backbone``).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import masks_to_boxes

from .backbone import norm_layer
from .shapes import SHAPE_CLASSES, render_image
from .files import atomic_save
from .fpn import FPN, BackboneWithFPN, LastLevelMaxPool
from .images import batch_images
from .models import ModelConfig, build_body
from .poolers import MultiScaleRoIAlign
from .rcnn import BOX_POOL_SIZE, CANONICAL_SCALE
from .roi_heads import TwoMLPHead

IGNORE = -100  # label of pixels that give no loss (F.cross_entropy's default ignore_index)


class ShapesSemantic(torch.utils.data.Dataset):
    """``size`` generated images with per-pixel class labels; item ``i`` is the same for the same ``seed``.

    Item: ``(image, {"semantic": label, "boxes": boxes, "labels": labels})``: image float
    Tensor[3, S, S] in 0..1; label int64 Tensor[S, S] with 0 for background and the shape's
    category (1..8) elsewhere; boxes float Tensor[N, 4] ``(x0, y0, x1, y1)`` in pixels
    (the edges of each object's mask, so ``x1 - x0`` is its width) and labels int64 Tensor[N].
    Images are rendered on demand (a few ms each), so every step can see new ones.

    ``mask_classes``: for Mask^X R-CNN, whose classes outside this set must never have
    masks. Each object of another class gets :data:`IGNORE` over its whole bounding box,
    so the labels carry only what that model may see of it (where its box is), not its shape.
    """

    def __init__(self, size: int, image_size: int = 256, seed: int = 0,
                 mask_classes: Sequence[int] | None = None) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive number of images, got {size!r}")
        self.size, self.image_size, self.seed = size, image_size, seed
        render_image(image_size, np.random.default_rng(0))  # checks image_size once, here
        self.mask_classes = None
        if mask_classes is not None:
            self.mask_classes = sorted(set(int(c) for c in mask_classes))
            if not self.mask_classes or not set(self.mask_classes) <= set(range(1, len(SHAPE_CLASSES) + 1)):
                raise ValueError(f"mask_classes must be labels in 1..{len(SHAPE_CLASSES)}, got {list(mask_classes)}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if not 0 <= index < self.size:
            raise IndexError(f"image {index} of {self.size}")
        rng = np.random.default_rng([self.seed, zlib.crc32(b"pretrain"), index])
        pixels, masks, categories = render_image(self.image_size, rng)
        masks = torch.from_numpy(masks)
        labels = torch.as_tensor(categories, dtype=torch.int64)
        boxes = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel edges
        has_mask = None if self.mask_classes is None else torch.isin(labels, torch.tensor(self.mask_classes))
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
        return image, {"semantic": semantic_labels(masks, boxes, labels, has_mask), "boxes": boxes, "labels": labels}


def semantic_labels(masks: Tensor, boxes: Tensor, labels: Tensor, has_mask: Tensor | None = None) -> Tensor:
    """One label map from instance masks: int64 Tensor[H, W], 0 background, ``labels[i]`` on mask ``i``.

    ``masks`` Tensor[N, H, W] (bool or 0/1), ``boxes`` Tensor[N, 4] x0 y0 x1 y1 pixels,
    ``labels`` int64 Tensor[N]. An object without a mask (``has_mask[i]`` False, or an
    empty mask) gets :data:`IGNORE` over its box: its pixels are unknown, not background.
    Where masks overlap, the later one wins.
    """
    if masks.ndim != 3 or len(boxes) != len(masks) or labels.shape != (len(masks),) or \
            (has_mask is not None and has_mask.shape != (len(masks),)):
        shapes = [list(t.shape) for t in (masks, boxes, labels) + ((has_mask,) if has_mask is not None else ())]
        raise ValueError(f"masks [N, H, W], boxes [N, 4], labels [N] (and has_mask [N]) must agree on N, got {shapes}")
    height, width = masks.shape[-2:]
    label = torch.zeros(height, width, dtype=torch.int64)
    masks = masks.bool()
    known = masks.flatten(1).any(1) if has_mask is None else has_mask.bool() & masks.flatten(1).any(1)
    for mask, category in zip(masks[known], labels[known]):
        label[mask] = category
    for box in boxes[~known]:
        x0, y0 = (int(v) for v in box[:2].floor().clamp(min=0))
        x1, y1 = int(box[2].ceil().clamp(max=width)), int(box[3].ceil().clamp(max=height))
        label[y0:y1, x0:x1] = IGNORE
    return label


class SemanticFromInstances(torch.utils.data.Dataset):
    """Pretraining items from an instance dataset (e.g. :class:`fpnbook.data.CocoDataset` of your own images).

    Item ``i`` is ``(image, {"semantic", "boxes", "labels"})`` as in :class:`ShapesSemantic`,
    the label map made by :func:`semantic_labels` from ``dataset[i]``'s masks (its
    ``has_mask``, when it has one, marks the objects whose masks may be used).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, target = self.dataset[index]
        boxes, labels = target["boxes"].as_subclass(Tensor).float(), target["labels"]
        semantic = semantic_labels(target["masks"].as_subclass(Tensor), boxes, labels, target.get("has_mask"))
        return image.as_subclass(Tensor), {"semantic": semantic, "boxes": boxes, "labels": labels}


class SemanticPretrainer(nn.Module):
    """A ResNet body and FPN (P2..P6) that learn shapes two ways: per pixel, and per object.

    * **Per pixel**, a shared classifier (3x3 conv, norm, ReLU, 1x1 conv) labels P2..P5:
      each level's logits are upsampled to stride 4 and scored by cross-entropy against
      the labels at stride 4 (``loss_semantic``, the mean over levels), so every level and
      stage learns where objects are and what they are.
    * **Per object**, each ground-truth box and ``jitter`` randomly shifted and scaled
      copies of it (like the proposals a detector sees) are pooled 7x7 with RoIAlign from
      their FPN level and classified into the 8 shapes by the same two-layer MLP a Mask
      R-CNN's box head has (``box_head``; ``loss_object``). A pixel classifier sees only
      its neighbourhood, while this head sees the whole object laid out on a grid, which is
      how a detector tells a square from a hexagon; its fc layers start the detector's box
      head, as ImageNet-trained fc6 and fc7 started Fast R-CNN's.

    forward(images, targets=None): ``images`` a list of float Tensor[3, H, W] in 0..1.
    In training ``targets[i]`` holds ``"semantic"`` (int64 Tensor[H, W], 0 background,
    :data:`IGNORE` ignored), ``"boxes"`` (float Tensor[N, 4], x0 y0 x1 y1 pixels) and
    ``"labels"`` (int64 Tensor[N], 1..num_classes), and the result is
    ``{"loss_semantic", "loss_object"}``. In evaluation it returns float
    Tensor[B, num_classes + 1, H, W] pixel logits (from P2) in padded-batch pixels.

    ``model.backbone`` has the same submodules and parameter names as the
    ``model.backbone`` of a Mask R-CNN built from the same ``ModelConfig`` backbone,
    norm and fpn_channels, and ``model.box_head`` as its ``roi_heads.box_head``.
    ``objects=False`` leaves out the per-object branch (per-pixel labels only).
    """

    def __init__(self, backbone: str = "tiny", norm: str = "gn", fpn_channels: int = 64,
                 num_classes: int = len(SHAPE_CLASSES), representation_size: int = 256, jitter: int = 3,
                 objects: bool = True) -> None:
        super().__init__()
        self.config = ModelConfig(kind="mask_rcnn", backbone=backbone, norm=norm, fpn_channels=fpn_channels,
                                  num_classes=num_classes)
        body = build_body(self.config)
        self.backbone = BackboneWithFPN(body, FPN(body.out_channels, fpn_channels, LastLevelMaxPool()))
        self.head = nn.Sequential(
            nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
            norm_layer(norm, fpn_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fpn_channels, num_classes + 1, 1),
        )
        self.levels = ("p2", "p3", "p4", "p5")
        self.objects, self.jitter = objects, jitter
        if objects:
            self.box_pool = MultiScaleRoIAlign(list(self.levels), BOX_POOL_SIZE, 2, canonical_scale=CANONICAL_SCALE)
            self.box_head = TwoMLPHead(fpn_channels * BOX_POOL_SIZE**2, representation_size)
            self.object_classifier = nn.Linear(representation_size, num_classes)

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping] | None = None):
        batch, image_sizes = batch_images(images)
        features = self.backbone(batch)
        size = features["p2"].shape[-2:]
        if not self.training:
            return F.interpolate(self.head(features["p2"]), size=batch.shape[-2:], mode="bilinear", align_corners=False)
        if targets is None or len(targets) != len(images):
            raise ValueError("in training, targets must be one dict with 'semantic', 'boxes' and 'labels' per image")
        labels = batch.new_zeros((len(images), *batch.shape[-2:]), dtype=torch.int64)
        for label, target in zip(labels, targets):
            semantic = target["semantic"]
            label[: semantic.shape[0], : semantic.shape[1]] = semantic
        labels = labels[:, 2::4, 2::4]  # the pixel at each stride-4 cell's centre
        losses = [
            F.cross_entropy(F.interpolate(self.head(features[name]), size=size, mode="bilinear", align_corners=False),
                            labels)
            for name in self.levels
        ]
        result = {"loss_semantic": sum(losses) / len(losses)}
        if self.objects:
            result["loss_object"] = self.object_loss(features, targets, image_sizes)
        return result

    def object_loss(self, features: Mapping[str, Tensor], targets: Sequence[Mapping],
                    image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Cross-entropy of the box head's shape classes on jittered ground-truth boxes (0 without objects)."""
        boxes = [jitter_boxes(t["boxes"], self.jitter, size) for t, size in zip(targets, image_sizes)]
        classes = torch.cat([t["labels"].repeat(self.jitter + 1) for t in targets]) - 1
        if classes.numel() == 0:
            return features["p2"].sum() * 0.0  # keeps the graph, so every rank's backward matches
        pooled = self.box_pool(dict(features), boxes, list(image_sizes))
        return F.cross_entropy(self.object_classifier(self.box_head(pooled)), classes)


def jitter_boxes(boxes: Tensor, copies: int, image_size: tuple[int, int], spread: float = 0.15) -> Tensor:
    """``boxes`` (Tensor[N, 4], x0 y0 x1 y1) followed by ``copies`` jittered copies of them: Tensor[N * (copies + 1), 4].

    Each copy moves its centre by ``spread`` x its size (normal) and scales its width and
    height by ``exp(spread * normal)``, then is clipped to the image, like a proposal that
    roughly covers the object. Draws from torch's global generator.
    """
    if copies == 0 or boxes.numel() == 0:
        return boxes.repeat(copies + 1, 1)
    repeated = boxes.repeat(copies, 1)
    centre, extent = (repeated[:, :2] + repeated[:, 2:]) / 2, repeated[:, 2:] - repeated[:, :2]
    centre = centre + spread * extent * torch.randn_like(centre)
    extent = extent * torch.exp(spread * torch.randn_like(extent))
    moved = torch.cat([centre - extent / 2, centre + extent / 2], dim=1)
    height, width = image_size
    moved = torch.stack([moved[:, 0].clamp(0, width - 1), moved[:, 1].clamp(0, height - 1),
                         moved[:, 2].clamp(1, width), moved[:, 3].clamp(1, height)], dim=1)
    moved[:, 2:] = torch.maximum(moved[:, 2:], moved[:, :2] + 1)  # at least a pixel wide
    return torch.cat([boxes, moved])


def backbone_state(model: SemanticPretrainer, mask_classes: Sequence[int] | None = None, **extra) -> dict:
    """What ``checkpoints/backbone.pt`` holds: the body's, FPN's and head's weights and how they were made.

    ``mask_classes``: the classes whose shapes the labels showed (None: all). Detectors take
    ``body`` and ``fpn``; ``head`` is kept so that :func:`pretrainer_from_state` can rebuild
    the whole pretrainer and score it. :func:`fpnbook.checkpoint.read_backbone` reads it back.
    """
    from .checkpoint import BACKBONE_FORMAT

    return {
        "format": BACKBONE_FORMAT,
        "mask_classes": None if mask_classes is None else sorted(int(c) for c in mask_classes),
        "backbone": model.config.backbone,
        "norm": model.config.norm,
        "fpn_channels": model.config.fpn_channels,
        "num_classes": model.config.num_classes,
        "body": model.backbone.backbone.state_dict(),
        "fpn": model.backbone.fpn.state_dict(),
        "head": model.head.state_dict(),
        **({"box_head": model.box_head.state_dict(), "object_classifier": model.object_classifier.state_dict()}
           if model.objects else {}),
        **extra,
    }


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike, **extra) -> dict:
    """Write the backbone file of a ``fpnbook pretrain`` run from its ``last.pt``, atomically.

    ``mask_classes``, ``steps`` and ``train_seconds`` (every session of a resumed run
    counted) come from the checkpoint; ``extra`` adds fields (``command``, ``mask_classes``, ...). Returns what was written.
    """
    from .checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    config = state["model_config"] or {}
    if config.get("kind") != "semantic_pretrainer":
        raise ValueError(f"{checkpoint} is not a checkpoint of `fpnbook pretrain` (kind {config.get('kind')!r})")
    model = SemanticPretrainer(backbone=config["backbone"], norm=config["norm"], fpn_channels=config["fpn_channels"],
                               objects="box_head.fc6.weight" in state["model"], num_classes=config["num_classes"])
    model.load_state_dict(state["model"])
    payload = backbone_state(model, **{"mask_classes": config.get("mask_classes"), "steps": state["step"],
                                       "train_seconds": state.get("train_seconds"), **extra})
    atomic_save(payload, out)
    return payload


def pretrainer_from_state(state: Mapping) -> SemanticPretrainer:
    """The :class:`SemanticPretrainer` a backbone file was saved from, in eval mode."""
    model = SemanticPretrainer(backbone=state["backbone"], norm=state["norm"], fpn_channels=state["fpn_channels"],
                               objects="box_head" in state, num_classes=state.get("num_classes", len(SHAPE_CLASSES)))
    model.backbone.backbone.load_state_dict(state["body"])
    model.backbone.fpn.load_state_dict(state["fpn"])
    model.head.load_state_dict(state["head"])
    if model.objects:
        model.box_head.load_state_dict(state["box_head"])
        model.object_classifier.load_state_dict(state["object_classifier"])
    return model.eval()


@torch.no_grad()
def segmentation_scores(model: SemanticPretrainer, dataset: ShapesSemantic, batch_size: int = 8) -> dict:
    """Pixel accuracy and mean IoU over the classes (background included) of ``model`` on ``dataset``.

    Ignored pixels (:data:`IGNORE`) are not counted. Returns ``{"pixel_accuracy", "mean_iou",
    "iou": {class name: IoU}}``, all in 0..1.
    """
    model.eval()
    classes = model.config.num_classes + 1
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    for start in range(0, len(dataset), batch_size):
        images, targets = zip(*(dataset[i] for i in range(start, min(start + batch_size, len(dataset)))))
        logits = model(list(images))
        for logit, image, target in zip(logits, images, targets):
            predicted = logit[:, : image.shape[1], : image.shape[2]].argmax(0)
            label = target["semantic"]
            keep = label != IGNORE
            confusion += torch.bincount(label[keep] * classes + predicted[keep], minlength=classes**2).view(classes, classes)
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    iou = confusion.diag() / union.clamp(min=1)
    names = ("background", *SHAPE_CLASSES) if classes == len(SHAPE_CLASSES) + 1 else ("background", *map(str, range(1, classes)))
    return {"pixel_accuracy": (confusion.diag().sum() / confusion.sum().clamp(min=1)).item(),
            "mean_iou": iou[union > 0].mean().item(), "iou": {n: round(v.item(), 4) for n, v in zip(names, iou)}}


@torch.no_grad()
def object_accuracy(model: SemanticPretrainer, dataset: ShapesSemantic, batch_size: int = 8) -> float:
    """How often the per-object branch names the right shape from an object's own box, in 0..1."""
    if not model.objects:
        raise ValueError("this pretrainer has no per-object branch (objects=False)")
    model.eval()
    right = total = 0
    for start in range(0, len(dataset), batch_size):
        images, targets = zip(*(dataset[i] for i in range(start, min(start + batch_size, len(dataset)))))
        batch, image_sizes = batch_images(list(images))
        features = model.backbone(batch)
        pooled = model.box_pool(dict(features), [t["boxes"] for t in targets], image_sizes)
        if len(pooled) == 0:
            continue
        predicted = model.object_classifier(model.box_head(pooled)).argmax(1) + 1
        truth = torch.cat([t["labels"] for t in targets])
        right, total = right + int((predicted == truth).sum()), total + len(truth)
    return right / max(total, 1)
