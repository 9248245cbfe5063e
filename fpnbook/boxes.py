"""Boxes: the one place that fixes the coordinate convention.

Every box in fpnbook is ``(x1, y1, x2, y2)`` in input-image pixels, as a float
Tensor[N, 4], with ``x1 <= x2`` and ``y1 <= y2``. COCO files store
``(x, y, w, h)``; convert at the file boundary with :func:`xywh_to_xyxy`.

The box coder turns a ground-truth box into regression targets relative to a
reference box (an anchor or a proposal) and back, as in Faster R-CNN:

    dx = wx * (gx - px) / pw        dw = ww * log(gw / pw)
    dy = wy * (gy - py) / ph        dh = wh * log(gh / ph)

where ``(px, py, pw, ph)`` is the reference's centre and size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(dw) is clamped so that one wild prediction cannot make a box 1000x its anchor.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def check_box_shape(boxes: Tensor, name: str = "boxes") -> Tensor:
    """Raise a TypeError/ValueError naming ``name`` unless ``boxes`` is a Tensor[N, 4].

    The cheap check (no host sync) that the box functions make on every call;
    :func:`check_boxes` also checks the values, once, where boxes enter.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a Tensor[N, 4], got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {list(boxes.shape)}")
    return boxes


def check_boxes(boxes: Tensor, name: str = "boxes", allow_degenerate: bool = True) -> Tensor:
    """Raise a ValueError naming ``name`` unless ``boxes`` is a finite float Tensor[N, 4] XYXY.

    ``allow_degenerate`` admits zero-width or zero-height boxes; ``x2 < x1`` is always an error.
    Returns ``boxes`` so the call can sit inline.
    """
    check_box_shape(boxes, name)
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {boxes.dtype}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if (widths < 0).any() or (heights < 0).any():
        raise ValueError(f"{name} must satisfy x1 <= x2 and y1 <= y2 (XYXY pixels); found an inverted box")
    if not allow_degenerate and ((widths <= 0) | (heights <= 0)).any():
        raise ValueError(f"{name} contains a box with zero width or height")
    return boxes


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``(x, y, w, h)`` -> ``(x1, y1, x2, y2)``. Tensor[N, 4] -> Tensor[N, 4]."""
    check_box_shape(boxes)
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> COCO ``(x, y, w, h)``. Tensor[N, 4] -> Tensor[N, 4]."""
    check_box_shape(boxes)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``. Tensor[N, 4] -> Tensor[N, 4]."""
    check_box_shape(boxes)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``. Tensor[N, 4] -> Tensor[N, 4]."""
    check_box_shape(boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of XYXY boxes in square pixels. Tensor[N, 4] -> Tensor[N]."""
    check_box_shape(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of XYXY boxes. Tensor[N, 4], Tensor[M, 4] -> Tensor[N, M].

    Equals ``torchvision.ops.box_iou``; two zero-area boxes give 0/0 = NaN there
    and here alike, so callers keep degenerate boxes out.
    """
    area1, area2 = box_area(check_box_shape(boxes1, "boxes1")), box_area(check_box_shape(boxes2, "boxes2"))
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes_to_image(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp XYXY boxes into an image of ``(height, width)`` pixels."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both at least ``min_size`` pixels."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


class BoxCoder:
    """Encode ground-truth boxes as deltas against reference boxes, and decode them back.

    ``weights = (wx, wy, ww, wh)`` scale the deltas so that the regression
    targets have roughly unit variance: Faster R-CNN's RoI head uses
    ``(10, 10, 5, 5)``, the RPN and RetinaNet use ``(1, 1, 1, 1)``.
    Decoding clamps ``dw`` and ``dh`` at ``bbox_xform_clip = log(1000/16)``.
    Matches ``torchvision.models.detection._utils.BoxCoder``.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = BBOX_XFORM_CLIP,
    ) -> None:
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be four positive numbers (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Deltas that take each reference box to its ground truth. Tensor[N, 4] x2 -> Tensor[N, 4]."""
        check_box_shape(gt_boxes, "gt_boxes")
        check_box_shape(reference_boxes, "reference_boxes")
        if len(gt_boxes) != len(reference_boxes):
            raise ValueError(f"gt_boxes and reference_boxes must pair up, got {len(gt_boxes)} and {len(reference_boxes)} boxes")
        wx, wy, ww, wh = self.weights
        ref = xyxy_to_cxcywh(reference_boxes)
        gt = xyxy_to_cxcywh(gt_boxes)
        return torch.stack(
            [
                wx * (gt[:, 0] - ref[:, 0]) / ref[:, 2],
                wy * (gt[:, 1] - ref[:, 1]) / ref[:, 3],
                ww * torch.log(gt[:, 2] / ref[:, 2]),
                wh * torch.log(gt[:, 3] / ref[:, 3]),
            ],
            dim=1,
        )

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Boxes from deltas. ``deltas`` Tensor[N, 4*K] (K boxes per reference) -> same shape, XYXY."""
        if not isinstance(deltas, Tensor) or deltas.ndim != 2 or deltas.shape[1] == 0 or deltas.shape[1] % 4:
            shape = list(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__
            raise ValueError(f"deltas must be a Tensor[N, 4*K] (K boxes per reference), got {shape}")
        check_box_shape(reference_boxes, "reference_boxes")
        if len(deltas) != len(reference_boxes):
            raise ValueError(f"deltas and reference_boxes must pair up, got {len(deltas)} rows and {len(reference_boxes)} boxes")
        wx, wy, ww, wh = self.weights
        ref = xyxy_to_cxcywh(reference_boxes.to(deltas.dtype))
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * ref[:, 2:3] + ref[:, 0:1]
        cy = dy * ref[:, 3:4] + ref[:, 1:2]
        w = torch.exp(dw) * ref[:, 2:3]
        h = torch.exp(dh) * ref[:, 3:4]
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2)
        return boxes.flatten(1)
