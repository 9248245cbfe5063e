"""Solutions to the chapters' exercises (:mod:`fpnbook.exercises`), in one place.

Look only after trying. Each implement-solution is written from the chapter's formula,
not by calling the library function it is checked against; ``tests/test_exercises.py``
checks that every checker accepts these and rejects a plausible wrong answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- derive: the numbers

NUMBERS = {
    "ch0.iou": 25 / 175,  # intersection 5 x 5; union 100 + 100 - 25
    "ch2.level": 3,  # floor(4 + log2(100 / 112)) = floor(3.84)
    "ch2.anchors_per_image": 3 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2),  # 16,368
    "ch3.prior_bias": -math.log((1 - 0.01) / 0.01),  # -4.595
    "ch3.gamma": 1.0,  # negatives' share: 81% at 0, 32% at 0.5, 4.6% at 1
    "ch4.roipool_region": (6 - 0 + 1) * 16,  # round(100/16) = 6, round(5/16) = 0: columns 0..6 -> 112 px
    "ch5.box_outputs": (80 + 1) + 4 * (80 + 1),  # 81 class scores, background included, and 4 deltas for each: 405
    "ch6.theta_size": 5 * 256 * 64 + 64,  # 'cls+box' rows are 5 x 256 wide; one bias per mask channel
    "ch7.rois_sampled": 4 * 128 // 4,  # 25% of 128 per image, 4 images
}


# ---------------------------------------------------------------- implement: the functions


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def assign_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float, canonical_level: int) -> Tensor:
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    levels = torch.floor(canonical_level + torch.log2(side / canonical_scale) + 1e-6)
    return levels.clamp(k_min, k_max).long() - k_min


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    # log p_t straight from the logits: -log p_t is the binary cross entropy, stable for any x.
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p = torch.sigmoid(inputs)
    one_minus_pt = p * (1 - targets) + (1 - p) * targets
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * one_minus_pt**gamma * ce


def bilinear(values: Tensor, y: float, x: float) -> Tensor:
    height, width = values.shape[-2:]
    if y < -1 or y > height or x < -1 or x > width:
        return values.new_zeros(values.shape[0])
    y, x = min(max(y, 0.0), height - 1), min(max(x, 0.0), width - 1)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    ly, lx = y - y0, x - x0
    top = (1 - lx) * values[:, y0, x0] + lx * values[:, y0, x1]
    bottom = (1 - lx) * values[:, y1, x0] + lx * values[:, y1, x1]
    return (1 - ly) * top + ly * bottom


def roi_align(input: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> Tensor:
    _, channels, _, _ = input.shape
    out = input.new_zeros(len(rois), channels, output_size, output_size)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (v * spatial_scale for v in (x1, y1, x2, y2))
        bin_w, bin_h = max(x2 - x1, 1.0) / output_size, max(y2 - y1, 1.0) / output_size
        for i in range(output_size):
            for j in range(output_size):
                samples = [bilinear(input[int(b)], y1 + (i + (sy + 0.5) / sampling_ratio) * bin_h,
                                    x1 + (j + (sx + 0.5) / sampling_ratio) * bin_w)
                           for sy in range(sampling_ratio) for sx in range(sampling_ratio)]
                out[k, :, i, j] = torch.stack(samples).mean(0)
    return out


def mask_target(gt_mask: Tensor, gt_box: Tensor, roi: Tensor, size: int) -> Tensor:
    from torchvision.ops import roi_align as tv_roi_align

    # The RoI cuts the mask, not the object's box (gt_box is not needed): the target must lie in the
    # frame the head predicts in. One-channel image, spatial scale 1, adaptive sampling, no half-pixel shift.
    rois = torch.cat([roi.new_zeros(1), roi])[None].to(gt_mask.dtype)
    return tv_roi_align(gt_mask[None, None], rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)[0, 0]


def linear_transfer(omega: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return omega @ weight.T + bias


def has_mask(labels: Tensor, mask_classes) -> Tensor:
    return torch.tensor([int(label) in set(mask_classes) for label in labels], dtype=torch.bool)


def to_coco(output: dict, image_id: int, label_to_cat_id: dict) -> list[dict]:
    results = []
    for (x1, y1, x2, y2), label, score in zip(output["boxes"].tolist(), output["labels"].tolist(),
                                               output["scores"].tolist()):
        results.append({"image_id": image_id, "category_id": label_to_cat_id[label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


FUNCTIONS = {
    "ch0.box_area": box_area, "ch0.xywh_to_xyxy": xywh_to_xyxy, "ch2.assign_levels": assign_levels,
    "ch3.focal_loss": sigmoid_focal_loss, "ch4.bilinear": bilinear, "ch4.roi_align": roi_align,
    "ch5.mask_target": mask_target,
    "ch6.linear_transfer": linear_transfer, "ch6.has_mask": has_mask, "ch7.to_coco": to_coco,
}


# ---------------------------------------------------------------- chapter 1: the pipeline


def _centres_and_sizes(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return b[:, 0] + w / 2, b[:, 1] + h / 2, w, h


def encode(gt: Tensor, reference: Tensor, weights) -> Tensor:
    wx, wy, ww, wh = weights
    (gx, gy, gw, gh), (rx, ry, rw, rh) = _centres_and_sizes(gt), _centres_and_sizes(reference)
    return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)], 1)


def decode(deltas: Tensor, reference: Tensor, weights) -> Tensor:
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = (v[:, None] for v in _centres_and_sizes(reference))  # broadcast over the K boxes
    clip = math.log(1000 / 16)  # no box grows more than 62.5-fold; exp never overflows
    cx, cy = rx + rw * deltas[:, 0::4] / wx, ry + rh * deltas[:, 1::4] / wy
    w = rw * torch.exp((deltas[:, 2::4] / ww).clamp(max=clip))
    h = rh * torch.exp((deltas[:, 3::4] / wh).clamp(max=clip))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2).flatten(1)


def match(iou: Tensor, high: float, low: float, allow_low_quality_matches: bool) -> Tensor:
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.int64)
    best, best_object = iou.max(dim=0)
    matches = best_object.clone()
    matches[best < low] = -1
    matches[(best >= low) & (best < high)] = -2  # the ignore band
    if allow_low_quality_matches:
        is_best = (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
        matches[is_best] = best_object[is_best]
    return matches


def nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in scores.argsort(descending=True, stable=True).tolist():
        rivals = torch.tensor([j for j in kept if labels[j] == labels[i]], dtype=torch.int64)
        width = (torch.minimum(boxes[rivals, 2], boxes[i, 2]) - torch.maximum(boxes[rivals, 0], boxes[i, 0])).clamp(min=0)
        height = (torch.minimum(boxes[rivals, 3], boxes[i, 3]) - torch.maximum(boxes[rivals, 1], boxes[i, 1])).clamp(min=0)
        inter = width * height
        if not (inter / (area[rivals] + area[i] - inter) > iou_threshold).any():
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)


NUMBERS["ch1.delta_w"] = 5 * math.log(50 / 40)  # ww log(gw / rw) = 5 x 0.223 = 1.116
FUNCTIONS.update({"ch1.encode": encode, "ch1.decode": decode, "ch1.match": match, "ch1.nms": nms})


def solution(name: str):
    """The solution to exercise ``name``: a number or a function."""
    return NUMBERS[name] if name in NUMBERS else FUNCTIONS[name]
