"""Backbones: an image batch in, the feature maps C2..C5 out.

A backbone turns a batch Tensor[B, 3, H, W] into an ordered dict of feature maps
``{"c2", "c3", "c4", "c5"}`` at strides 4, 8, 16, 32: pixel ``(y, x)`` of ``ck``
covers image pixels ``[2**k * y, 2**k * (y + 1))``. Every backbone here carries
``names``, ``out_channels`` and ``strides``, one entry per map, in that order.

Two kinds:

* :class:`ResNet`, a small ResNet with basic blocks whose widths and depths you
  choose; :func:`resnet_tiny` and :func:`resnet_small` are the presets the
  chapters train from scratch on a CPU.
* :class:`TorchvisionBackbone`, torchvision's ResNet-18/34/50 bodies, randomly
  initialised unless you hand it a state dict (it never downloads).

Normalisation (``norm``):

* ``"gn"``: GroupNorm, the default. Chapters train from scratch with 2-4 small
  images per batch on a CPU; BatchNorm's statistics from so few images are noisy
  and differ between training and evaluation, while GroupNorm normalises each
  image on its own and behaves the same in both modes. He et al. (2019,
  "Rethinking ImageNet Pre-training") train detectors from scratch with GN.
* ``"bn"``: BatchNorm2d; fine from scratch when batches are large.
* ``"frozen_bn"``: torchvision's FrozenBatchNorm2d, a fixed affine map whose
  statistics come from pretrained weights. From scratch it is the identity
  (mean 0, var 1, scale 1, shift 0), i.e. no normalisation at all: use it only
  when you load pretrained weights.

Images must be padded to H, W divisible by 32 first (``fpnbook.images.batch_images``
does it); the backbones raise a ValueError otherwise.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from .files import load_torch_file

NAMES = ["c2", "c3", "c4", "c5"]
STRIDES = [4, 8, 16, 32]
NORMS = ("gn", "bn", "frozen_bn")


def check_image_batch(images: Tensor, name: str = "images") -> None:
    """Raise unless ``images`` is a float Tensor[B, 3, H, W] with H and W divisible by 32."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a Tensor[B, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3, H, W], got {list(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {images.dtype}")
    height, width = images.shape[-2:]
    if height == 0 or width == 0 or height % 32 or width % 32:
        raise ValueError(
            f"{name} has H, W = {height}, {width}; strides 4..32 need H and W divisible by 32 "
            "(pad with fpnbook.images.batch_images)"
        )


def group_norm_groups(num_channels: int) -> int:
    """Groups for GroupNorm: 32 as in Wu & He (2018), fewer for narrow layers so each group keeps >= 4 channels.

    Returns the largest divisor of ``num_channels`` that is at most ``min(32, num_channels // 4)`` (at least 1).
    """
    groups = max(1, min(32, num_channels // 4))
    while num_channels % groups:
        groups -= 1
    return groups


def norm_layer(norm: str, num_channels: int) -> nn.Module:
    """A normalisation layer for ``num_channels`` channels: ``"gn"``, ``"bn"`` or ``"frozen_bn"``."""
    if norm == "gn":
        return nn.GroupNorm(group_norm_groups(num_channels), num_channels)
    if norm == "bn":
        return nn.BatchNorm2d(num_channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(num_channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the normalisation layer that follows has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut: ``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``.

    Tensor[B, in_channels, H, W] -> Tensor[B, out_channels, ceil(H / stride), ceil(W / stride)].
    The shortcut is a strided 1x1 conv when the shape changes, else the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "gn") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.norm1 = norm_layer(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.norm2 = norm_layer(norm, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: a stride-4 stem, then four stages of basic blocks giving C2..C5.

    ``depths[i]`` blocks of ``widths[i]`` channels in stage ``i``; every stage but the
    first halves the resolution in its first block. The stem is ResNet's
    (7x7 conv stride 2, norm, ReLU, 3x3 max pool stride 2).

    forward: float Tensor[B, 3, H, W], H and W divisible by 32 -> OrderedDict
    ``{"c2": [B, widths[0], H/4, W/4], "c3": [.., H/8, ..], "c4": [.., H/16, ..], "c5": [.., H/32, ..]}``.

    Attributes: ``names`` (``["c2", "c3", "c4", "c5"]``), ``out_channels`` (``list(widths)``),
    ``strides`` (``[4, 8, 16, 32]``).
    """

    def __init__(
        self,
        depths: Sequence[int] = (1, 1, 1, 1),
        widths: Sequence[int] = (32, 64, 128, 256),
        stem_width: int = 32,
        norm: str = "gn",
        block: str = "basic",
    ) -> None:
        super().__init__()
        if len(depths) != 4 or any(int(d) < 1 for d in depths):
            raise ValueError(f"depths must be four positive block counts (C2..C5), got {tuple(depths)}")
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be four positive channel counts (C2..C5), got {tuple(widths)}")
        if stem_width < 1:
            raise ValueError(f"stem_width must be positive, got {stem_width}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if block != "basic":
            raise ValueError(f"block must be 'basic' (for bottlenecks use TorchvisionBackbone('resnet50')), got {block!r}")
        self.names = list(NAMES)
        self.out_channels = [int(w) for w in widths]
        self.strides = list(STRIDES)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False),
            norm_layer(norm, stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = nn.ModuleList()
        in_channels = stem_width
        for i, (depth, width) in enumerate(zip(depths, self.out_channels)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_channels, width, stride, norm)]
            blocks += [BasicBlock(width, width, 1, norm) for _ in range(int(depth) - 1)]
            self.stages.append(nn.Sequential(*blocks))
            in_channels = width
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Each block's last norm starts at zero, so every block starts as its shortcut
        # and the signal passes unchanged through the depth (Goyal et al. 2017);
        # this helps training from scratch. Frozen BN has no trainable scale to zero.
        for m in self.modules():
            if isinstance(m, BasicBlock) and isinstance(m.norm2, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.zeros_(m.norm2.weight)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        check_image_batch(images)
        x = self.stem(images)
        features = OrderedDict()
        for name, stage in zip(self.names, self.stages):
            x = stage(x)
            features[name] = x
        return features


def resnet_tiny(norm: str = "gn") -> ResNet:
    """One basic block per stage, widths 16..128: a 256px batch of 2 runs in tens of ms on one CPU thread.

    For chapters and tests. C2..C5 have ``[16, 32, 64, 128]`` channels.
    """
    return ResNet(depths=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, norm=norm)


def resnet_small(norm: str = "gn") -> ResNet:
    """ResNet-18's layout (two basic blocks per stage) at half its width: C2..C5 have ``[32, 64, 128, 256]`` channels.

    For the experiments that train on a CPU for minutes rather than seconds.
    """
    return ResNet(depths=(2, 2, 2, 2), widths=(32, 64, 128, 256), stem_width=32, norm=norm)


# Channels of layer1..layer4 of torchvision's ResNets (bottlenecks expand by 4).
TORCHVISION_CHANNELS = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
}


class TorchvisionBackbone(nn.Module):
    """torchvision's ResNet body (stem and layer1..layer4) returning C2..C5.

    ``name``: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
    ``norm``: ``"gn"``, ``"bn"`` or ``"frozen_bn"``; ``None`` picks ``"frozen_bn"`` when
    ``weights`` are given (as torchvision's detection models do) and ``"gn"`` otherwise.
    ``weights``: ``None`` (random initialisation; nothing is ever downloaded), a state dict
    of the torchvision classification model, or a path to one saved with ``torch.save``.
    The ``fc.*`` entries may be absent; any other missing or unexpected key is a ValueError.

    forward: float Tensor[B, 3, H, W], H and W divisible by 32 -> OrderedDict
    ``{"c2", "c3", "c4", "c5"}`` at strides 4, 8, 16, 32 with ``out_channels`` channels.
    """

    def __init__(
        self,
        name: str = "resnet18",
        norm: str | None = None,
        weights: Mapping[str, Tensor] | str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if name not in TORCHVISION_CHANNELS:
            raise ValueError(f"name must be one of {tuple(TORCHVISION_CHANNELS)}, got {name!r}")
        if norm is None:
            norm = "frozen_bn" if weights is not None else "gn"
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        model = getattr(torchvision.models, name)(weights=None, norm_layer=lambda c: norm_layer(norm, c))
        if weights is not None:
            load_classification_weights(model, weights)
        return_layers = {f"layer{i}": level for i, level in enumerate(NAMES, start=1)}
        self.body = IntermediateLayerGetter(model, return_layers=return_layers)
        self.names = list(NAMES)
        self.out_channels = list(TORCHVISION_CHANNELS[name])
        self.strides = list(STRIDES)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        check_image_batch(images)
        return self.body(images)


def load_classification_weights(model: nn.Module, weights: Mapping[str, Tensor] | str | os.PathLike) -> None:
    """Load a torchvision ResNet state dict (or a path to one) into ``model``; the classifier ``fc.*`` may be absent."""
    if isinstance(weights, (str, os.PathLike)):
        weights = load_torch_file(weights, "classification weights file")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a state dict or a path to one, got {type(weights).__name__}")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise ValueError(f"weights do not fit the model: {error}") from error
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
