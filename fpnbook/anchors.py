"""Anchors: the reference boxes that the RPN and RetinaNet classify and regress.

At every pixel of every pyramid level sit ``A`` anchors: boxes of a few sizes
(areas ``size**2``) and aspect ratios (``height / width``), centred on the pixel's
top-left corner in image coordinates. With an FPN, each level gets one size (32
at P2 up to 512 at P6) and three ratios, so ``A = 3`` (FPN paper, Sec. 4.1);
RetinaNet adds three scales per octave, ``A = 9`` (:func:`octave_sizes`).

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels. Level ``i`` with a feature map
of ``(h, w)`` pixels on a padded image of ``(H, W)`` has stride ``(H // h, W // w)``;
the anchors of pixel ``(y, x)`` are the cell anchors shifted by
``(x * stride_w, y * stride_h)``. Anchors are ordered level by level, then
location-major (row by row, left to right), then the ``A`` anchors of a location,
which are ordered ratio-major then size: the layout of a head's output
``[B, A * 4, h, w]`` permuted to ``[B, h, w, A, 4]``.

Same numbers as ``torchvision.models.detection.anchor_utils.AnchorGenerator``
(including its rounding of cell anchors to whole pixels), but the forward takes the
padded image size and returns one Tensor for the whole batch: every image of a
padded batch shares the same anchors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))  # the paper's, for ~800 px images
# Anchor shapes h/w = 1:2, 1:1, 2:1, for every detector in the book.
ASPECT_RATIOS = (0.5, 1.0, 2.0)
FPN_ASPECT_RATIOS = (ASPECT_RATIOS,) * 5
# Half the paper's sizes, for the book's ~256 px images: one per level of P2..P6 (the RPN)
# or P3..P7 (RetinaNet's base sizes, each with three octave scales).
ANCHOR_BASE_SIZES = (16, 32, 64, 128, 256)

# Grid anchors computed for this many (image size, feature sizes, dtype, device) keys are kept.
CACHE_SIZE = 16


def octave_sizes(
    base_sizes: Sequence[float] = (32, 64, 128, 256, 512), scales_per_octave: int = 3
) -> tuple[tuple[float, ...], ...]:
    """RetinaNet's anchor sizes: per level, ``base * 2**(j / scales_per_octave)`` for ``j = 0..scales_per_octave-1``.

    ``octave_sizes()[0] == (32.0, 40.3..., 50.8...)``. torchvision's RetinaNet truncates these to
    ints (32, 40, 50); we keep the paper's values. Cell anchors are rounded to whole pixels
    afterwards, so the two differ by at most a pixel or so.
    """
    if scales_per_octave < 1:
        raise ValueError(f"scales_per_octave must be at least 1, got {scales_per_octave}")
    scales = [2 ** (j / scales_per_octave) for j in range(scales_per_octave)]
    return tuple(tuple(float(base) * s for s in scales) for base in base_sizes)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Zero-centred anchors for one level: Tensor[len(aspect_ratios) * len(sizes), 4], XYXY pixels.

    An anchor of size ``s`` and ratio ``r = h / w`` has area ``s**2``: ``w = s / sqrt(r)``,
    ``h = s * sqrt(r)``. Ordered ratio-major, then size. Coordinates are rounded to whole
    pixels in float32, exactly as torchvision does (Detectron's legacy).
    """
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios_t = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    heights = (h_ratios[:, None] * sizes_t[None, :]).reshape(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


def grid_anchors(cell: Tensor, grid_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Shift the ``A`` cell anchors to every pixel of an ``(h, w)`` grid: Tensor[h * w * A, 4], XYXY pixels.

    Pixel ``(y, x)`` moves its anchors by ``(x * stride[1], y * stride[0])``; rows are
    location-major (row by row), then the ``A`` anchors of that location.
    """
    (height, width), (stride_h, stride_w) = grid_size, stride
    # Integer shifts, as torchvision, so large images lose no precision before the add.
    shifts_x = torch.arange(width, dtype=torch.int64, device=cell.device) * stride_w
    shifts_y = torch.arange(height, dtype=torch.int64, device=cell.device) * stride_h
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for every level of a pyramid, as ``torchvision.models.detection.anchor_utils.AnchorGenerator``.

    ``sizes[i]`` and ``aspect_ratios[i]`` (``height / width``) describe level ``i``; level ``i``
    has ``len(sizes[i]) * len(aspect_ratios[i])`` anchors per location. The defaults are the
    FPN paper's RPN: sizes 32..512 on P2..P6, ratios 1:2, 1:1, 2:1.

    forward(image_size, feature_maps) -> Tensor[sum_i(h_i * w_i * A_i), 4], XYXY pixels of the
    padded image, shared by every image of the batch. The result is a fresh tensor; grid
    anchors are cached per (image size, feature sizes, dtype, device).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = FPN_SIZES,
        aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS,
    ) -> None:
        super().__init__()
        if not all(isinstance(s, Sequence) for s in sizes) or not all(isinstance(r, Sequence) for r in aspect_ratios):
            raise TypeError("sizes and aspect_ratios must be one tuple per level, e.g. ((32,), (64,)) and ((0.5, 1.0, 2.0),) * 2")
        if len(sizes) == 0 or len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"sizes and aspect_ratios need one entry per level; got {len(sizes)} and {len(aspect_ratios)} levels"
            )
        for i, (level_sizes, ratios) in enumerate(zip(sizes, aspect_ratios)):
            if len(level_sizes) == 0 or any(not s > 0 for s in level_sizes):
                raise ValueError(f"sizes[{i}] must be positive numbers, got {tuple(level_sizes)}")
            if len(ratios) == 0 or any(not r > 0 for r in ratios):
                raise ValueError(f"aspect_ratios[{i}] must be positive numbers (height / width), got {tuple(ratios)}")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self._cell_anchors = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]
        self._cell_cache: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        self._grid_cache: dict[tuple, list[Tensor]] = {}

    def num_anchors_per_location(self) -> list[int]:
        """``A_i`` for each level: ``len(sizes[i]) * len(aspect_ratios[i])``."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def cell_anchors(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> list[Tensor]:
        """Zero-centred anchors per level, Tensor[A_i, 4] each, in ``dtype`` on ``device`` (cached)."""
        key = (dtype, torch.device(device))
        if key not in self._cell_cache:
            self._cell_cache[key] = [c.to(dtype=dtype, device=device) for c in self._cell_anchors]
        return self._cell_cache[key]

    def anchors_per_level(
        self, image_size: tuple[int, int], feature_maps: Sequence[Tensor] | Mapping[str, Tensor]
    ) -> list[Tensor]:
        """Anchors of each level, Tensor[h_i * w_i * A_i, 4] each, XYXY pixels of the padded image.

        ``image_size`` is the padded batch's ``(H, W)``; ``feature_maps`` are the pyramid's
        maps (only their dtype, device and last two sizes are used). The tensors are
        shared with the cache: do not modify them in place.
        """
        maps = list(feature_maps.values()) if isinstance(feature_maps, Mapping) else list(feature_maps)
        grid_sizes = self.check_inputs(image_size, maps)
        dtype, device = maps[0].dtype, maps[0].device
        key = (tuple(image_size), tuple(grid_sizes), dtype, device)
        if key not in self._grid_cache:
            if len(self._grid_cache) >= CACHE_SIZE:
                self._grid_cache.pop(next(iter(self._grid_cache)))
            strides = [(image_size[0] // h, image_size[1] // w) for h, w in grid_sizes]
            cells = self.cell_anchors(dtype, device)
            self._grid_cache[key] = [grid_anchors(c, g, s) for c, g, s in zip(cells, grid_sizes, strides)]
        return list(self._grid_cache[key])

    def forward(
        self, image_size: tuple[int, int], feature_maps: Sequence[Tensor] | Mapping[str, Tensor]
    ) -> Tensor:
        """All anchors of a padded batch, level by level: Tensor[sum_i(h_i * w_i * A_i), 4], XYXY pixels."""
        return torch.cat(self.anchors_per_level(image_size, feature_maps))

    def check_inputs(self, image_size: tuple[int, int], maps: list[Tensor]) -> list[tuple[int, int]]:
        """Raise unless there is one map per level, each no larger than the image; return their ``(h, w)``."""
        if len(image_size) != 2 or any(not isinstance(s, int) or s < 1 for s in image_size):
            raise ValueError(f"image_size must be the padded batch's (height, width) as two positive ints, got {image_size}")
        if len(maps) != len(self.sizes):
            raise ValueError(
                f"feature_maps has {len(maps)} levels but the anchor generator was built for {len(self.sizes)} "
                "(one entry of sizes and aspect_ratios per level)"
            )
        grid_sizes = []
        for i, x in enumerate(maps):
            if not isinstance(x, Tensor) or x.ndim < 2:
                raise TypeError(f"feature_maps[{i}] must be a Tensor[..., h, w], got {type(x).__name__}")
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if not (1 <= h <= image_size[0] and 1 <= w <= image_size[1]):
                raise ValueError(f"feature_maps[{i}] is {h}x{w}, which does not fit in an image of {image_size}")
            grid_sizes.append((h, w))
        return grid_sizes
