"""RoIPool and RoIAlign: cut a fixed-size feature patch out of a feature map for each box.

Chapter 3 compares the two. Both take a feature map ``input`` [N, C, H, W] of
stride ``s`` and boxes ``(x1, y1, x2, y2)`` in input-image pixels, and return
[K, C, h, w]: box k is split into an h x w grid of bins, and each bin becomes
one value per channel. ``spatial_scale = 1 / s`` turns box pixels into
feature-map pixels.

- **RoIPool** (Fast R-CNN) rounds the box to whole feature pixels, splits it into
  bins with whole-pixel edges (floor for the start, ceil for the end), and takes
  the max over each bin. The rounding moves the patch by up to half a feature pixel,
  i.e. ``s / 2`` image pixels: harmless for a class, harmful for a 28x28 mask.
- **RoIAlign** (Mask R-CNN) keeps the box as it is, reads ``g x g`` evenly spaced
  points in every bin by bilinear interpolation, and averages them.

``aligned`` is about what a pixel index means. Pixel ``i`` covers ``[i, i + 1)``,
so its centre sits at ``i + 0.5``, while bilinear interpolation treats ``input[i]``
as the value *at* coordinate ``i``. ``aligned=True`` shifts the scaled box by
``-0.5`` so both speak the same language; ``aligned=False`` (the original
Detectron's RoIAlign) is half a pixel off. Detectron2 made ``aligned=True`` its
default; torchvision keeps ``False`` so that old Detectron weights still work.

Both ops here are vectorised PyTorch, differentiable with autograd, and equal to
``torchvision.ops.roi_pool`` / ``roi_align`` (same signatures, same numbers, same
gradients). They share one idea: every output value is a reduction over a *bag*
of feature vectors, which ``F.embedding_bag`` computes for all bags at once,
reading the feature map as a table with one row (C channels) per pixel.

- RoIAlign's average of bilinear samples is a weighted sum of pixels. It is
  separable: the samples of a bin form a grid of rows x columns, so its weights
  are (weights over rows) x (weights over columns), each a short band of pixels.
- RoIPool's max over a bin is a max over a bag of the bin's pixels, listed row by
  row so that a tie goes to the first pixel, as in torchvision's kernel.

Like torchvision, no gradient flows to the boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BoxesArg = Tensor | Sequence[Tensor]


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    """``7`` or ``(7, 7)`` -> ``(7, 7)``; anything else is a ValueError."""
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    if not isinstance(size, Sequence) or len(size) != 2 or not all(_is_positive_int(s) for s in size):
        raise ValueError(f"output_size must be a positive int or a pair (height, width) of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor[N, C, H, W], got {type(input).__name__}")
    if input.ndim != 4:
        raise ValueError(f"input must be a 4-D Tensor[N, C, H, W], got shape {list(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor, got {input.dtype}")


def _check_scale(spatial_scale: float) -> None:
    if not (isinstance(spatial_scale, (int, float)) and math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"spatial_scale must be a positive number (1 / stride), got {spatial_scale!r}")


def _rois(input: Tensor, boxes: BoxesArg) -> Tensor:
    """Boxes in either of torchvision's forms -> Tensor[K, 5] (batch index, x1, y1, x2, y2).

    The result lives on ``input``'s device, in float64 for float64 input and in
    float32 otherwise (half-precision coordinates would lose whole pixels).
    """
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    num_images = input.shape[0]
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            shape = list(boxes.shape)
            raise ValueError(f"boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2), got shape {shape}")
        rois = boxes.detach().to(input.device, dtype)
    elif isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.ndim != 2 or b.shape[1] != 4:
                shape = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"boxes[{i}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {shape}")
        if len(boxes) > num_images:
            raise ValueError(f"boxes has {len(boxes)} entries (one per image) but input holds {num_images} images")
        if not boxes:
            return torch.zeros(0, 5, dtype=dtype, device=input.device)
        per_image = [b.detach().to(input.device, dtype) for b in boxes]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(per_image)])
    else:
        raise TypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if not torch.isfinite(rois).all():
        raise ValueError("boxes contains NaN or infinite values")
    batch = rois[:, 0]
    bad = (batch < 0) | (batch >= num_images) | (batch != batch.floor())
    if bad.any():
        found = batch[bad][:5].tolist()
        raise ValueError(f"boxes' batch index (column 0) must be an integer in [0, {num_images}), found {found}")
    return rois


def _pixel_table(input: Tensor) -> Tensor:
    """[N, C, H, W] -> [N*H*W, C]: one row of channels per pixel, the table the bags index."""
    n, c, h, w = input.shape
    return input.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _bins_to_nchw(pooled: Tensor, num_rois: int, height: int, width: int) -> Tensor:
    """One row per bin [K*h*w, C] -> [K, C, h, w]."""
    return pooled.view(num_rois, height, width, -1).permute(0, 3, 1, 2).contiguous()


# --- RoIAlign ---------------------------------------------------------------------------


def _sample_bands(
    start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int
) -> tuple[Tensor, Tensor]:
    """Where one axis' bilinear samples read the map, and with what weight.

    For every box k and bin p along this axis, ``grid[k]`` samples sit at
    ``start + p * bin + (i + 0.5) * bin / grid``. Each reads its two neighbouring
    pixels; the weights of all samples of a bin, divided by ``grid`` (the mean),
    are summed into a band of L consecutive pixels.

    start, bin_size: [K] feature-map coordinates; grid: [K] samples per bin (0 = none).
    Returns pixels [K, P, L] (long, in [0, size)) and weights [K, P, L]; band slots
    past a bin's last pixel have weight 0.
    """
    dtype, device = start.dtype, start.device
    num = max(int(grid.max()), 1) if grid.numel() else 1
    p = torch.arange(pooled, dtype=dtype, device=device)[None, :, None]
    i = torch.arange(num, dtype=dtype, device=device)[None, None, :]
    g = grid.to(dtype)[:, None, None]
    b = bin_size[:, None, None]
    # The same sum, in the same order, as torchvision's kernel, so that a sample
    # exactly on the edge of the valid range [-1, size] is kept or dropped as there.
    pos = start[:, None, None] + p * b + (i + 0.5) * b / g.clamp(min=1)  # [K, P, G]
    # Samples more than one pixel off the map read nothing; the rest read the
    # border pixel (clamping, not zero padding).
    valid = (i < g) & (pos >= -1) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    frac = torch.where(low >= size - 1, 0.0, pos - low)
    low = low.long()
    high = (low + 1).clamp(max=size - 1)
    mean = torch.where(valid, 1.0 / g.clamp(min=1), 0.0)
    # Band: the bin's first pixel read, then offsets from it.
    first = torch.where(valid, low, size).amin(-1).clamp(max=size - 1)  # [K, P]
    offsets = torch.cat([low, high], -1) - first[..., None]
    offsets = torch.where(torch.cat([valid, valid], -1), offsets, 0)
    weights = torch.cat([(1 - frac) * mean, frac * mean], -1)
    length = int(offsets.max()) + 1
    band = torch.zeros(*first.shape, length, dtype=dtype, device=device)
    band.scatter_add_(-1, offsets, weights)
    pixels = (first[..., None] + torch.arange(length, device=device)).clamp(max=size - 1)
    return pixels, band


def roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN): the mean of bilinear samples in each bin. Equals ``torchvision.ops.roi_align``.

    Args:
        input: feature map Tensor[N, C, H, W] of stride ``1 / spatial_scale``.
        boxes: Tensor[K, 5] rows ``(batch index, x1, y1, x2, y2)``, or a list of N'
            (N' <= N) Tensor[L, 4] ``(x1, y1, x2, y2)``, one per image. Input-image pixels.
        output_size: ``h`` or ``(h, w)``, the bins per box.
        spatial_scale: feature pixels per image pixel, ``1 / stride`` (``1/4`` for P2).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(box size / output size)`` in feature pixels, so about one per pixel.
        aligned: shift the scaled box by -0.5 so that pixel ``i``'s value sits at its
            centre ``i + 0.5`` (see the module docstring). With ``False`` boxes
            smaller than one feature pixel are also stretched to one pixel.

    Returns:
        Tensor[K, C, h, w] in ``input``'s dtype. Samples more than one pixel outside
        the map read 0; closer ones read the border pixel.
    """
    _check_input(input)
    _check_scale(spatial_scale)
    out_h, out_w = _output_size(output_size)
    rois = _rois(input, boxes)
    num_images, channels, height, width = input.shape
    num_rois = len(rois)
    if num_rois == 0 or input.numel() == 0:
        return input.new_zeros(num_rois, channels, out_h, out_w)

    batch = rois[:, 0].long()
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(1)
    box_w, box_h = x2 - x1, y2 - y1
    if not aligned:
        box_w, box_h = box_w.clamp(min=1.0), box_h.clamp(min=1.0)
    bin_h, bin_w = box_h / out_h, box_w / out_w
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(batch, sampling_ratio)
    else:
        # An inverted box (aligned=True) gets a negative grid: no samples, output 0.
        grid_h, grid_w = bin_h.ceil().long().clamp(min=0), bin_w.ceil().long().clamp(min=0)

    rows, row_weights = _sample_bands(y1, bin_h, grid_h, out_h, height)  # [K, h, Ly]
    cols, col_weights = _sample_bands(x1, bin_w, grid_w, out_w, width)  # [K, w, Lx]
    # Bin (k, i, j) is the bag of pixels rows[k, i] x cols[k, j], weighted by the
    # outer product of their weights. [K, h, w, Ly, Lx] -> one row per bin.
    rows = batch[:, None, None] * height + rows
    pixels = rows[:, :, None, :, None] * width + cols[:, None, :, None, :]
    weights = (row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :]).to(input.dtype)
    bags = num_rois * out_h * out_w
    pooled = F.embedding_bag(
        pixels.reshape(bags, -1), _pixel_table(input), mode="sum", per_sample_weights=weights.reshape(bags, -1)
    )
    return _bins_to_nchw(pooled, num_rois, out_h, out_w)


# --- RoIPool ----------------------------------------------------------------------------


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round sends them to even)."""
    whole = x.trunc()
    return whole + torch.where((x - whole).abs() >= 0.5, x.sign(), torch.zeros_like(x))


def _pool_bins(start: Tensor, length: Tensor, pooled: int, size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Whole-pixel bins along one axis: ``[floor(p * bin), ceil((p + 1) * bin))`` past the box
    start, clipped to the map.

    start, length: [K] long, the rounded box. Returns each bin's first pixel and
    pixel count, both [K, P] long; a bin off the map has count 0.
    """
    bin_size = length.to(dtype) / pooled
    p = torch.arange(pooled, dtype=dtype, device=start.device)
    lo = ((p * bin_size[:, None]).floor().long() + start[:, None]).clamp(0, size)
    hi = (((p + 1) * bin_size[:, None]).ceil().long() + start[:, None]).clamp(0, size)
    return lo, hi - lo


def _bin_pixels(first: Tensor, rows: Tensor, cols: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Every pixel of every bin, bin after bin, row by row inside a bin.

    first: [B] flat index of each bin's top-left pixel; rows, cols: [B] its size.
    Returns the flat pixel indices [sum(rows * cols)] and each bin's offset into them [B].
    """
    counts = rows * cols
    offsets = counts.cumsum(0) - counts
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    i = torch.arange(len(owner), device=counts.device) - offsets[owner]  # position inside its bin
    row_len = cols[owner]
    return first[owner] + (i // row_len) * width + i % row_len, offsets


def roi_pool(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Fast R-CNN): the max over whole-pixel bins of the rounded box. Equals ``torchvision.ops.roi_pool``.

    The box is scaled and rounded to feature pixels, ``round(x * spatial_scale)``,
    and spans ``x2 - x1 + 1`` pixels (at least 1). Bin ``p`` covers pixels
    ``[floor(p * bin), ceil((p + 1) * bin))`` from the box's first pixel, so bins
    can overlap by a pixel; a bin entirely off the map gives 0.

    Args:
        input: feature map Tensor[N, C, H, W] of stride ``1 / spatial_scale``.
        boxes: Tensor[K, 5] rows ``(batch index, x1, y1, x2, y2)``, or a list of
            Tensor[L, 4] ``(x1, y1, x2, y2)``, one per image. Input-image pixels.
        output_size: ``h`` or ``(h, w)``, the bins per box.
        spatial_scale: feature pixels per image pixel, ``1 / stride``.

    Returns:
        Tensor[K, C, h, w]. The gradient of each output goes to the pixel that held
        the bin's max; on a tie, to the first such pixel row by row, as in torchvision.
    """
    _check_input(input)
    _check_scale(spatial_scale)
    out_h, out_w = _output_size(output_size)
    rois = _rois(input, boxes)
    num_images, channels, height, width = input.shape
    num_rois = len(rois)
    if num_rois == 0 or input.numel() == 0:
        return input.new_zeros(num_rois, channels, out_h, out_w)

    x1, y1, x2, y2 = _round_half_away(rois[:, 1:] * spatial_scale).long().unbind(1)
    box_w, box_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)
    row_lo, rows = _pool_bins(y1, box_h, out_h, height, rois.dtype)  # [K, h]
    col_lo, cols = _pool_bins(x1, box_w, out_w, width, rois.dtype)  # [K, w]
    batch = rois[:, 0].long()
    first = (batch[:, None, None] * height + row_lo[:, :, None]) * width + col_lo[:, None, :]  # [K, h, w]
    rows, cols = rows[:, :, None].expand_as(first), cols[:, None, :].expand_as(first)
    # A bin off the map reads one extra all-zero pixel at the end of the table: its max
    # is then 0, as torchvision defines it, and the gradient it sends there is dropped.
    empty = (rows == 0) | (cols == 0)
    zero_pixel = num_images * height * width
    first = first.masked_fill(empty, zero_pixel).reshape(-1)
    rows, cols = rows.masked_fill(empty, 1).reshape(-1), cols.masked_fill(empty, 1).reshape(-1)
    pixels, offsets = _bin_pixels(first, rows, cols, width)

    table = torch.cat([_pixel_table(input), input.new_zeros(1, channels)])
    with torch.no_grad():  # only to learn which pixel wins: embedding_bag's 4th output, in mode 2 (max)
        argmax = torch.embedding_bag(table, pixels, offsets, False, 2)[3]
    # Reading the winners again is what autograd sees: the gradient goes to the argmax pixels.
    return _bins_to_nchw(table.gather(0, argmax), num_rois, out_h, out_w)


# --- Modules ----------------------------------------------------------------------------


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module, like ``torchvision.ops.RoIAlign``."""

    def __init__(
        self, output_size: int | Sequence[int], spatial_scale: float, sampling_ratio: int, aligned: bool = False
    ) -> None:
        super().__init__()
        self.output_size = _output_size(output_size)
        _check_scale(spatial_scale)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module, like ``torchvision.ops.RoIPool``."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = _output_size(output_size)
        _check_scale(spatial_scale)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
