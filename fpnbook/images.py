"""What a detector is given: a list of images (and, to train, their targets), checked once.

From a list of images of different sizes to one padded, normalised batch.

Detectors see images of different sizes. They are normalised with the ImageNet
mean and std (the convention every backbone here starts from), then padded at the
bottom and right to a common size divisible by the coarsest stride, so every level
of the pyramid lines up with the image: pixel ``(y, x)`` of level ``k`` covers image
pixels ``[2**k * y, 2**k * (y + 1))``. Padding never moves a box, so boxes stay in
input-image pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .boxes import check_boxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images: Sequence[Tensor], name: str = "images") -> None:
    """Raise unless ``images`` is a non-empty list of finite float Tensor[3, H, W] with H, W > 0."""
    if isinstance(images, Tensor) or not isinstance(images, Sequence) or len(images) == 0:
        raise TypeError(f"{name} must be a non-empty list of Tensor[3, H, W], got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
            shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"{name}[{i}] must be a Tensor[3, H, W], got {shape}")
        if not image.is_floating_point():
            raise TypeError(f"{name}[{i}] must be float in 0..1, got {image.dtype}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"{name}[{i}] is empty: shape {list(image.shape)}")
        # A NaN pixel would spread through every convolution into no detections at all, silently.
        if not torch.isfinite(image).all():
            raise ValueError(f"{name}[{i}] contains NaN or infinite pixels")


class CheckedTargets(tuple):
    """Targets that :func:`check_targets` has passed.

    A model checks its targets once, where they enter (its ``forward``), and hands this
    tuple down; the RPN and the RoI heads check what they are given only when it is not
    one, that is when a reader calls them directly. So a training step checks once.
    """


def check_targets(
    targets: Sequence[Mapping[str, Tensor]] | None,
    num_images: int,
    num_classes: int | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    masks: bool = False,
    labels: bool = True,
) -> CheckedTargets:
    """Raise a ValueError/TypeError naming the bad entry unless ``targets`` can train a detector.

    One dict per image (``num_images``) with:

    - ``boxes``: float Tensor[G, 4], XYXY pixels, finite, with positive width and height
      (a zero-size box would overlap every anchor by 0, match them all as its best,
      and make the box-regression targets infinite);
    - ``labels`` (unless ``labels=False``, for an RPN alone): int64 Tensor[G] in ``1..num_classes``
      (``num_classes`` = K object classes; 0 is the background and never a target);
    - ``masks`` (with ``masks=True``): Tensor[G, H, W], the image's size in ``image_sizes``;
    - optionally ``has_mask``: bool Tensor[G] (partial mask supervision).

    Returns the targets as a :class:`CheckedTargets`, which inner modules trust.
    Every model in fpnbook checks its targets with this one function, in its ``forward``.
    """
    if isinstance(targets, CheckedTargets):
        return targets
    if targets is None:
        raise ValueError("targets must be given in training mode (a list of dicts with 'boxes', 'labels'"
                         + (", 'masks')" if masks else ")") + "; call model.eval() to predict")
    if isinstance(targets, (Mapping, str)) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a list of dicts, one per image, got {type(targets).__name__}")
    if len(targets) != num_images:
        raise ValueError(f"targets must have one dict per image: {len(targets)} for {num_images} images")
    wanted = ["boxes"] + ["labels"] * labels + ["masks"] * masks
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target or (labels and "labels" not in target):
            raise ValueError(f"targets[{i}] must be a dict with {', '.join(repr(k) for k in wanted)}")
        boxes = check_boxes(target["boxes"], f"targets[{i}]['boxes']", allow_degenerate=False)
        count = len(boxes)
        if labels:
            values = target["labels"]
            if not isinstance(values, Tensor) or values.dtype != torch.int64 or values.shape != (count,):
                got = f"{values.dtype} {list(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
                raise ValueError(f"targets[{i}]['labels'] must be an int64 (integer) Tensor[{count}], one per box, got {got}")
            top = "K" if num_classes is None else num_classes
            if count and (values.min() < 1 or (num_classes is not None and values.max() > num_classes)):
                raise ValueError(f"targets[{i}]['labels'] must be in 1..{top} (num_classes={top} object classes; "
                                 f"0 is the background), got {values.tolist()}")
        if masks:
            gt_masks = target.get("masks")
            size = image_sizes[i] if image_sizes is not None else None
            expected = [count, int(size[0]), int(size[1])] if size is not None else None
            ok = isinstance(gt_masks, Tensor) and gt_masks.ndim == 3 and len(gt_masks) == count
            if not ok or (expected is not None and list(gt_masks.shape) != expected):
                got = list(gt_masks.shape) if isinstance(gt_masks, Tensor) else type(gt_masks).__name__
                want = f"Tensor{expected}" if expected else f"Tensor[{count}, H, W]"
                raise ValueError(f"targets[{i}]['masks'] must be a {want} (one mask per box, the image's size), got {got}")
        has_mask = target.get("has_mask")
        if has_mask is not None and (
            not isinstance(has_mask, Tensor) or has_mask.dtype != torch.bool or has_mask.shape != (count,)
        ):
            raise ValueError(f"targets[{i}]['has_mask'] must be a bool Tensor[{count}] (one per box)")
    return CheckedTargets(targets)


def batch_images(
    images: Sequence[Tensor],
    size_divisible: int = 32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Normalise and pad a list of Tensor[3, H_i, W_i] into Tensor[B, 3, H, W].

    ``H`` and ``W`` are the largest sizes rounded up to a multiple of ``size_divisible``.
    Returns the batch and each image's original ``(H_i, W_i)``.
    """
    check_images(images)
    if isinstance(size_divisible, bool) or not isinstance(size_divisible, int) or size_divisible < 1:
        raise ValueError(f"size_divisible must be a positive int, got {size_divisible!r}")
    image_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    height = math.ceil(max(h for h, _ in image_sizes) / size_divisible) * size_divisible
    width = math.ceil(max(w for _, w in image_sizes) / size_divisible) * size_divisible
    first = images[0]
    mean_t = torch.as_tensor(mean, dtype=first.dtype, device=first.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=first.dtype, device=first.device)[:, None, None]
    batch = first.new_zeros(len(images), 3, height, width)
    for image, padded in zip(images, batch):
        padded[:, : image.shape[1], : image.shape[2]].copy_((image - mean_t) / std_t)
    return batch, image_sizes
