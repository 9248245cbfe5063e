"""Readable references: the slow, obviously correct versions that the fast ops are checked against.

nanoGPT keeps its manual attention beside the flash path; torchvision tests its ops
against a looped ``expected_fn``. These are fpnbook's: one RoI, one bin, one sample at a
time, in plain Python over tensors, with torchvision's conventions. Chapter 3 shows their
source and checks :func:`fpnbook.ops.roi_pool` / :func:`fpnbook.ops.roi_align` against them
(and against torchvision); ``tests/test_ops.py`` uses them as an oracle that does not
depend on torchvision. They are far too slow for training.
"""

from __future__ import annotations

import math

import torch


def bilinear(values: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """values [C, H, W] read at the real point (y, x) as torchvision's RoIAlign does: [C].

    A point more than one pixel off the map reads 0; a point closer reads the border.
    """
    height, width = values.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return values.new_zeros(values.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * values[:, y0, x0] + (1 - ly) * lx * values[:, y0, x1]
            + ly * (1 - lx) * values[:, y1, x0] + ly * lx * values[:, y1, x1])


def c_round(v: float) -> int:
    """C's round(): halves away from zero (Python's round() sends them to even)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def roi_pool_loops(input: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float) -> torch.Tensor:
    """RoIPool: input [N, C, H, W], rois [K, 5] (batch, x1, y1, x2, y2) image px -> [K, C, size, size]."""
    _, channels, height, width = input.shape
    output = input.new_zeros(len(rois), channels, output_size, output_size)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        # Rounding 1: the box corners to whole feature pixels, both end pixels kept.
        x1, y1, x2, y2 = (c_round(v * spatial_scale) for v in (x1, y1, x2, y2))
        box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bin_w, bin_h = box_w / output_size, box_h / output_size
        for i in range(output_size):
            for j in range(output_size):
                # Rounding 2: every bin to whole pixels (floor the start, ceil the end), clipped to the map.
                top = min(max(math.floor(i * bin_h) + y1, 0), height)
                bottom = min(max(math.ceil((i + 1) * bin_h) + y1, 0), height)
                left = min(max(math.floor(j * bin_w) + x1, 0), width)
                right = min(max(math.ceil((j + 1) * bin_w) + x1, 0), width)
                if bottom > top and right > left:  # an empty bin stays 0
                    output[k, :, i, j] = input[int(b), :, top:bottom, left:right].amax(dim=(1, 2))
    return output


def roi_align_loops(input: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                    sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """RoIAlign: the mean of g x g bilinear samples per bin. Same shapes as roi_pool_loops."""
    _, channels, _, _ = input.shape
    output = input.new_zeros(len(rois), channels, output_size, output_size)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        # No rounding: the box in feature coordinates, as it is.
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in (x1, y1, x2, y2))
        box_w, box_h = x2 - x1, y2 - y1
        if not aligned:  # the original op stretches tiny boxes to one feature pixel
            box_w, box_h = max(box_w, 1.0), max(box_h, 1.0)
        bin_w, bin_h = box_w / output_size, box_h / output_size
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
        for i in range(output_size):
            for j in range(output_size):
                total = input.new_zeros(channels)
                for iy in range(grid_h):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += bilinear(input[int(b)], y, x)
                output[k, :, i, j] = total / max(grid_h * grid_w, 1)
    return output
