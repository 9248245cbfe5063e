"""Feature Pyramid Network (Lin et al. 2017): strong features at every scale.

The backbone's maps C2..C5 go from fine and semantically weak (C2, stride 4) to
coarse and strong (C5, stride 32). The FPN gives every level the strong
semantics of the top: a 1x1 *lateral* conv brings each Ck to ``out_channels``
channels, a *top-down* pathway upsamples the coarser merged map by 2 (nearest
neighbour) and adds it, and a 3x3 *smoothing* conv removes the aliasing of the
upsampling:

    M5 = lateral(C5)                        P5 = smooth(M5)
    Mk = lateral(Ck) + upsample(M(k+1))     Pk = smooth(Mk)     for k = 4, 3, 2

Pk has stride ``2**k``. Extra blocks add coarser levels on top: the RPN's P6
(:class:`LastLevelMaxPool`) or RetinaNet's P6 and P7 (:class:`LastLevelP6P7`).

Maps travel as ordered dicts, fine to coarse. Input names ``"ck"`` become ``"pk"``;
other names are kept as they are, as ``torchvision.ops.FeaturePyramidNetwork``
does (its extra levels are then named ``"pool"``, or ``"p6"`` and ``"p7"``).
Numerically this module equals torchvision's given the same weights; our
submodules are named ``lateral``/``smooth`` rather than ``inner_blocks``/``layer_blocks``,
and :func:`fpnbook.interop.load_torchvision_fpn` maps between the two.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .timing import stage


def level_of(name: str) -> int | None:
    """The pyramid level ``k`` of a map named ``"ck"`` or ``"pk"`` (stride ``2**k``), else None."""
    match = re.fullmatch(r"[cp](\d+)", name)
    return int(match.group(1)) if match else None


def pyramid_name(name: str) -> str:
    """The FPN output name for an input map: ``"c3"`` -> ``"p3"``; any other name is kept."""
    level = level_of(name)
    return f"p{level}" if level is not None and name.startswith("c") else name


def name_above(name: str, steps: int, fallback: str) -> str:
    """The name of the level ``steps`` above ``"pk"``: ``"p(k+steps)"``; ``fallback`` when ``name`` has no level."""
    level = level_of(name)
    return f"p{level + steps}" if level is not None else fallback


def init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    # torchvision's (and Detectron's) FPN initialisation, so both start alike.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class LastLevelMaxPool(nn.Module):
    """One extra level for the RPN: P6 = P5 subsampled by 2 (``max_pool2d`` with kernel 1, stride 2).

    P6 has stride 64 and ``ceil(H5 / 2) x ceil(W5 / 2)`` pixels; it costs nothing to
    compute and gives the largest anchors (512 px) a home.
    """

    num_levels = 1

    def output_names(self, last_name: str) -> list[str]:
        return [name_above(last_name, 1, "pool")]

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)
        return results + [p6], names + self.output_names(names[-1])


class LastLevelP6P7(nn.Module):
    """RetinaNet's two extra levels: P6 = conv3x3/2(P5 or C5), P7 = conv3x3/2(relu(P6)).

    ``use_p5=True`` feeds P5 (then ``in_channels`` must equal the FPN's ``out_channels``),
    as torchvision's RetinaNet does; ``use_p5=False`` feeds C5 (``in_channels`` = C5's
    channels), as the focal loss paper does. torchvision decides by
    ``in_channels == out_channels``; here it is said out loud.
    """

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, use_p5: bool = True) -> None:
        super().__init__()
        if use_p5 and in_channels != out_channels:
            raise ValueError(
                f"use_p5=True feeds P5 to P6, so in_channels ({in_channels}) must equal out_channels ({out_channels})"
            )
        self.use_p5 = use_p5
        self.in_channels = in_channels
        self.p6 = init_conv(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1))
        self.p7 = init_conv(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))

    def output_names(self, last_name: str) -> list[str]:
        return [name_above(last_name, 1, "p6"), name_above(last_name, 2, "p7")]

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1] if self.use_p5 else inputs[-1])
        p7 = self.p7(F.relu(p6))
        return results + [p6, p7], names + self.output_names(names[-1])


class FPN(nn.Module):
    """Feature Pyramid Network over maps ordered fine to coarse, like ``torchvision.ops.FeaturePyramidNetwork``.

    ``in_channels_list[i]``: channels of the i-th input map; ``out_channels``: channels of
    every output map (256 in the paper). ``extra_blocks``: None, :class:`LastLevelMaxPool`
    or :class:`LastLevelP6P7`.

    Two switches remove one pathway each, for the paper's Table 1 ablations (both on by
    default, the FPN): ``top_down=False`` is row (d), "bottom-up pyramid": each level is
    its own lateral 1x1 conv and 3x3 conv, with nothing from the coarser levels;
    ``lateral=False`` is row (e), "top-down, no lateral": only the coarsest map enters
    (through its 1x1 conv) and every finer level is the upsampled level above it, before
    its 3x3 conv. torchvision's ``FeaturePyramidNetwork`` has neither switch.

    forward: ordered dict ``{name_i: Tensor[B, in_channels_list[i], H_i, W_i]}`` with each
    map half the size of the one before (rounded either way) -> ordered dict
    ``{pyramid_name(name_i): Tensor[B, out_channels, H_i, W_i]}`` plus the extra levels.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: LastLevelMaxPool | LastLevelP6P7 | None = None,
        *,
        top_down: bool = True,
        lateral: bool = True,
    ) -> None:
        super().__init__()
        def positive_int(c) -> bool:
            return isinstance(c, int) and not isinstance(c, bool) and c >= 1

        if isinstance(in_channels_list, (str, bytes)) or len(in_channels_list) == 0 \
                or not all(positive_int(c) for c in in_channels_list):
            raise ValueError(f"in_channels_list must be a non-empty list of positive ints, got {in_channels_list!r}")
        if not positive_int(out_channels):
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        if isinstance(extra_blocks, LastLevelP6P7):
            expected = out_channels if extra_blocks.use_p5 else in_channels_list[-1]
            if extra_blocks.in_channels != expected:
                source = "P5" if extra_blocks.use_p5 else "the last input map"
                raise ValueError(f"extra_blocks reads {source} with {expected} channels, built for {extra_blocks.in_channels}")
        self.in_channels_list = [int(c) for c in in_channels_list]
        self.out_channels = int(out_channels)
        self.lateral = nn.ModuleList(init_conv(nn.Conv2d(c, out_channels, 1)) for c in self.in_channels_list)
        self.smooth = nn.ModuleList(
            init_conv(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in self.in_channels_list
        )
        self.extra_blocks = extra_blocks
        if not top_down and not lateral:
            raise ValueError("an FPN needs the top-down pathway, the lateral connections, or both")
        self.top_down, self.use_lateral = bool(top_down), bool(lateral)
        if not self.use_lateral:
            # Row (e) reads only the coarsest map's 1x1 conv. The others were built (and drew
            # their random weights) so every other module starts as in the full FPN; they are
            # dropped so no parameter goes without a gradient (DDP requires it).
            for i in range(len(self.lateral) - 1):
                self.lateral[i] = nn.Identity()

    def output_names(self, in_names: Sequence[str]) -> list[str]:
        """Names of the output maps for input maps named ``in_names``: ``["c2", .., "c5"]`` -> ``["p2", .., "p6"]``."""
        names = [pyramid_name(n) for n in in_names]
        if self.extra_blocks is not None:
            names += self.extra_blocks.output_names(names[-1])
        return names

    def forward(self, features: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        self.check_features(features)
        in_names, maps = list(features.keys()), list(features.values())
        if not self.use_lateral:  # row (e): only the coarsest map enters
            laterals = [None] * (len(maps) - 1) + [self.lateral[-1](maps[-1])]
        else:
            laterals = [conv(x) for conv, x in zip(self.lateral, maps)]
        if not self.top_down:  # row (d): every level on its own
            merged = laterals
        else:
            # Top-down: start from the coarsest map; upsample to the exact size of the next
            # finer one (not just x2) so that odd sizes, rounded up by strided convs, still fit.
            merged = [laterals[-1]]
            for lateral, x in zip(reversed(laterals[:-1]), reversed(maps[:-1])):
                top_down = F.interpolate(merged[0], size=x.shape[-2:], mode="nearest")
                merged.insert(0, top_down if lateral is None else lateral + top_down)
        results = [conv(m) for conv, m in zip(self.smooth, merged)]
        names = [pyramid_name(n) for n in in_names]
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, maps, names)
        return OrderedDict(zip(names, results))

    def check_features(self, features: Mapping[str, Tensor]) -> None:
        """Raise unless ``features`` holds one [B, C_i, H_i, W_i] map per input, fine to coarse, each about half the last."""
        if not isinstance(features, Mapping):
            raise TypeError(f"features must be an ordered dict of name -> Tensor[B, C, H, W], got {type(features).__name__}")
        if len(features) != len(self.in_channels_list):
            raise ValueError(
                f"features has {len(features)} maps {list(features)}; this FPN was built for {len(self.in_channels_list)}"
            )
        previous = None
        for (name, x), channels in zip(features.items(), self.in_channels_list):
            if not isinstance(x, Tensor) or x.ndim != 4:
                shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"features[{name!r}] must be a Tensor[B, C, H, W], got {shape}")
            if x.shape[1] != channels:
                raise ValueError(f"features[{name!r}] has {x.shape[1]} channels, expected {channels} (in_channels_list)")
            if previous is not None:
                check_half_size(previous, (name, x))
            previous = (name, x)


def check_half_size(finer: tuple[str, Tensor], coarser: tuple[str, Tensor]) -> None:
    """Raise unless the coarser map is the finer one downsampled by 2 per level, rounded up or down."""
    (fine_name, fine), (coarse_name, coarse) = finer, coarser
    if fine.shape[0] != coarse.shape[0]:
        raise ValueError(f"features[{fine_name!r}] and features[{coarse_name!r}] have different batch sizes")
    fine_level, coarse_level = level_of(fine_name), level_of(coarse_name)
    steps = 1 if fine_level is None or coarse_level is None else coarse_level - fine_level
    if steps < 1:
        raise ValueError(f"features must be ordered fine to coarse; {coarse_name!r} comes after {fine_name!r}")
    factor = 2**steps
    for fine_size, coarse_size in zip(fine.shape[-2:], coarse.shape[-2:]):
        if not fine_size // factor <= coarse_size <= math.ceil(fine_size / factor):
            raise ValueError(
                f"features[{coarse_name!r}] is {list(coarse.shape[-2:])} but features[{fine_name!r}] is "
                f"{list(fine.shape[-2:])}: each level must be half the size of the one below (stride x2)"
            )


class BackboneWithFPN(nn.Module):
    """A backbone followed by an FPN: images in, pyramid out. What the RPN, RetinaNet and Mask R-CNN sit on.

    ``backbone``: any module returning an ordered dict of maps and carrying ``names``,
    ``out_channels`` and ``strides`` (e.g. ``fpnbook.backbone.ResNet``). ``in_names``:
    which of its maps feed the FPN (default all; RetinaNet uses ``("c3", "c4", "c5")``);
    their channels must equal ``fpn.in_channels_list``.

    forward: Tensor[B, 3, H, W] -> ordered dict ``{name: Tensor[B, out_channels, H / s, W / s]}``
    (rounded up) for each ``name, s`` in ``zip(names, strides)``.

    Attributes: ``out_channels`` (int), ``names`` and ``strides`` of the output maps.
    """

    def __init__(self, backbone: nn.Module, fpn: FPN, in_names: Sequence[str] | None = None) -> None:
        super().__init__()
        for attribute in ("names", "out_channels", "strides"):
            if not hasattr(backbone, attribute):
                raise TypeError(f"backbone must have a {attribute!r} attribute (see fpnbook.backbone.ResNet)")
        in_names = list(backbone.names if in_names is None else in_names)
        unknown = [n for n in in_names if n not in backbone.names]
        if unknown:
            raise ValueError(f"in_names {unknown} are not among the backbone's maps {list(backbone.names)}")
        channels = dict(zip(backbone.names, backbone.out_channels))
        strides = dict(zip(backbone.names, backbone.strides))
        if [channels[n] for n in in_names] != fpn.in_channels_list:
            raise ValueError(
                f"the backbone's maps {in_names} have {[channels[n] for n in in_names]} channels "
                f"but the FPN expects in_channels_list={fpn.in_channels_list}"
            )
        self.backbone = backbone
        self.fpn = fpn
        self.in_names = in_names
        self.names = fpn.output_names(in_names)
        num_extra = 0 if fpn.extra_blocks is None else fpn.extra_blocks.num_levels
        last = strides[in_names[-1]]
        self.strides = [strides[n] for n in in_names] + [last * 2**i for i in range(1, num_extra + 1)]
        self.out_channels = fpn.out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        with stage("backbone"):
            features = self.backbone(images)
        with stage("fpn"):
            return self.fpn(OrderedDict((n, features[n]) for n in self.in_names))
