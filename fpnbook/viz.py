"""Pictures: boxes and masks drawn on images, and grids of images for the chapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

# Tableau's ten colours; label k gets PALETTE[k % 10], so a class keeps its colour across figures.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip


def to_uint8(image: Tensor) -> Tensor:
    """uint8 [3, H, W] from a float [3, H, W] image in 0..1 (or a uint8 one, unchanged)."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be a Tensor[3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    image = image.detach().cpu()
    if image.is_floating_point() and not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite pixels")
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def draw_detections(
    image: Tensor,
    target_or_output: Mapping[str, Tensor],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
) -> Tensor:
    """Draw boxes, labels and masks on an image. Returns uint8 Tensor[3, H, W].

    ``image`` is [3, H, W] float in 0..1 or uint8. ``target_or_output`` is a dataset
    target (``boxes`` XYXY pixels, ``labels``, optional ``masks`` uint8 [N, H, W]) or
    a model output (also ``scores``, and ``masks`` [N, 1, H, W] probabilities, cut at 0.5).
    Outputs keep only detections with ``score >= score_threshold``.
    """
    canvas = to_uint8(image)
    missing = [k for k in ("boxes", "labels") if k not in target_or_output]
    if missing:
        raise ValueError(f"target_or_output lacks {missing}; a target or a model output has 'boxes' and 'labels'")
    boxes = target_or_output["boxes"].detach().cpu().float().reshape(-1, 4)
    labels = target_or_output["labels"].detach().cpu().reshape(-1).tolist()
    if len(boxes) != len(labels):
        raise ValueError(f"target_or_output has {len(boxes)} boxes but {len(labels)} labels")
    scores = target_or_output.get("scores")
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if scores is not None:
        scores = scores.detach().cpu().reshape(-1)
        keep = scores >= score_threshold
    colours = [PALETTE[int(label) % len(PALETTE)] for label, k in zip(labels, keep) if k]
    names = [class_names[int(label)] if class_names else str(int(label)) for label, k in zip(labels, keep) if k]
    if scores is not None:
        names = [f"{name} {score:.2f}" for name, score in zip(names, scores[keep].tolist())]
    masks = target_or_output.get("masks")
    if masks is not None and keep.any():
        masks = masks.detach().cpu()[keep]
        masks = masks[:, 0] > 0.5 if masks.ndim == 4 else masks > 0
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colours)
    if keep.any():
        canvas = draw_bounding_boxes(canvas, boxes[keep], labels=names, colors=colours, width=1)
    return canvas


def show_grid(
    images: Sequence[Tensor | np.ndarray],
    ncols: int = 4,
    titles: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A matplotlib Figure showing ``images`` (Tensor[3, H, W] float 0..1 or uint8, or numpy [H, W, 3]) in a grid.

    The Figure is made without pyplot, so nothing is shown twice in a notebook and
    nothing leaks between calls; a notebook displays it when it is the cell's value.
    """
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles has {len(titles)} entries but there are {len(images)} images")
    ncols = min(ncols, max(len(images), 1))
    nrows = max(-(-len(images) // ncols), 1)
    figure = Figure(figsize=figsize or (3 * ncols, 3 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(images):
            continue
        image = images[i]
        if isinstance(image, Tensor):
            image = to_uint8(image).permute(1, 2, 0).numpy()
        ax.imshow(image)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    return figure
