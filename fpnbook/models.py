"""Whole detectors from one config: RetinaNet, Faster R-CNN with FPN, Mask R-CNN, Mask^X R-CNN.

``build(ModelConfig(kind="mask_rcnn", num_classes=8))`` assembles a model out of the
chapters' parts:

==============  =====================================================================
part            module (chapter)
==============  =====================================================================
backbone        :mod:`fpnbook.backbone` (1): ResNet C2..C5, strides 4..32
pyramid         :mod:`fpnbook.fpn` (1): P2..P6 (two-stage) or P3..P7 (RetinaNet)
anchors         :mod:`fpnbook.anchors` (1): one size per level, 3 ratios (x3 scales: RetinaNet)
dense heads     :mod:`fpnbook.rpn` (1) or :mod:`fpnbook.retinanet` (2, focal loss)
RoI features    :mod:`fpnbook.poolers` / :mod:`fpnbook.ops` (3): RoIAlign per FPN level
RoI heads       :mod:`fpnbook.roi_heads` (5): 2-fc box head, 4-conv mask head
weight transfer :mod:`fpnbook.weight_transfer` (4): mask weights from box weights
==============  =====================================================================

Every model has torchvision's interface (see :mod:`fpnbook.rcnn`). ``num_classes`` here
is always K, the object classes (labels 1..K), whatever the model counts internally.
The config is plain data, so checkpoints store it and ``build`` remakes the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from .anchors import ASPECT_RATIOS, FPN_SIZES, AnchorGenerator
from .backbone import TorchvisionBackbone, resnet_small, resnet_tiny
from .fpn import FPN, BackboneWithFPN, LastLevelMaxPool, LastLevelP6P7
from .rcnn import FasterRCNN, MaskRCNN, to_mask_x
from .retinanet import RetinaNet

KINDS = ("retinanet", "faster_rcnn", "mask_rcnn", "mask_x_rcnn")
# torchvision's (and Detectron's) training counts for 800 px COCO images: ``ModelConfig(**COCO_SIZING)``.
COCO_SIZING = dict(rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000, box_batch_size_per_image=512)
BACKBONES = ("tiny", "small", "resnet18", "resnet34", "resnet50")
# "book": the parts sized for 256 px images (see the chapters). "torchvision": torchvision's
# v1 ResNet-50 FPN detectors (``*_resnet50_fpn``), part for part, so that their published
# weights (``interop.from_torchvision``) and checkpoints fine-tuned from them load through ``build``.
LAYOUTS = ("book", "torchvision")
TORCHVISION_LAYOUT = dict(backbone="resnet50", norm="frozen_bn", fpn_channels=256)
# The torchvision layout trains with the stem and layer1 frozen, as torchvision fine-tunes
# (``trainable_backbone_layers=3``); ``build`` freezes them, so a resumed run has the same trainable set.
TORCHVISION_FROZEN = ("backbone.backbone.body.conv1.", "backbone.backbone.body.bn1.", "backbone.backbone.body.layer1.")
# torchvision's RetinaNet anchors: three octave scales per level, rounded down as torchvision does.
TORCHVISION_RETINANET_SIZES = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))


@dataclasses.dataclass
class ModelConfig:
    """What to build. ``mask_classes`` and ``transfer*`` are for ``mask_x_rcnn`` only.

    The two-stage models (not RetinaNet) keep ``rpn_pre_nms_top_n_train`` proposals per
    level before NMS and ``rpn_post_nms_top_n_train`` per image after it in training, and
    sample ``box_batch_size_per_image`` RoIs per image (torchvision's argument names). The
    defaults, 600 / 300 / 128, are sized for the book's ~256 px images with 5-9 objects:
    COCO's 2000 / 2000 / 512 are for 800 px images with many more objects, and on 256 px
    images they make a training step about twice as slow (measured in
    ``benchmarks/profile_step.py``). Inference keeps 1000 / 1000, as torchvision does.
    """

    kind: str = "mask_rcnn"
    num_classes: int = 8
    backbone: str = "tiny"
    norm: str = "gn"
    fpn_channels: int = 64
    mask_classes: tuple[int, ...] | None = None
    transfer_inputs: str = "cls+box"
    transfer_kind: str = "mlp"
    transfer_mlp_branch: bool = True
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    box_batch_size_per_image: int = 128
    layout: str = "book"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"ModelConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "torchvision":
            wrong = {k: getattr(self, k) for k, v in TORCHVISION_LAYOUT.items() if getattr(self, k) != v}
            if wrong:
                raise ValueError(f"ModelConfig(layout='torchvision') is torchvision's ResNet-50 FPN detector: it needs "
                                 f"{TORCHVISION_LAYOUT}, got {wrong}")
        for name in ("fpn_channels", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "box_batch_size_per_image"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.kind not in KINDS:
            raise ValueError(f"ModelConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"ModelConfig.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise ValueError(f"ModelConfig.num_classes must be a positive int (object classes), got {self.num_classes!r}")
        if self.kind == "mask_x_rcnn":
            if not self.mask_classes:
                raise ValueError("ModelConfig.mask_classes (labels that have masks) is required for mask_x_rcnn")
            if isinstance(self.mask_classes, (str, bytes)) or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= self.num_classes for c in self.mask_classes):
                raise ValueError(f"ModelConfig.mask_classes must be labels in 1..num_classes={self.num_classes}, "
                                 f"got {self.mask_classes!r}")
            self.mask_classes = tuple(sorted(set(self.mask_classes)))
        elif self.mask_classes is not None:
            raise ValueError(f"ModelConfig.mask_classes is only for mask_x_rcnn, not {self.kind}")

    @classmethod
    def from_dict(cls, values: Mapping) -> ModelConfig:
        """A config from a dict (a checkpoint's or a JSON file's), rejecting unknown keys."""
        if not isinstance(values, Mapping):
            raise TypeError(f"a model config must be a dict, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_body(config: ModelConfig) -> nn.Module:
    """The ResNet body (C2..C5) that ``config.backbone`` names, randomly initialised."""
    if config.backbone == "tiny":
        return resnet_tiny(config.norm)
    if config.backbone == "small":
        return resnet_small(config.norm)
    return TorchvisionBackbone(config.backbone, norm=config.norm)


def build_backbone(config: ModelConfig) -> BackboneWithFPN:
    """Body + FPN for ``config``: P3..P7 for RetinaNet (P6 from C5, as in its paper), P2..P6 otherwise.

    The one place the book assembles a detector's backbone; :func:`build` and the
    ``*_tiny`` helpers below all use it.
    """
    body, channels = build_body(config), config.fpn_channels
    if config.kind == "retinanet":
        c3_to_c5 = body.out_channels[1:]
        # torchvision computes P6 from P5; the RetinaNet paper (and the book) from C5.
        from_p5 = config.layout == "torchvision"
        fpn = FPN(c3_to_c5, channels, LastLevelP6P7(channels if from_p5 else c3_to_c5[-1], channels, use_p5=from_p5))
        return BackboneWithFPN(body, fpn, in_names=("c3", "c4", "c5"))
    return BackboneWithFPN(body, FPN(body.out_channels, channels, LastLevelMaxPool()))


def _torchvision_sizes(config: ModelConfig) -> tuple[dict, dict]:
    """(two-stage sizing, mask sizing) of torchvision's v1 detectors: 800 px anchors, fc-1024, 256-channel masks."""
    if config.layout != "torchvision":
        return {}, {}
    return (dict(anchor_sizes=FPN_SIZES, canonical_scale=224, representation_size=1024),
            dict(mask_layers=(256,) * 4, mask_dim_reduced=256))


def build(config: ModelConfig) -> nn.Module:
    """The detector ``config`` describes, with fresh weights (torchvision's layout: stem and layer1 frozen)."""
    model = _build(config)
    if config.layout == "torchvision":
        for name, parameter in model.named_parameters():
            if name.startswith(TORCHVISION_FROZEN):
                parameter.requires_grad_(False)
    return model


def _build(config: ModelConfig) -> nn.Module:
    backbone = build_backbone(config)
    if config.kind == "retinanet":
        if config.layout == "torchvision":
            generator = AnchorGenerator(TORCHVISION_RETINANET_SIZES, (ASPECT_RATIOS,) * 5)
            return RetinaNet(backbone, config.num_classes, generator, detections_per_img=300)
        return RetinaNet(backbone, config.num_classes, head_norm="gn" if config.norm == "gn" else None)
    two_stage, mask = _torchvision_sizes(config)
    sizing = dict(rpn_pre_nms_top_n=dict(training=config.rpn_pre_nms_top_n_train, testing=1000),
                  rpn_post_nms_top_n=dict(training=config.rpn_post_nms_top_n_train, testing=1000),
                  box_batch_size_per_image=config.box_batch_size_per_image, **two_stage)
    if config.kind == "faster_rcnn":
        return FasterRCNN(backbone, config.num_classes, **sizing)
    if config.kind == "mask_rcnn":
        return MaskRCNN(backbone, config.num_classes, **sizing, **mask)
    model = MaskRCNN(backbone, config.num_classes, **sizing, **mask)
    return to_mask_x(model, config.mask_classes, transfer=config.transfer_inputs, kind=config.transfer_kind,
                     class_agnostic_mlp=config.transfer_mlp_branch)


# ---------------------------------------------------------------- small models for tests and chapters
#
# The backbones of :func:`build` with the heads' every argument open (``kwargs``), for
# tests and chapters that vary what a ModelConfig does not (head sizes, losses, priors).


def fpn_backbone_tiny(fpn_channels: int = 64) -> BackboneWithFPN:
    """:func:`fpnbook.backbone.resnet_tiny` + a ``fpn_channels`` FPN with P2..P6 (P6 by max-pooling P5)."""
    return build_backbone(ModelConfig(kind="mask_rcnn", fpn_channels=fpn_channels))


def faster_rcnn_tiny(num_classes: int, **kwargs) -> FasterRCNN:
    """Faster R-CNN on the tiny ResNet + FPN (64 channels), sized for 256 px images on a CPU.

    ``num_classes`` is K, the object classes; ``kwargs`` go to :class:`FasterRCNN`.
    """
    return FasterRCNN(fpn_backbone_tiny(), num_classes, **kwargs)


def mask_rcnn_tiny(num_classes: int, **kwargs) -> MaskRCNN:
    """Mask R-CNN on the tiny ResNet + FPN (64 channels), mask head 4 x 64 channels, sized for 256 px images.

    ``num_classes`` is K, the object classes; ``kwargs`` go to :class:`MaskRCNN`.
    """
    return MaskRCNN(fpn_backbone_tiny(), num_classes, **kwargs)


def retinanet_tiny(num_classes: int, out_channels: int = 64, **kwargs) -> RetinaNet:
    """RetinaNet on :func:`fpnbook.backbone.resnet_tiny` (GroupNorm) with a ``out_channels``-wide FPN, P3..P7.

    ``num_classes`` is K, the object classes. P6 is computed from C5 as in the paper. For
    tests and chapters: a training step on two 256 px images takes ~0.2 s on one CPU thread.
    ``kwargs`` go to :class:`RetinaNet`; pass ``head_norm="gn"`` to train it from scratch in
    few steps (see :class:`~fpnbook.retinanet.RetinaNetHead`).
    """
    backbone = build_backbone(ModelConfig(kind="retinanet", num_classes=num_classes, fpn_channels=out_channels))
    return RetinaNet(backbone, num_classes, **kwargs)
