"""Pictures: boxes and masks drawn on images, and grids of images for the chapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
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


def _kept(target_or_output: Mapping[str, Tensor], class_names: Sequence[str] | None, score_threshold: float):
    """What a picture shows of a target or output: boxes [M, 4], colours, label texts, masks bool [M, H, W] or None."""
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
    if masks is not None:
        masks = masks.detach().cpu()[keep]
        masks = masks[:, 0] > 0.5 if masks.ndim == 4 else masks > 0
    return boxes[keep], colours, names, masks


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
    Outputs keep only detections with ``score >= score_threshold``. The labels are
    torchvision's small bitmap font: for a figure a reader must read, use :func:`plot_detections`.
    """
    canvas = to_uint8(image)
    boxes, colours, names, masks = _kept(target_or_output, class_names, score_threshold)
    if masks is not None and len(boxes):
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colours)
    if len(boxes):
        canvas = draw_bounding_boxes(canvas, boxes, labels=names, colors=colours, width=1)
    return canvas


def plot_detections(
    ax,
    image: Tensor,
    target_or_output: Mapping[str, Tensor],
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    title: str | None = None,
    fontsize: float = 9,
) -> int:
    """Draw ``image`` on matplotlib ``ax`` with masks tinted, boxes outlined and labels in readable text.

    Same inputs as :func:`draw_detections` (boxes XYXY in image pixels). Labels are
    matplotlib text of ``fontsize`` points on a white backing, so they stay legible however
    small the objects are. ``title`` is set as given; for a model output, say the
    ``score_threshold`` in it. Returns the number of boxes drawn.
    """
    canvas = to_uint8(image)
    boxes, colours, names, masks = _kept(target_or_output, class_names, score_threshold)
    if masks is not None and len(boxes):
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.5, colors=colours)
    height, width = canvas.shape[1:]
    ax.imshow(canvas.permute(1, 2, 0).numpy(), extent=(0, width, height, 0))
    for (x1, y1, x2, y2), colour, name in zip(boxes.tolist(), colours, names):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        above = y1 > 0.06 * height  # room above the box for the label, else inside it
        right = x1 > width / 2  # on the right half, hang the label leftwards from the box's right edge
        ax.text(x2 if right else x1, y1 if above else y1 + 1, name, fontsize=fontsize, color="black",
                va="bottom" if above else "top", ha="right" if right else "left", clip_on=True,
                bbox={"facecolor": "white", "edgecolor": colour, "pad": 1, "alpha": 0.85})
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=max(fontsize, 9))
    return len(boxes)


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


def _has_data(ax) -> bool:
    return bool(ax.images or ax.lines or ax.patches or ax.collections or ax.texts)


def _has_colour_bar(image, with_bars: list) -> bool:
    """A heat map has its own colour bar, or shares the colour map and limits of one that has (one bar for a row)."""
    return image.colorbar is not None or any(
        other.get_cmap().name == image.get_cmap().name and other.get_clim() == image.get_clim() for other in with_bars)


def _inside(box, points: np.ndarray) -> bool:
    points = points[np.isfinite(points).all(1)]
    return bool(np.any((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0)
                       & (points[:, 1] <= box.y1)))


def _densify(points: np.ndarray, per_segment: int = 20) -> np.ndarray:
    """Points along a polyline's segments, so a legend over a segment's middle is caught."""
    if len(points) < 2:
        return points
    t = np.linspace(0, 1, per_segment)[None, :, None]
    return (points[:-1, None] * (1 - t) + points[1:, None] * t).reshape(-1, 2)


def _legend_covers_data(ax, legend, renderer) -> bool:
    """True when the legend's box, drawn inside ``ax``, lies over a line point, a bar, a marker or an image."""
    box = legend.get_window_extent(renderer)
    if not box.overlaps(ax.get_window_extent(renderer)):
        return False  # placed outside the axes
    for line in ax.lines:
        points = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float).reshape(-1, 2))
        if _inside(box, points if line.get_linestyle() in ("None", "", " ") else _densify(points)):
            return True
    for artist in [*ax.patches, *ax.images]:
        if artist.get_visible() and artist.get_window_extent(renderer).overlaps(box):
            return True
    for collection in ax.collections:
        offsets = collection.get_offset_transform().transform(np.asarray(collection.get_offsets(), dtype=float))
        if len(offsets) and _inside(box, offsets.reshape(-1, 2)):
            return True
    return False


def _laid_out(figure: Figure):
    """Draw ``figure`` once on an Agg canvas (its layout then final); return the renderer, to measure text with."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(figure, Figure):
        raise TypeError(f"figure must be a matplotlib Figure, got {type(figure).__name__}")
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    return renderer


def figure_problems(figure: Figure, min_points: float = 9, max_width: float = 9.5) -> list[str]:
    """What keeps ``figure`` from reading at a glance, by CONTRIBUTING.md's figure standard; [] when nothing.

    Checks: width at most ``max_width`` inches (so a notebook shows it unscaled); every
    visible text at least ``min_points`` pt; every panel with data titled (a lone panel may
    use the figure's suptitle); a colour bar beside every heat map (a single-channel image);
    no legend drawn over a line, bar, marker or image of its own axes.
    """
    from matplotlib.text import Text

    renderer = _laid_out(figure)
    problems = []
    if figure.get_figwidth() > max_width + 1e-6:
        problems.append(f"figure is {figure.get_figwidth():.1f} in wide (at most {max_width})")
    small = {t.get_text() for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()
             and t.get_fontsize() < min_points - 1e-6 and t.get_window_extent(renderer).width > 0}
    problems += [f"text {text!r} is under {min_points:g} pt" for text in sorted(small)[:10]]
    panels = [ax for ax in figure.axes if ax.get_visible() and ax.get_label() != "<colorbar>" and _has_data(ax)]
    shared = [image for ax in figure.axes for image in ax.images if image.colorbar is not None]
    titled_by_figure = len(panels) == 1 and figure._suptitle is not None
    for i, ax in enumerate(panels):
        if not (titled_by_figure or any(ax.get_title(loc=loc) for loc in ("left", "center", "right"))):
            problems.append(f"panel {i} has no title")
        for image in ax.images:
            array = image.get_array()
            if array is not None and array.ndim == 2 and not _has_colour_bar(image, shared):
                problems.append(f"panel {i} shows a heat map without a colour bar")
        legend = ax.get_legend()
        if legend is not None and legend.get_visible() and _legend_covers_data(ax, legend, renderer):
            problems.append(f"panel {i}'s legend covers its data")
    return problems


def separate_labels(figure: Figure, max_moves: int = 8) -> Figure:
    """Move each image panel's labels off the ones drawn before them; returns ``figure``.

    Call it once the figure is complete. It lays the figure out (Agg), then, panel by
    panel in drawing order (:func:`plot_detections` draws in the order given: best score
    first for a model's output), moves a label that overlaps an earlier one by its own
    height towards the image's vertical middle, up to ``max_moves`` times.
    """
    renderer = _laid_out(figure)
    for ax in figure.axes:
        if not ax.images:
            continue
        middle = sum(ax.get_ylim()) / 2
        for k, text in enumerate(ax.texts):
            for _ in range(max_moves):
                extent = text.get_window_extent(renderer)
                if not any(extent.overlaps(t.get_window_extent(renderer)) for t in ax.texts[:k]):
                    break
                (_, top), (_, bottom) = ax.transData.inverted().transform(extent.get_points())
                x, y = text.get_position()
                text.set_position((x, y + abs(bottom - top) * (1 if y < middle else -1)))
    return figure
