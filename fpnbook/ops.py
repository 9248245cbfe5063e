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
gradients). Every output value is a reduction over a *bag* of feature vectors.

- RoIAlign's average of bilinear samples is a weighted sum of pixels. It is
  separable: the samples of a bin form a grid of rows x columns, so its weights
  are (weights over rows) x (weights over columns), each a short band of pixels.
  ``F.embedding_bag`` sums all bags at once, reading the feature map as a table
  with one row (C channels) per pixel.
- RoIPool's max over a bin could be done the same way (``_roi_pool_bags``, the
  reference), but a max needs no weights, and it does not mind counting a pixel
  twice: the max over a rectangle is the max of four overlapping windows of
  power-of-two sides at its corners. ``roi_pool`` computes the max of every such
  window once per map (a sparse table, one elementwise max per window size) and
  then reads four values per bin (or one, from a table of every window size, when
  bins are small; see ``_window_plan``). To track the winner for the gradient, the tables
  hold int64 keys, the value's order in the high half and the pixel's index in the
  low half, so that a tie goes to the first pixel row by row, as in torchvision.

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


def output_size_pair(output_size: int | Sequence[int]) -> tuple[int, int]:
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


def _prepare(input: Tensor, boxes, output_size, spatial_scale: float) -> tuple[Tensor, int, int]:
    """The preamble both ops share: check the arguments, then ``(rois [K, 5], out_h, out_w)``."""
    _check_input(input)
    _check_scale(spatial_scale)
    out_h, out_w = output_size_pair(output_size)
    return _rois(input, boxes), out_h, out_w


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
    rois, out_h, out_w = _prepare(input, boxes, output_size, spatial_scale)
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


def _roi_bins(
    rois: Tensor, out_h: int, out_w: int, spatial_scale: float, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each RoI rounded to feature pixels, ``round(x * spatial_scale)``, spanning ``x2 - x1 + 1``
    pixels (at least 1) along each axis, and cut into bins by :func:`_pool_bins` (in the
    rois' dtype, as torchvision's kernel works in the input's).

    rois: [K, 5]. Returns row_lo, rows [K, h] and col_lo, cols [K, w] (long).
    """
    x1, y1, x2, y2 = _round_half_away(rois[:, 1:] * spatial_scale).long().unbind(1)
    box_w, box_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)
    row_lo, rows = _pool_bins(y1, box_h, out_h, height, rois.dtype)
    col_lo, cols = _pool_bins(x1, box_w, out_w, width, rois.dtype)
    return row_lo, rows, col_lo, cols


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


def _roi_pool_bags(input: Tensor, rois: Tensor, out_h: int, out_w: int, spatial_scale: float) -> Tensor:
    """Reference RoIPool, short and slow: the max over the bag of each bin's pixels.

    The feature map is read as a table with one row (C channels) per pixel; each bin
    lists its pixels row by row, so that on a tie ``F.embedding_bag``'s max keeps the
    first one, as torchvision's kernel does.
    input [N, C, H, W], rois [K, 5] -> [K, C, out_h, out_w].
    """
    num_images, channels, height, width = input.shape
    row_lo, rows, col_lo, cols = _roi_bins(rois, out_h, out_w, spatial_scale, height, width)
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
    return _bins_to_nchw(table.gather(0, argmax), len(rois), out_h, out_w)


# The fast RoIPool looks each bin's max up in precomputed window maxima, a 2-D sparse
# table. A bin of L pixels along an axis is covered by two windows of any size s with
# L/2 <= s <= L, one flush with each end; they overlap, which a max does not mind.
# Table (i, j) holds, at every pixel, the max over the window of row_sizes[i] x
# col_sizes[j] pixels whose top-left corner it is, and costs one elementwise max of
# two shifted views of the table before it. Per axis the window sizes are either the
# powers of two (few tables, two windows per bin) or all sizes up to the longest bin
# (more tables, one window per bin: 14 x 14 bins are small); _window_plan picks.

_TABLE_BYTES = 24 * 2**20  # one channel block's tables; below glibc's 32 MiB mmap threshold, so reused
_LOOKUPS = 2**16  # bins x channels looked up at a time on the CPU: 4 corners of int64 keys = 2 MiB


def _bin_windows(start: Tensor, count: Tensor, exact: bool) -> tuple[list[int], Tensor, Tensor]:
    """The windows that cover each bin along one axis.

    start, count: [K, P] long, each bin's first pixel and pixel count (0: empty bin).
    ``exact``: one window, of the bin's own size, from sizes 1, 2, ..., longest bin.
    Otherwise two windows of the largest power of two <= count, flush with the ends.
    Returns the window sizes (increasing, none more than twice the one before), each
    bin's index into them [K, P], and the windows' first pixels [1 or 2, K, P].
    """
    longest = max(int(count.max()), 1)
    if exact:
        return list(range(1, longest + 1)), (count - 1).clamp(min=0), start[None]
    sizes = [2**level for level in range(longest.bit_length())]
    level = torch.zeros_like(count)
    for size in sizes[1:]:
        level += count >= size
    return sizes, level, torch.stack([start, start + (count - 2**level).clamp(min=0)])


def _window_plan(rows: Tensor, cols: Tensor, map_size: int, channels: int) -> tuple[bool, bool]:
    """Exact window sizes along (rows, cols)? The cheapest choice by a rough cost model: a
    table is one pass over the map (``map_size`` = N*C*H*W values), and each bin and
    channel costs one random lookup per window corner, worth about 2.5 such values."""
    longest = (max(int(rows.max()), 1), max(int(cols.max()), 1))
    lookups = rows.shape[0] * rows.shape[1] * cols.shape[1] * channels

    def cost(exact: tuple[bool, bool]) -> float:
        tables = math.prod(n if e else n.bit_length() for n, e in zip(longest, exact))
        corners = math.prod(1 if e else 2 for e in exact)
        return tables * map_size + lookups * (2.5 * corners + 0.3 * (corners - 1))

    return min([(False, False), (True, False), (False, True), (True, True)], key=cost)


def _to_nhwc(x: Tensor) -> Tensor:
    """[N, C, H, W] -> contiguous [N, H, W, C] (a view if ``x`` is channels_last). One 2-D
    transpose per image, which ``copy_`` does in cache-sized tiles."""
    num_images, channels, height, width = x.shape
    nhwc = x.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():
        return nhwc
    out = x.new_empty(nhwc.shape)
    for n in range(num_images):
        out[n].view(height * width, channels).copy_(x[n].reshape(channels, height * width).t())
    return out


def _descending_order(x: Tensor) -> Tensor:
    """int32 of the same shape, smaller for larger values and equal for equal values."""
    if x.dtype == torch.float64:  # 64 bits cannot be squeezed into 32: ranks (a sort, slow but exact)
        return ~torch.unique(x, return_inverse=True)[1].int()
    bits = (x.float() + 0.0).view(torch.int32)  # + 0.0 makes -0.0 equal to 0.0; half, bfloat16 widen exactly
    # Read as integers, a float's bits are sign and magnitude; flipping the magnitude
    # bits of negative values turns that into two's complement, whose order is the floats'.
    return ~(bits ^ ((bits >> 31) & 0x7FFFFFFF))


def _losing_value(dtype: torch.dtype) -> float:
    """torchvision's starting max, -FLT_MAX, in ``dtype`` (-inf for half and bfloat16)."""
    return float(torch.tensor(torch.finfo(torch.float32).min, dtype=dtype))


def _roi_pool_windows(
    input: Tensor, rois: Tensor, out_h: int, out_w: int, spatial_scale: float, argmax: bool
) -> Tensor:
    """RoIPool through window tables (see above). Returns [K, C, out_h * out_w]: the bins'
    maxima, in ``input``'s dtype, or with ``argmax`` their argmax as int32 indices into
    ``input.reshape(-1)``: ``input.numel()`` for an empty bin (value 0), ``input.numel() + 1``
    for a bin of NaN and -inf only (value -FLT_MAX). Ties go to the first pixel in
    row-major order, as in torchvision.

    With ``argmax`` the tables hold int64 keys ``(value order << 32) + index``, of which
    the smallest is the largest value and, of equal ones, the first pixel: the min of
    keys is a max of values that carries its argmax along. Needs input.numel() < 2**31 - 2.
    """
    num_images, channels, height, width = input.shape
    num_rois, bins = len(rois), out_h * out_w
    device = input.device
    row_lo, rows, col_lo, cols = _roi_bins(rois, out_h, out_w, spatial_scale, height, width)
    exact_rows, exact_cols = _window_plan(rows, cols, input.numel(), channels)
    row_sizes, row_pick, row_starts = _bin_windows(row_lo, rows, exact_rows)  # [R], [K, h], [1|2, K, h]
    col_sizes, col_pick, col_starts = _bin_windows(col_lo, cols, exact_cols)  # [S], [K, w], [1|2, K, w]

    # Table (i, j) has a window at each (image, y, x) where it fits on the map: rows
    # start[i * S + j] onwards of one buffer [*, channels], whose last row is for empty bins.
    t_h, t_w = [height + 1 - s for s in row_sizes], [width + 1 - s for s in col_sizes]
    start = [0]
    for a in t_h:
        for b in t_w:
            start.append(start[-1] + num_images * a * b)
    empty_row = start[-1]
    # The buffer row of every window corner of every bin: [corners, K * h * w].
    first_row = torch.tensor(start[:-1], device=device).view(len(t_h), len(t_w))
    first_row = first_row[row_pick[:, :, None], col_pick[:, None, :]]  # [K, h, w]
    pitch = torch.tensor(t_w, device=device)[col_pick][:, None, :]  # [K, 1, w]
    per_image = torch.tensor(t_h, device=device)[row_pick][:, :, None] * pitch  # [K, h, w]
    first_row = first_row + rois[:, 0].long()[:, None, None] * per_image
    corners = first_row + row_starts[:, None, :, :, None] * pitch + col_starts[None, :, :, None, :]
    corners = corners.reshape(-1, num_rois * bins)
    empty = (rows == 0)[:, :, None] | (cols == 0)[:, None, :]
    corners = corners.masked_fill(empty.reshape(-1), empty_row)

    x = _to_nhwc(input.detach())
    # Like torchvision's kernel, which starts a bin's max at -FLT_MAX and takes a pixel
    # only if it is larger: NaN, -inf and -FLT_MAX never win, and a bin holding nothing
    # else gives -FLT_MAX (in input's dtype), with no gradient.
    floor = _losing_value(input.dtype)
    losing = ~(x > floor)
    losing = losing if bool(losing.any()) else None
    if losing is not None:
        x = x.masked_fill(losing, floor)
    if argmax:
        reduce, empty_value, dtype = torch.minimum, input.numel(), torch.int64
        x = _descending_order(x)
        floor_key = (int(_descending_order(input.new_full((1,), floor))) << 32) + input.numel() + 1
        pixel = torch.arange(height * width, device=device).view(height, width, 1)
        plane = torch.arange(num_images, device=device)[:, None, None, None] * channels
    else:
        reduce, empty_value, dtype = torch.maximum, 0, input.dtype
    result = torch.empty(num_rois, channels, bins, dtype=torch.int32 if argmax else dtype, device=device)
    # Channels in blocks of even size, whose tables fit in _TABLE_BYTES.
    block = max(1, min(channels, _TABLE_BYTES // ((empty_row + 1) * dtype.itemsize)))
    block = -(-channels // -(-channels // block))
    step = max(1, _LOOKUPS // (block * bins)) if device.type == "cpu" else num_rois
    buffer = torch.empty(0, device=device)
    for c0 in range(0, channels, block):
        c1 = min(c0 + block, channels)
        if buffer.shape[-1] != c1 - c0:
            buffer = torch.empty(empty_row + 1, c1 - c0, dtype=dtype, device=device)

        def table(i: int, j: int) -> Tensor:
            k = i * len(t_w) + j
            return buffer[start[k] : start[k + 1]].view(num_images, t_h[i], t_w[j], c1 - c0)

        ones = table(0, 0)  # 1 x 1 windows: the map itself
        ones.copy_(x[..., c0:c1])
        if argmax:
            ones <<= 32
            ones += pixel
            ones += (plane + torch.arange(c0, c1, device=device)) * (height * width)
            if losing is not None:  # they read the -FLT_MAX after the zero in roi_pool's table
                ones.masked_fill_(losing[..., c0:c1], floor_key)
        buffer[empty_row] = empty_value
        for j in range(len(t_w)):
            if j:
                shift, prev = col_sizes[j] - col_sizes[j - 1], table(0, j - 1)
                reduce(prev[:, :, :-shift], prev[:, :, shift:], out=table(0, j))
            for i in range(1, len(t_h)):
                shift, prev = row_sizes[i] - row_sizes[i - 1], table(i - 1, j)
                reduce(prev[:, :-shift], prev[:, shift:], out=table(i, j))
        for k0 in range(0, num_rois, step):
            k1 = min(k0 + step, num_rois)
            found = buffer.index_select(0, corners[:, k0 * bins : k1 * bins].reshape(-1))
            found = found.view(len(corners), (k1 - k0) * bins, c1 - c0)
            best = found[0]
            for other in found[1:]:
                reduce(best, other, out=best)
            # For keys, the cast to int32 keeps the low 32 bits: the index.
            result[k0:k1, c0:c1].copy_(best.view(k1 - k0, bins, c1 - c0).transpose(1, 2))
    return result


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
    rois, out_h, out_w = _prepare(input, boxes, output_size, spatial_scale)
    num_rois, channels = len(rois), input.shape[1]
    if num_rois == 0 or input.numel() == 0:
        return input.new_zeros(num_rois, channels, out_h, out_w)
    if not (torch.is_grad_enabled() and input.requires_grad):  # no gradient: the maxima are all we need
        pooled = _roi_pool_windows(input, rois, out_h, out_w, spatial_scale, argmax=False)
        return pooled.view(num_rois, channels, out_h, out_w)
    if input.numel() >= 2**31 - 2:  # its indices would not fit in int32
        return _roi_pool_bags(input, rois, out_h, out_w, spatial_scale)
    with torch.no_grad():
        argmax = _roi_pool_windows(input, rois, out_h, out_w, spatial_scale, argmax=True)
    # Reading the winners is what autograd sees: the gradient goes to the argmax pixels,
    # and an empty bin's to the extra zero at the end (or -FLT_MAX), where it is dropped.
    table = torch.cat([input.reshape(-1), input.new_tensor([0.0, _losing_value(input.dtype)])])
    return table.index_select(0, argmax.view(-1)).view(num_rois, channels, out_h, out_w)


# --- Modules ----------------------------------------------------------------------------


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module, like ``torchvision.ops.RoIAlign``."""

    def __init__(
        self, output_size: int | Sequence[int], spatial_scale: float, sampling_ratio: int, aligned: bool = False
    ) -> None:
        super().__init__()
        self.output_size = output_size_pair(output_size)
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
        self.output_size = output_size_pair(output_size)
        _check_scale(spatial_scale)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
