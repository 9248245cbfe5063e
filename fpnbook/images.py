"""From a list of images of different sizes to one padded, normalised batch.

Detectors see images of different sizes. They are normalised with the ImageNet
mean and std (the convention every backbone here starts from), then padded at the
bottom and right to a common size divisible by the coarsest stride, so every level
of the pyramid lines up with the image: pixel ``(y, x)`` of level ``k`` covers image
pixels ``[2**k * y, 2**k * (y + 1))``. Padding never moves a box, so boxes stay in
input-image pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images: Sequence[Tensor], name: str = "images") -> None:
    """Raise unless ``images`` is a non-empty list of float Tensor[3, H, W] with H, W > 0."""
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
