"""Pooling RoIs from a feature pyramid: which level each box reads, then RoIAlign there.

FPN (Lin et al. 2017, eq. 1) sends a box of ``w x h`` input-image pixels to level

    k = floor(k0 + log2(sqrt(w * h) / 224)),   clamped to [k_min, k_max],

where 224 is the ImageNet pre-training size and ``k0 = 4``: a 224x224 box reads
P4 (stride 16), a box half that size reads P3, twice that size P5. Every box thus
covers about the same number of feature pixels, whatever its size in the image.
:class:`MultiScaleRoIAlign` does this and pools each box from its level; it
mirrors ``torchvision.ops.MultiScaleRoIAlign``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .boxes import box_area, check_box_shape, check_boxes
from .ops import output_size_pair, roi_align, roi_pool


def assign_levels(
    boxes: Tensor | Sequence[Tensor],
    k_min: int,
    k_max: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box, counted from ``k_min``: ``floor(k0 + log2(sqrt(w*h) / s0) + eps)``.

    Args:
        boxes: Tensor[N, 4] or a list of Tensor[L, 4] (one per image, concatenated in
            order), ``(x1, y1, x2, y2)`` in input-image pixels.
        k_min, k_max: the pyramid's finest and coarsest levels (P2..P5: 2 and 5).
        canonical_scale: ``s0``, the box side that maps to ``canonical_level`` (224).
        canonical_level: ``k0`` (4).
        eps: nudges boxes whose side is exactly ``s0 * 2**j`` up to level ``k0 + j``
            despite rounding in log2.

    Returns:
        LongTensor[N] in ``0 .. k_max - k_min``, equal to torchvision's ``LevelMapper``.
        A zero-area box goes to ``k_min``.
    """
    if k_min > k_max:
        raise ValueError(f"k_min must not exceed k_max, got k_min={k_min}, k_max={k_max}")
    check_level_rule(canonical_scale, canonical_level)
    if isinstance(boxes, (list, tuple)):
        if not boxes:
            raise ValueError("boxes must hold at least one Tensor[L, 4], got an empty list")
        boxes = torch.cat([check_boxes(b, f"boxes[{i}]") for i, b in enumerate(boxes)])
    check_boxes(boxes)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # half precision would overflow w * h
    side = box_area(boxes).sqrt()
    levels = torch.floor(canonical_level + torch.log2(side / canonical_scale) + eps)
    return levels.clamp(k_min, k_max).long() - k_min


def check_level_rule(canonical_scale: float, canonical_level: int) -> None:
    """Raise a ValueError unless ``s0`` is a finite positive number and ``k0`` an int.

    With ``s0 <= 0`` the log2 is NaN or inf, and every box would go to one level.
    """
    if isinstance(canonical_scale, bool) or not isinstance(canonical_scale, (int, float)) \
            or not math.isfinite(canonical_scale) or canonical_scale <= 0:
        raise ValueError(f"canonical_scale must be a positive number of pixels, got {canonical_scale!r}")
    if isinstance(canonical_level, bool) or not isinstance(canonical_level, int):
        raise ValueError(f"canonical_level must be an int (a pyramid level), got {canonical_level!r}")


def _infer_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    """Feature pixels per image pixel, rounded to a power of 2 (a padded image need not divide evenly)."""
    return 2.0 ** round(math.log2(feature.shape[-2] / image_size[0]))


class MultiScaleRoIAlign(nn.Module):
    """Pool every box from its FPN level. Like ``torchvision.ops.MultiScaleRoIAlign``.

    Args:
        featmap_names: the keys of ``x`` to pool from, finest level first
            (e.g. ``["p2", "p3", "p4", "p5"]``).
        output_size: ``h`` or ``(h, w)``: 7 for the box head, 14 for the mask head.
        sampling_ratio: samples per bin and axis; ``<= 0`` is adaptive (see :func:`~fpnbook.ops.roi_align`).
        canonical_scale, canonical_level: ``s0`` and ``k0`` of :func:`assign_levels`.
        aligned: RoIAlign's half-pixel shift; ``False`` like torchvision.
        pool: ``"align"`` (RoIAlign) or ``"pool"`` (RoIPool, for chapter 3's
            comparison; it has no samples and no half-pixel shift, so it ignores
            ``sampling_ratio`` and ``aligned``).

    ``forward(x, boxes, image_shapes)``: ``x`` maps names to features [N, C, H_k, W_k];
    ``boxes`` is a list of N Tensor[L_i, 4] in input-image pixels; ``image_shapes``
    lists each image's ``(height, width)`` before padding. Returns Tensor[sum L_i, C, h, w],
    boxes in order. Each level's stride is inferred from its size against the
    largest image, rounded to a power of 2. Unlike torchvision, the strides are
    inferred again on every call rather than cached from the first one.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | Sequence[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        pool: str = "align",
    ) -> None:
        super().__init__()
        if isinstance(featmap_names, str) or not featmap_names:
            raise ValueError(f"featmap_names must be a non-empty list of names, got {featmap_names!r}")
        if pool not in ("align", "pool"):
            raise ValueError(f"pool must be 'align' or 'pool', got {pool!r}")
        check_level_rule(canonical_scale, canonical_level)
        self.featmap_names = list(featmap_names)
        self.output_size = output_size_pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.pool = pool

    def _pool_level(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.pool == "pool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise ValueError(f"x lacks feature maps {missing}; it has {list(x)}")
        if not image_shapes:
            raise ValueError("image_shapes must list each image's (height, width), got an empty list")
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(f"boxes must be a list of Tensor[L, 4], one per image, got {type(boxes).__name__}")
        for i, b in enumerate(boxes):
            check_box_shape(b, f"boxes[{i}]")
        for i, shape in enumerate(image_shapes):
            if len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape):
                raise ValueError(f"image_shapes[{i}] must be a (height, width) of positive ints, got {tuple(shape)}")
        # Keep x's order (finest level first), as torchvision does.
        features = [v for k, v in x.items() if k in self.featmap_names]
        if len(boxes) > len(features[0]):
            raise ValueError(f"boxes must hold at most one Tensor[L, 4] per image: got {len(boxes)} for a batch of "
                             f"{len(features[0])} feature maps")
        largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_infer_scale(f, largest) for f in features]

        first = features[0]
        if not any(len(b) for b in boxes):
            return first.new_zeros(0, first.shape[1], *self.output_size)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        if len(features) == 1:
            return self._pool_level(first, rois, scales[0])

        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        levels = assign_levels(list(boxes), k_min, k_max, self.canonical_scale, self.canonical_level)
        result = first.new_zeros(len(rois), first.shape[1], *self.output_size)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            here = torch.nonzero(levels == level).squeeze(1)
            result[here] = self._pool_level(feature, rois[here], scale).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool={self.pool!r}"
        )
