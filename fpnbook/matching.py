"""Who is responsible for which object: matching anchors or proposals to ground truth.

Every dense detector in the book labels its candidates the same way: compute the IoU
of each candidate with each ground-truth box, call it foreground above a high
threshold, background below a low one, and ignore the ambiguous band between.
The RPN uses 0.7 / 0.3, RetinaNet 0.5 / 0.4, the RoI heads 0.5 / 0.5.
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1  # background
BETWEEN_THRESHOLDS = -2  # ignored: neither trained as foreground nor as background


class Matcher:
    """Assign each candidate the index of its best ground truth, or a negative code.

    ``match(iou)`` takes ``iou`` Tensor[G, N] (ground truths x candidates) and returns
    LongTensor[N]: the matched ground-truth index where the best IoU >= ``high``,
    :data:`BELOW_LOW_THRESHOLD` where it is < ``low``, :data:`BETWEEN_THRESHOLDS` otherwise.

    With ``allow_low_quality_matches`` each ground truth also keeps the candidates
    that overlap it best, even below ``high``, so that no object goes without a
    candidate (a small object may have no anchor with IoU 0.7). Same as torchvision's
    ``models.detection._utils.Matcher``.
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if not 0 <= low <= high <= 1:
            raise ValueError(f"thresholds must satisfy 0 <= low <= high <= 1, got low={low}, high={high}")
        self.high, self.low = high, low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        if iou.ndim != 2:
            raise ValueError(f"iou must be Tensor[G, N], got shape {list(iou.shape)}")
        if iou.shape[0] == 0:
            # No objects: every candidate is background.
            return torch.full((iou.shape[1],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        best_iou, matches = iou.max(dim=0)
        original = matches.clone() if self.allow_low_quality_matches else None
        matches[best_iou < self.low] = BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low) & (best_iou < self.high)] = BETWEEN_THRESHOLDS
        if original is not None:
            # Every candidate tied for a ground truth's best IoU gets that ground truth back.
            best_per_gt = iou.max(dim=1, keepdim=True).values
            keep = (iou == best_per_gt).nonzero()[:, 1]
            matches[keep] = original[keep]
        return matches


class BalancedSampler:
    """Sample a fixed number of candidates per image with at most a share of positives.

    ``__call__(labels)`` takes per-image LongTensors (1 foreground, 0 background,
    -1 ignore) and returns two boolean masks per image: sampled positives and
    sampled negatives. Positives are capped at ``batch_size * positive_fraction``;
    negatives fill the rest. The RPN uses 256 and 0.5, the RoI heads 512 and 0.25.
    Draws from the global torch RNG, so seeding torch makes it reproducible.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0 or not 0 < positive_fraction <= 1:
            raise ValueError(
                f"need batch_size_per_image > 0 and 0 < positive_fraction <= 1, "
                f"got {batch_size_per_image}, {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        sampled_pos, sampled_neg = [], []
        for image_labels in labels:
            positive = torch.where(image_labels >= 1)[0]
            negative = torch.where(image_labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos_idx = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg_idx = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(image_labels, dtype=torch.bool)
            neg_mask = torch.zeros_like(image_labels, dtype=torch.bool)
            pos_mask[pos_idx] = True
            neg_mask[neg_idx] = True
            sampled_pos.append(pos_mask)
            sampled_neg.append(neg_mask)
        return sampled_pos, sampled_neg
