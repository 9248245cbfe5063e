"""The RoI explorer of chapter 3: where RoIPool and RoIAlign read a feature map, drawn on a photograph.

A box ``(x, y, w, h)`` in image pixels is pooled from a feature map of stride ``s``.
Here the "feature map" is the grey photograph averaged over ``s x s`` blocks, so
feature pixel ``(i, j)`` is the mean of image pixels ``[j s, (j + 1) s) x [i s, (i + 1) s)``
and its value belongs to the block's centre ``((j + 0.5) s, (i + 0.5) s)``.

:func:`roi_explorer_state` says, in image pixels, what each op actually reads:

- **RoIPool** rounds the box corners to feature pixels and keeps whole pixels
  ``round(x1 / s) .. round(x2 / s)`` (both ends included, as torchvision's kernel does),
  so it reads the image region ``[round(x1 / s) s, (round(x2 / s) + 1) s)``; its bins
  are whole feature pixels too.
- **RoIAlign** reads bilinear samples at feature coordinate ``c``, i.e. at image position
  ``(c + 0.5) s``. With ``aligned=True`` the samples sit exactly inside the box's bins;
  with ``aligned=False`` every sample is ``s / 2`` pixels right of and below where it
  belongs.

The misalignment is, per edge, the read region's edge minus the box's edge in pixels.
:class:`RoIExplorer` wires sliders to that function and redraws one reused figure.
"""

from __future__ import annotations

import io
import math

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from ..boxes import box_iou
from ..ops import roi_align, roi_pool

STRIDES = (4, 8, 16, 32)
MODES = ("RoIPool", "RoIAlign", "both")
EDGES = ("x1", "y1", "x2", "y2")
PANELS = ("Left to right: the feature map around the box (white lines: feature pixels; yellow: the box; "
          "red: RoIPool's bins; blue dashed: RoIAlign's bins and dots: its samples), RoIPool's output (max), "
          "RoIAlign's output (mean), and RoIAlign − RoIPool (blue negative, red positive).")
# One title per panel of the figure, shown as HTML above it (text inside the figure is
# most of matplotlib's drawing time); widths follow the panels' width ratios 2:1:1:1.
PANEL_TITLES = ("the box on the feature map", "RoIPool (max)", "RoIAlign (mean)", "RoIAlign − RoIPool")
# The chapter's worked example: a 167 x 54 px box on a stride-16 map, on the astronaut's face.
EXAMPLE = dict(x=173, y=101, w=167, h=54, stride=16, output_size=7, sampling_ratio=2, aligned=True)


def grey_image(image: np.ndarray | Tensor) -> Tensor:
    """A photograph as float64 Tensor[H, W] in 0..1: RGB(A) [H, W, 3|4] uint8/float, or grey [H, W]."""
    t = torch.as_tensor(np.asarray(image))
    if t.ndim == 3 and t.shape[-1] in (3, 4):
        t = t[..., :3].double().mean(-1)
    elif t.ndim != 2:
        raise ValueError(f"image must be [H, W] grey or [H, W, 3|4] colour, got shape {list(t.shape)}")
    t = t.double()
    return t / 255 if t.max() > 1 else t


def feature_map(image: Tensor, stride: int) -> Tensor:
    """The grey image averaged over ``stride x stride`` blocks: Tensor[H // stride, W // stride] float64."""
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}")
    return F.avg_pool2d(image[None, None], stride)[0, 0]


def roipool_bins(box: tuple[float, float, float, float], stride: int, output_size: int,
                 height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """RoIPool's read region and bins, in image pixels, for a feature map of ``height x width`` pixels.

    Returns ``region`` [4] (x1, y1, x2, y2) and ``bins`` [output_size, output_size, 4]: bin
    ``(i, j)`` covers whole feature pixels ``[floor(p bin), ceil((p + 1) bin))`` past the
    rounded corner (clipped to the map), times ``stride``.
    """
    # C's round (half away from zero), as the kernel does; the box is never negative here.
    x1, y1, x2, y2 = (math.floor(v / stride + 0.5) for v in box)
    cells_w, cells_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    p = np.arange(output_size)

    def edges(start: int, cells: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        bin_size = cells / output_size
        lo = np.clip(np.floor(p * bin_size).astype(int) + start, 0, size)
        hi = np.clip(np.ceil((p + 1) * bin_size).astype(int) + start, 0, size)
        return lo * stride, hi * stride

    cx1, cx2 = edges(x1, cells_w, width)
    cy1, cy2 = edges(y1, cells_h, height)
    bins = np.stack(np.broadcast_arrays(cx1[None, :], cy1[:, None], cx2[None, :], cy2[:, None]), -1).astype(float)
    region = np.array([x1 * stride, y1 * stride, (x1 + cells_w) * stride, (y1 + cells_h) * stride], dtype=float)
    return region, bins


def roialign_bins(box: tuple[float, float, float, float], stride: int, output_size: int, sampling_ratio: int,
                  aligned: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Where RoIAlign's bins and bilinear samples fall, in image pixels.

    Returns ``region`` [4], ``bins`` [output_size, output_size, 4], ``samples`` [output_size**2 * g * g, 2]
    (x, y) and ``(g_y, g_x)``, the samples per bin along each axis (``sampling_ratio``, or
    ``ceil(bin size)`` in feature pixels when ``sampling_ratio <= 0``).
    A feature coordinate ``c`` is the image position ``(c + 0.5) * stride``.
    """
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v / stride - offset for v in box)
    box_w, box_h = x2 - x1, y2 - y1
    if not aligned:
        box_w, box_h = max(box_w, 1.0), max(box_h, 1.0)
    bin_w, bin_h = box_w / output_size, box_h / output_size
    gx = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_w), 1)
    gy = sampling_ratio if sampling_ratio > 0 else max(math.ceil(bin_h), 1)
    p = np.arange(output_size)
    to_image = lambda c: (np.asarray(c, dtype=float) + 0.5) * stride  # noqa: E731
    xs0, ys0 = to_image(x1 + p * bin_w), to_image(y1 + p * bin_h)
    xs1, ys1 = to_image(x1 + (p + 1) * bin_w), to_image(y1 + (p + 1) * bin_h)
    bins = np.stack(np.broadcast_arrays(xs0[None, :], ys0[:, None], xs1[None, :], ys1[:, None]), -1)
    kx, ky = (np.arange(gx) + 0.5) / gx, (np.arange(gy) + 0.5) / gy
    sx = to_image(x1 + (p[:, None] + kx[None, :]).ravel() * bin_w)
    sy = to_image(y1 + (p[:, None] + ky[None, :]).ravel() * bin_h)
    samples = np.stack(np.meshgrid(sx, sy), -1).reshape(-1, 2)
    region = np.array([to_image(x1), to_image(y1), to_image(x1 + box_w), to_image(y1 + box_h)])
    return region, bins, samples, (gy, gx)


def roi_explorer_state(image: np.ndarray | Tensor, x: float, y: float, w: float, h: float, stride: int = 16,
                       output_size: int = 7, sampling_ratio: int = 2, aligned: bool = True) -> dict:
    """What the explorer draws for the box ``(x, y, w, h)`` (image pixels) on the stride-``stride`` map.

    ``image``: a photograph [H, W] or [H, W, 3]. ``sampling_ratio <= 0`` is adaptive, as in
    ``roi_align``. Returns a dict:

    - ``feature`` Tensor[H // s, W // s] (the block-averaged grey image), ``box`` [4] XYXY px;
    - ``pool_region`` [4], ``pool_bins`` [S, S, 4], ``pooled_pool`` [S, S] (``fpnbook.ops.roi_pool``);
    - ``align_region`` [4], ``align_bins`` [S, S, 4], ``samples`` [M, 2] (x, y), ``grid`` ((g_y, g_x)
      samples per bin per axis), ``pooled_align`` [S, S] (``fpnbook.ops.roi_align``); ``difference`` = align - pool;
    - ``pool_misalignment`` / ``align_misalignment``: {edge: read edge - box edge, px} for x1, y1, x2, y2,
      and ``pool_iou`` / ``align_iou``, the IoU of each read region with the box;
    - the arguments ``stride``, ``output_size``, ``sampling_ratio``, ``aligned``.
    """
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}")
    if not (isinstance(output_size, int) and output_size > 0):
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    for name, value in (("x", x), ("y", y), ("w", w), ("h", h)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of pixels, got {value!r}")
    if not (w > 0 and h > 0):
        raise ValueError(f"w and h must be positive, got w={w!r}, h={h!r}")
    grey = grey_image(image)
    if min(grey.shape) < stride:
        raise ValueError(f"image must be at least stride={stride} pixels on each side, got {tuple(grey.shape)}")
    feature = feature_map(grey, stride)
    box = (float(x), float(y), float(x + w), float(y + h))
    pool_region, pool_bins = roipool_bins(box, stride, output_size, *feature.shape)
    align_region, align_bins, samples, grid = roialign_bins(box, stride, output_size, sampling_ratio, aligned)
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    pooled_pool = roi_pool(feature[None, None], rois, output_size, 1 / stride)[0, 0]
    pooled_align = roi_align(feature[None, None], rois, output_size, 1 / stride, sampling_ratio, aligned)[0, 0]
    box_t = torch.tensor([box], dtype=torch.float64)

    def iou(region: np.ndarray) -> float:
        return float(box_iou(box_t, torch.from_numpy(region)[None])[0, 0])

    return {"feature": feature, "box": np.array(box), "stride": stride, "output_size": output_size,
            "sampling_ratio": sampling_ratio, "aligned": bool(aligned),
            "pool_region": pool_region, "pool_bins": pool_bins, "pooled_pool": pooled_pool.numpy(),
            "align_region": align_region, "align_bins": align_bins, "samples": samples, "grid": grid,
            "pooled_align": pooled_align.numpy(), "difference": (pooled_align - pooled_pool).numpy(),
            "pool_misalignment": dict(zip(EDGES, (pool_region - np.array(box)).tolist())),
            "align_misalignment": dict(zip(EDGES, (align_region - np.array(box)).tolist())),
            "pool_iou": iou(pool_region), "align_iou": iou(align_region)}


def misalignment_text(state: dict) -> str:
    """The line under the controls, e.g. ``misalignment: RoIPool x1 +11.0 px ... (IoU 0.83)``."""
    def line(name: str, key: str) -> str:
        edges = "  ".join(f"{e} {v:+.1f} px" for e, v in state[f"{key}_misalignment"].items())
        return f"{name}: {edges} (IoU {state[f'{key}_iou']:.3f})"

    aligned = "aligned=True" if state["aligned"] else "aligned=False"
    return (f"<b>misalignment</b> at stride {state['stride']}: {line('RoIPool', 'pool')}<br>"
            f"<b>misalignment</b> {line(f'RoIAlign ({aligned})', 'align')}")


def _bin_lines(bins: np.ndarray) -> list[np.ndarray]:
    """Every bin's outline as four segments, for one LineCollection."""
    x1, y1, x2, y2 = (bins[..., i].ravel() for i in range(4))
    segments = [((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))]
    return [np.array([[a[0][k], a[1][k]], [b[0][k], b[1][k]]]) for a, b in segments for k in range(len(x1))]


class RoIFigure:
    """One figure, drawn once and then updated in place: the image with both ops' bins, and three heatmaps.

    ``draw(state, mode)`` moves the artists (``set_data``, ``set_segments``, ...) instead of
    re-creating them, which keeps a redraw within a few tens of milliseconds.
    """

    def __init__(self, figsize: tuple[float, float] = (9.0, 3.2), dpi: int = 72) -> None:
        self.fig = Figure(figsize=figsize, dpi=dpi)
        self.fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.98, wspace=0.08)
        self.ax_image, self.ax_pool, self.ax_align, self.ax_diff = self.fig.subplots(1, 4, width_ratios=(2, 1, 1, 1))
        self.feature = self.ax_image.imshow(np.zeros((1, 1)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        self.box = self.ax_image.add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="yellow", lw=2))
        self.pool_lines = self.ax_image.add_collection(LineCollection([], colors="C3", lw=1))
        self.align_lines = self.ax_image.add_collection(LineCollection([], colors="C0", lw=1, linestyles="--"))
        self.samples = self.ax_image.scatter([], [], s=4, c="C0")
        self.cells = self.ax_image.add_collection(LineCollection([], colors="w", lw=0.3, alpha=0.5))
        self.heat = {key: ax.imshow(np.zeros((2, 2)), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                     for ax, key, cmap in ((self.ax_pool, "pooled_pool", "gray"),
                                           (self.ax_align, "pooled_align", "gray"),
                                           (self.ax_diff, "difference", "coolwarm"))}
        # No axes and no text: they are most of matplotlib's drawing time. The panels are
        # named in PANELS (HTML beside the figure); the grid lines show the feature pixels.
        for ax in self.fig.axes:
            ax.set_axis_off()

    def draw(self, state: dict, mode: str = "both") -> Figure:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        stride, (x1, y1, x2, y2) = state["stride"], state["box"]
        feature = state["feature"].numpy()
        self.feature.set_data(feature)
        self.feature.set_extent((0, feature.shape[1] * stride, feature.shape[0] * stride, 0))
        self.box.set_bounds(x1, y1, x2 - x1, y2 - y1)
        show_pool, show_align = mode in ("RoIPool", "both"), mode in ("RoIAlign", "both")
        self.pool_lines.set_segments(_bin_lines(state["pool_bins"]) if show_pool else [])
        self.align_lines.set_segments(_bin_lines(state["align_bins"]) if show_align else [])
        self.samples.set_offsets(state["samples"] if show_align else np.zeros((0, 2)))
        # The view: the box with a margin of two feature pixels, and the feature pixel grid.
        margin = 2 * stride
        left, right = max(x1 - margin, 0), x2 + margin
        top, bottom = max(y1 - margin, 0), y2 + margin
        self.ax_image.set_xlim(left, right)
        self.ax_image.set_ylim(bottom, top)
        xs = np.arange(math.floor(left / stride), math.ceil(right / stride) + 1) * stride
        ys = np.arange(math.floor(top / stride), math.ceil(bottom / stride) + 1) * stride
        self.cells.set_segments([np.array([[v, top], [v, bottom]]) for v in xs]
                                + [np.array([[left, v], [right, v]]) for v in ys])
        size = state["output_size"]
        for key, ax in (("pooled_pool", self.ax_pool), ("pooled_align", self.ax_align), ("difference", self.ax_diff)):
            artist = self.heat[key]
            artist.set_data(state[key])
            artist.set_extent((-0.5, size - 0.5, size - 0.5, -0.5))
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
        limit = max(float(np.abs(state["difference"]).max()), 1e-6)
        self.heat["difference"].set_clim(-limit, limit)
        self.ax_pool.set_visible(show_pool)
        self.ax_align.set_visible(show_align)
        self.ax_diff.set_visible(mode == "both")
        return self.fig

    def png(self) -> bytes:
        buffer = io.BytesIO()
        # zlib's fastest level: the PNG is a few kB larger and encodes several times faster.
        self.fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
        return buffer.getvalue()


class RoIExplorer(widgets.VBox):
    """Controls for the box and the ops, the misalignment as HTML, and the figure as a PNG Image.

    Controls (by description): ``x``, ``y``, ``width``, ``height`` (IntSliders, image px),
    ``stride`` (ToggleButtons 4/8/16/32), ``output size`` (IntSlider), ``sampling ratio``
    (IntSlider, 0 = adaptive), ``aligned`` (Checkbox), ``mode`` (ToggleButtons RoIPool /
    RoIAlign / both). Attributes ``text`` (HTML), ``titles`` (one HTML per panel, hidden with
    its panel), ``image`` (Image), ``state`` (the last
    :func:`roi_explorer_state`), ``figure`` (the reused :class:`RoIFigure`). Changing any
    control redraws.
    """

    def __init__(self, image: np.ndarray | Tensor, x: int = EXAMPLE["x"], y: int = EXAMPLE["y"], w: int = EXAMPLE["w"],
                 h: int = EXAMPLE["h"], stride: int = EXAMPLE["stride"], output_size: int = EXAMPLE["output_size"],
                 sampling_ratio: int = EXAMPLE["sampling_ratio"], aligned: bool = EXAMPLE["aligned"],
                 mode: str = "both") -> None:
        self.grey = grey_image(image)
        height, width = self.grey.shape
        style = {"description_width": "110px"}  # wide enough for "sampling ratio" in JupyterLab 4

        def slider(value: int, low: int, high: int, description: str) -> widgets.IntSlider:
            return widgets.IntSlider(value=value, min=low, max=high, description=description,
                                     continuous_update=False, style=style)

        self.x, self.y = slider(x, 0, width - 1, "x"), slider(y, 0, height - 1, "y")
        self.width, self.height = slider(w, 1, width, "width"), slider(h, 1, height, "height")
        self.stride = widgets.ToggleButtons(options=list(STRIDES), value=stride, description="stride", style=style)
        self.output_size = slider(output_size, 1, 14, "output size")
        self.sampling_ratio = slider(sampling_ratio, 0, 4, "sampling ratio")
        self.aligned = widgets.Checkbox(value=aligned, description="aligned", style=style)
        self.mode = widgets.ToggleButtons(options=list(MODES), value=mode, description="mode", style=style)
        self.text = widgets.HTML()
        self.figure = RoIFigure()
        self.caption = widgets.HTML(f"<small>{PANELS}</small>")
        figure_px = int(self.figure.fig.get_figwidth() * self.figure.fig.dpi)
        self.titles = [widgets.HTML(f"<b>{title}</b>", layout=widgets.Layout(width=f"{share}%"))
                       for title, share in zip(PANEL_TITLES, (40, 20, 20, 20))]
        self.image = widgets.Image(format="png")
        controls = (self.x, self.y, self.width, self.height, self.stride, self.output_size, self.sampling_ratio,
                    self.aligned, self.mode)
        super().__init__([widgets.HBox([widgets.VBox(controls[:4]), widgets.VBox(controls[4:])]),
                          self.text, widgets.HBox(self.titles, layout=widgets.Layout(width=f"{figure_px}px")),
                          self.image, self.caption])
        for control in controls:
            control.observe(self.update, "value")
        self.update()

    def update(self, *_) -> None:
        self.state = roi_explorer_state(self.grey, self.x.value, self.y.value, self.width.value, self.height.value,
                                        self.stride.value, self.output_size.value, self.sampling_ratio.value,
                                        self.aligned.value)
        self.text.value = misalignment_text(self.state)
        self.figure.draw(self.state, self.mode.value)
        mode = self.mode.value
        for title, shown in zip(self.titles[1:], (mode in ("RoIPool", "both"), mode in ("RoIAlign", "both"),
                                                   mode == "both")):
            title.layout.visibility = "visible" if shown else "hidden"
        self.image.value = self.figure.png()


def roi_explorer(image: np.ndarray | Tensor, **controls) -> RoIExplorer:
    """The RoI explorer for a photograph; opens on the 167 x 54 px box at stride 16 (``EXAMPLE``)."""
    return RoIExplorer(image, **controls)
