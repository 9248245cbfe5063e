"""ONNX export: a detector, post-processing included, as one file that onnxruntime runs.

``export_onnx(model, "model.onnx", image_size=(256, 256))`` writes a graph that takes one
float image ``[3, H, W]`` in 0..1 of the fixed size it was exported for and returns what
the model's eval mode returns for it: ``boxes`` float [D, 4] (XYXY pixels), ``labels``
int64 [D] (1..K), ``scores`` float [D], best first, and for Mask R-CNN and Mask^X R-CNN
``masks`` float [D, 1, H, W] (probabilities, pasted into the image). Normalising,
padding, anchor decoding, NMS, RoIAlign and mask pasting are all in the graph.

Exporter: torch's TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (it needs the
``onnx`` package: ``pip install -e '.[export]'``), opset :data:`OPSET`. torchvision
registers ONNX translations for its ``nms`` (ONNX ``NonMaxSuppression``) and
``roi_align`` (ONNX ``RoiAlign``, whose ``output_half_pixel`` mode, opset 16, is
torchvision's and the book's ``aligned=False``). The dynamo-based exporter
(``dynamo=True``, through ``torch.export``) stops at the first Python decision on a size
that depends on the data: :meth:`fpnbook.boxes.BoxCoder.decode`'s check that deltas and
boxes pair up, or torchvision's ``batched_nms`` choosing its algorithm by the number of
boxes; making it work would mean rewriting those checks across the library.

What the tracer cannot follow, the eval path does in Python on the values of tensors:
:class:`fpnbook.poolers.MultiScaleRoIAlign` skips an empty list of boxes, its RoIAlign
(:func:`fpnbook.ops.roi_align`) sizes its sampling bands by the largest box, RetinaNet
skips top-k when few scores pass the threshold, and the per-image loops split by counts.
A traced graph would freeze each of those decisions at the example's values. So the
modules here run the model's own parts (backbone, FPN, heads, anchors, box coder, RPN
proposal selection, mask pasting) and redo only those steps in an export-friendly way
that gives the same numbers for one image:

- pooling (:func:`pool_rois`): ``torchvision.ops.roi_align`` (which
  :func:`fpnbook.ops.roi_align` equals), level by level, then the rows put back in order;
- RetinaNet: always top-k (``topk_candidates`` per level), then the score threshold:
  the same candidates as the eval path unless scores tie at the k-th;
- class-wise NMS: one ``nms`` on boxes shifted by ``label * (max(H, W) + 1)``, a fixed
  offset (the boxes are clipped to the image), so no reduction runs over an empty tensor.

Nothing here changes what a model returns in PyTorch. ``tests/test_export.py`` checks
that onnxruntime's detections match the model's.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms
from torchvision.ops import roi_align as tv_roi_align

from .boxes import clip_boxes_to_image, remove_small_boxes
from .files import _atomic_write
from .images import IMAGENET_MEAN, IMAGENET_STD
from .poolers import MultiScaleRoIAlign, _infer_scale, assign_levels
from .rcnn import FasterRCNN
from .retinanet import RetinaNet
from .roi_heads import MIN_DETECTION_SIZE, paste_masks_in_image
from .rpn import flatten_predictions

# RoiAlign's coordinate_transformation_mode (aligned=False) needs opset 16.
OPSET = 17
# The kinds of fpnbook.models.ModelConfig that export (all four).
EXPORT_KINDS = ("retinanet", "faster_rcnn", "mask_rcnn", "mask_x_rcnn")
MIN_SIDE, MAX_SIDE = 32, 4096
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")


def check_image_size(image_size: Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """``(H, W)`` as two ints in ``MIN_SIDE..MAX_SIDE``; a ValueError naming ``name`` otherwise."""
    if isinstance(image_size, (str, bytes)) or not isinstance(image_size, Sequence) or len(image_size) != 2 \
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in image_size):
        raise ValueError(f"{name} must be two ints (height, width), got {image_size!r}")
    height, width = image_size
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise ValueError(f"{name} must be two sides in {MIN_SIDE}..{MAX_SIDE} pixels, got {height} x {width}")
    return int(height), int(width)


def export_kind(model: nn.Module) -> str:
    """``"retinanet"``, ``"faster_rcnn"`` or ``"mask_rcnn"`` (Mask^X R-CNN too): how :func:`export_onnx` exports ``model``.

    A TypeError for any other module (e.g. :class:`fpnbook.rcnn.RPNModel`).
    """
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FasterRCNN):
        pool = model.roi_heads.box_roi_pool
        pools = [pool] + ([model.roi_heads.mask_roi_pool] if model.roi_heads.has_mask() else [])
        if not all(isinstance(p, MultiScaleRoIAlign) and p.pool == "align" for p in pools):
            raise TypeError("only RoI heads that pool with fpnbook.poolers.MultiScaleRoIAlign(pool='align') export to ONNX")
        return "mask_rcnn" if model.roi_heads.has_mask() else "faster_rcnn"
    raise TypeError(f"cannot export a {type(model).__name__} to ONNX: export_onnx takes a RetinaNet, FasterRCNN, "
                    "MaskRCNN or MaskXRCNN (fpnbook.models.build)")


def batched_nms_fixed(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, offset: float) -> Tensor:
    """``torchvision.ops.batched_nms`` with a given coordinate offset instead of ``boxes.max() + 1``.

    ``offset`` must exceed every coordinate (boxes clipped to an image of ``(H, W)``:
    ``max(H, W) + 1``), so boxes of different ``idxs`` never overlap. Indices of the kept
    boxes, by decreasing score.
    """
    shifted = boxes + (idxs.to(boxes.dtype) * offset)[:, None]
    return nms(shifted, scores, iou_threshold)


def pool_rois(pool: MultiScaleRoIAlign, features: dict[str, Tensor], boxes: Tensor,
              image_size: tuple[int, int]) -> Tensor:
    """``pool(features, [boxes], [image_size])`` for one image, in ops the tracer follows. Tensor[N, C, h, w].

    The same levels (:func:`fpnbook.poolers.assign_levels`) and the same RoIAlign as
    :class:`~fpnbook.poolers.MultiScaleRoIAlign`; each level pools the boxes assigned to it
    (``torchvision.ops.roi_align``, which :func:`fpnbook.ops.roi_align` equals).
    """
    maps = [v for k, v in features.items() if k in pool.featmap_names]
    scales = [_infer_scale(f, image_size) for f in maps]
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    height, width = pool.output_size

    def align(feature: Tensor, level_rois: Tensor, scale: float) -> Tensor:
        return tv_roi_align(feature, level_rois, (height, width), scale, pool.sampling_ratio, pool.aligned)

    if len(maps) == 1:
        return align(maps[0], rois, scales[0])
    k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    levels = assign_levels(boxes, k_min, k_max, pool.canonical_scale, pool.canonical_level)
    # Each level pools its own boxes; the rows are then put back in the boxes' order. (Not
    # writing into a zero tensor of N rows: ONNX could not infer that tensor's shape, and an
    # AdaptiveAvgPool2d after it, as in Mask^X R-CNN's MLP branch, exports only for a known size.)
    order, pooled = [], []
    for level, (feature, scale) in enumerate(zip(maps, scales)):
        here = torch.where(levels == level)[0]
        order.append(here)
        pooled.append(align(feature, rois[here], scale))
    order = torch.cat(order)
    inverse = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0]))
    return torch.cat(pooled)[inverse]


class ExportableDetector(nn.Module):
    """One image ``[3, H, W]`` of a fixed size -> ``(boxes, labels, scores[, masks])``, as ``model`` predicts it.

    Wraps (does not copy) an fpnbook detector in eval mode; see the module docstring for
    what it does differently from ``model``'s own forward, and why. ``image_size`` is
    ``(H, W)``; the image is normalised and padded as :func:`fpnbook.images.batch_images`
    does, to sides divisible by 32.
    """

    def __init__(self, model: nn.Module, image_size: Sequence[int]) -> None:
        super().__init__()
        self.kind = export_kind(model)
        self.model = model
        self.image_size = check_image_size(image_size)
        self.padded = tuple(math.ceil(s / 32) * 32 for s in self.image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)
        # Boxes are clipped to the image, so this offset keeps the classes apart in NMS.
        self.nms_offset = float(max(self.image_size) + 1)

    def batch(self, image: Tensor) -> Tensor:
        """Tensor[3, H, W] in 0..1 -> normalised Tensor[1, 3, H', W'], zero-padded at the bottom and right."""
        x = (image - self.mean) / self.std
        height, width = self.image_size
        return F.pad(x, (0, self.padded[1] - width, 0, self.padded[0] - height))[None]

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        batch = self.batch(image)
        features = self.model.backbone(batch)
        if self.kind == "retinanet":
            return self.retinanet(batch, features)
        return self.two_stage(batch, features)

    def retinanet(self, batch: Tensor, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        maps = list(features.values())
        head = model.head(maps)
        # Traced shapes are tensors; the padded size is a constant here, so the anchors are too.
        anchors = model.anchor_generator.anchors_per_level(self.padded, maps)
        sizes = [len(a) for a in anchors]
        boxes, scores, labels = [], [], []
        for logits, deltas, level_anchors in zip(head["cls_logits"][0].split(sizes), head["bbox_regression"][0].split(sizes),
                                                 anchors):
            level_scores = torch.sigmoid(logits).flatten()  # anchor * K + class
            top, idx = level_scores.topk(min(model.topk_candidates, level_scores.shape[0]))
            keep = torch.where(top > model.score_thresh)[0]
            top, idx = top[keep], idx[keep]
            anchor_idx = torch.div(idx, model.num_classes, rounding_mode="floor")
            boxes.append(model.box_coder.decode(deltas[anchor_idx], level_anchors[anchor_idx]))
            scores.append(top)
            labels.append(idx % model.num_classes + 1)
        boxes = clip_boxes_to_image(torch.cat(boxes), self.image_size)
        scores, labels = torch.cat(scores), torch.cat(labels)
        keep = batched_nms_fixed(boxes, scores, labels, model.nms_thresh, self.nms_offset)[: model.detections_per_img]
        return boxes[keep], labels[keep], scores[keep]

    def two_stage(self, batch: Tensor, features: dict[str, Tensor]) -> tuple[Tensor, ...]:
        rpn, heads = self.model.rpn, self.model.roi_heads
        # RegionProposalNetwork.predict, less its checks, which read traced shapes as tensors.
        maps = list(features.values())
        per_level = rpn.anchor_generator.anchors_per_level(self.padded, maps)
        objectness, deltas = flatten_predictions(*rpn.head(maps))
        proposals = rpn.select_proposals(torch.cat(per_level), objectness, deltas, [self.image_size],
                                         [len(a) for a in per_level])[0]["boxes"]
        box_features = heads.box_head(pool_rois(heads.box_roi_pool, features, proposals, self.image_size))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = self.detections(class_logits, box_regression, proposals)
        if not heads.has_mask():
            return boxes, labels, scores
        mask_features = heads.mask_head(pool_rois(heads.mask_roi_pool, features, boxes, self.image_size))
        logits = heads.mask_predictor(mask_features)
        channels = torch.zeros_like(labels) if heads.class_agnostic_mask else labels
        probs = logits[torch.arange(labels.shape[0]), channels][:, None].sigmoid()
        return boxes, labels, scores, paste_masks_in_image(probs, boxes, self.image_size)

    def detections(self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`fpnbook.roi_heads.RoIHeads.postprocess_detections` for one image: ``(boxes, scores, labels)``."""
        heads = self.model.roi_heads
        num_logits = class_logits.shape[1]
        boxes = heads.box_coder.decode(box_regression, proposals).reshape(-1, num_logits, 4)
        boxes = clip_boxes_to_image(boxes, self.image_size)
        scores = F.softmax(class_logits, dim=-1)
        labels = torch.arange(num_logits).expand_as(scores)
        # Every (RoI, class) pair is a candidate; the background column is dropped.
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, MIN_DETECTION_SIZE)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms_fixed(boxes, scores, labels, heads.nms_thresh, self.nms_offset)[: heads.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int] = (256, 256), *,
                overwrite: bool = False, opset: int = OPSET, example: Tensor | None = None) -> Path:
    """Write ``model`` (an fpnbook RetinaNet, Faster / Mask / Mask^X R-CNN) to ``path`` as ONNX; return the path.

    The graph's input ``image`` is float32 [3, H, W] in 0..1 with ``(H, W) = image_size``;
    its outputs ``boxes`` [D, 4], ``labels`` int64 [D], ``scores`` [D] and (with a mask
    branch) ``masks`` [D, 1, H, W] are what ``model.eval()([image])[0]`` holds. The model is
    exported on the CPU in float32 and left unchanged. The file is written atomically
    (:mod:`fpnbook.files`); an existing one is replaced only with ``overwrite=True``
    (FileExistsError otherwise), before any work. ``example`` is the image the tracer runs
    (default: seeded noise); the graph does not depend on it, nor on how many detections
    it gives (``tests/test_export.py`` traces a black image, which gives none).
    """
    image_size = check_image_size(image_size)
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 16:
        raise ValueError(f"opset must be an int >= 16 (ONNX RoiAlign's aligned=False mode), got {opset!r}")
    kind = export_kind(model)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a .onnx file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    if example is None:
        example = torch.rand(3, *image_size, generator=torch.Generator().manual_seed(0))
    elif not isinstance(example, Tensor) or example.shape != (3, *image_size) or not example.is_floating_point():
        got = f"{example.dtype} {list(example.shape)}" if isinstance(example, Tensor) else type(example).__name__
        raise ValueError(f"example must be a float Tensor[3, {image_size[0]}, {image_size[1]}] (image_size), got {got}")
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("export_onnx needs the onnx package: pip install -e '.[export]' (onnx, onnxruntime)")
    device, training = next(model.parameters()).device, model.training
    wrapper = ExportableDetector(model.cpu().eval(), image_size)
    outputs = list(OUTPUT_NAMES[: 4 if kind == "mask_rcnn" else 3])
    dynamic = {name: {0: "detections"} for name in outputs}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns at every Python-level check it sees (shapes, values): expected here.
            warnings.simplefilter("ignore")
            _atomic_write(path, lambda tmp: torch.onnx.export(
                wrapper, (example.detach().float().cpu(),), str(tmp), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=outputs, dynamic_axes=dynamic))
    finally:
        model.to(device).train(training)
    return path
