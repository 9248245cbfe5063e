"""The one bridge to torchvision: the torchvision twin of an fpnbook module, with the same weights.

fpnbook's modules compute what torchvision's do, but name their weights for the book
(``lateral``/``smooth`` rather than ``inner_blocks``/``layer_blocks``) and count classes
the book's way. :func:`to_torchvision` builds the torchvision module that equals an
fpnbook one, weights copied over and every setting carried across, so that tests,
experiments, benchmarks and chapters compare the two through one door:

    to_torchvision(fpn)                  -> torchvision.ops.FeaturePyramidNetwork
    to_torchvision(retinanet, size)      -> torchvision.models.detection.RetinaNet
    to_torchvision(mask_rcnn, size)      -> torchvision.models.detection.MaskRCNN
    to_torchvision(faster_rcnn, size)    -> torchvision.models.detection.FasterRCNN

The detectors' twins get ``min_size = max_size = image_size`` and the book's
normalisation, so torchvision's transform does not resize square images of that size,
and the same backbone module (``copy_backbone=False``, to compare gradients) or a copy
of it (the default, to train the two side by side).

Class counts: torchvision's ``num_classes`` counts the background for every detector.
RetinaNet's logits in torchvision therefore have one extra channel (label ``k`` is
channel ``k``, channel 0 is never trained); :func:`retinanet_head_state_dict` gives it
zero weights and a bias of -1000, so its probability and its loss are exactly 0.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TorchvisionTwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead as TorchvisionRetinaNetHead

from .backbone import group_norm_groups
from .fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from .images import IMAGENET_MEAN, IMAGENET_STD
from .poolers import MultiScaleRoIAlign
from .rcnn import FasterRCNN, MaskRCNN
from .roi_heads import MaskPredictor
from .retinanet import RetinaNet, RetinaNetHead

# Logit of torchvision's unused background channel: sigmoid gives exactly 0 and so does its loss.
TORCHVISION_BACKGROUND_LOGIT = -1000.0


# ---------------------------------------------------------------- FPN


def fpn_key(key: str) -> str:
    """Our FPN state-dict key -> ``torchvision.ops.FeaturePyramidNetwork``'s.

    ``lateral.{i}.weight`` -> ``inner_blocks.{i}.0.weight``, ``smooth.{i}.bias`` ->
    ``layer_blocks.{i}.0.bias``; ``extra_blocks.p6.*`` / ``p7.*`` are named alike in both.
    """
    head, _, rest = key.partition(".")
    if head in ("lateral", "smooth"):
        index, _, param = rest.partition(".")
        block = "inner_blocks" if head == "lateral" else "layer_blocks"
        return f"{block}.{index}.0.{param}"
    return key


def load_torchvision_fpn(ours: FPN, theirs: nn.Module) -> None:
    """Copy the weights of a ``torchvision.ops.FeaturePyramidNetwork`` into ``ours`` (same sizes and extra blocks)."""
    their_state = theirs.state_dict()
    our_keys = list(ours.state_dict())
    wanted = {fpn_key(k) for k in our_keys}
    if wanted != set(their_state):
        raise ValueError(
            f"the two FPNs differ in structure: only ours {sorted(wanted - set(their_state))}, "
            f"only theirs {sorted(set(their_state) - wanted)}"
        )
    try:
        ours.load_state_dict({k: their_state[fpn_key(k)] for k in our_keys})
    except RuntimeError as error:  # a tensor of the wrong shape
        raise ValueError(f"the two FPNs differ in sizes: {error}") from error


def torchvision_fpn(ours: FPN) -> nn.Module:
    """``torchvision.ops.FeaturePyramidNetwork`` with ``ours``' weights and extra blocks."""
    from torchvision.ops import feature_pyramid_network as tv_fpn

    extra = ours.extra_blocks
    if extra is None:
        their_extra = None
    elif isinstance(extra, LastLevelMaxPool):
        their_extra = tv_fpn.LastLevelMaxPool()
    elif isinstance(extra, LastLevelP6P7):
        their_extra = tv_fpn.LastLevelP6P7(extra.in_channels, ours.out_channels)
    else:
        raise TypeError(f"no torchvision twin for extra blocks {type(extra).__name__}")
    theirs = torchvision.ops.FeaturePyramidNetwork(ours.in_channels_list, ours.out_channels, their_extra)
    theirs.load_state_dict({fpn_key(k): v.clone() for k, v in ours.state_dict().items()})
    return theirs


# ---------------------------------------------------------------- RetinaNet


def retinanet_head_key(key: str) -> str:
    """Our RetinaNet head's state-dict key -> torchvision ``RetinaNetHead``'s.

    ``cls_subnet.{i}.{j}.*`` -> ``classification_head.conv.{i}.{j}.*`` (j = 0 conv, 1 GroupNorm),
    ``cls_logits.*`` -> ``classification_head.cls_logits.*``, ``box_subnet.{i}.{j}.*`` ->
    ``regression_head.conv.{i}.{j}.*``, ``bbox_pred.*`` -> ``regression_head.bbox_reg.*``.
    """
    module, _, rest = key.partition(".")
    renames = {
        "cls_subnet": "classification_head.conv",
        "cls_logits": "classification_head.cls_logits",
        "box_subnet": "regression_head.conv",
        "bbox_pred": "regression_head.bbox_reg",
    }
    if module not in renames:
        raise ValueError(f"not a RetinaNetHead key: {key!r}")
    return f"{renames[module]}.{rest}"


def retinanet_head_state_dict(head: RetinaNetHead) -> dict[str, Tensor]:
    """Our head's weights for torchvision's ``RetinaNetHead(in_channels, A, K + 1)``.

    torchvision scores label ``k`` with channel ``k`` and never trains channel 0
    (background); we score it with channel ``k - 1``. The extra channel gets zero weights
    and a bias of -1000, so its probability and its focal loss are exactly 0 and the two
    heads give the same detections and the same losses.
    """
    state = {}
    for key, value in head.state_dict().items():
        if key.startswith("cls_logits."):
            per_anchor = value.view(head.num_anchors, head.num_classes, *value.shape[1:])
            background = torch.zeros_like(per_anchor[:, :1])
            if key.endswith("bias"):
                background.fill_(TORCHVISION_BACKGROUND_LOGIT)
            value = torch.cat([background, per_anchor], dim=1).flatten(0, 1)
        state[retinanet_head_key(key)] = value.clone()
    return state


def torchvision_retinanet(ours: RetinaNet, image_size: int | tuple[int, int], copy_backbone: bool = True) -> nn.Module:
    """torchvision's ``RetinaNet`` with ``ours``' backbone, anchors, head weights and settings."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    backbone = copy.deepcopy(ours.backbone) if copy_backbone else ours.backbone
    channels, anchors = ours.backbone.out_channels, ours.head.num_anchors
    head = None
    if any(isinstance(m, nn.GroupNorm) for m in ours.head.modules()):
        head = TorchvisionRetinaNetHead(channels, anchors, ours.num_classes + 1,
                                        norm_layer=partial(nn.GroupNorm, group_norm_groups(channels)))
    theirs = TorchvisionRetinaNet(
        backbone, ours.num_classes + 1,  # torchvision counts the background
        min_size=min(size), max_size=max(size), image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        anchor_generator=TorchvisionAnchorGenerator(ours.anchor_generator.sizes, ours.anchor_generator.aspect_ratios),
        head=head, score_thresh=ours.score_thresh, nms_thresh=ours.nms_thresh,
        detections_per_img=ours.detections_per_img, fg_iou_thresh=ours.matcher.high, bg_iou_thresh=ours.matcher.low,
        topk_candidates=ours.topk_candidates,
    )
    theirs.head.load_state_dict(retinanet_head_state_dict(ours.head))
    return theirs


# ---------------------------------------------------------------- Faster / Mask R-CNN


def _torchvision_pooler(ours: MultiScaleRoIAlign) -> nn.Module:
    return torchvision.ops.MultiScaleRoIAlign(ours.featmap_names, ours.output_size, ours.sampling_ratio,
                                              canonical_scale=ours.canonical_scale,
                                              canonical_level=ours.canonical_level)


def torchvision_rcnn(ours: FasterRCNN, image_size: int | tuple[int, int], copy_backbone: bool = True) -> nn.Module:
    """torchvision's ``FasterRCNN`` or ``MaskRCNN`` with ``ours``' weights, anchors, poolers and counts.

    torchvision's own modules do the work (RPN, RoI heads, C++ RoIAlign); the weights and
    the numbers (proposal counts before and after NMS in training and testing, sampled
    anchors and RoIs, thresholds, detections per image) come from ``ours``.
    """
    if not isinstance(ours, FasterRCNN):
        raise TypeError(f"expected an fpnbook FasterRCNN or MaskRCNN, got {type(ours).__name__}")
    if ours.roi_heads.has_mask() and not isinstance(ours.roi_heads.mask_predictor, MaskPredictor):
        raise TypeError(f"no torchvision twin for {type(ours).__name__}: torchvision has no weight transfer")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    backbone = copy.deepcopy(ours.backbone) if copy_backbone else ours.backbone
    channels, rpn, heads = ours.backbone.out_channels, ours.rpn, ours.roi_heads
    rpn_head = tv_rpn.RPNHead(channels, rpn.head.num_anchors)
    rpn_head.conv[0][0].load_state_dict(rpn.head.conv.state_dict())
    rpn_head.cls_logits.load_state_dict(rpn.head.objectness.state_dict())
    rpn_head.bbox_pred.load_state_dict(rpn.head.deltas.state_dict())
    box_head = TorchvisionTwoMLPHead(heads.box_head.fc6.in_features, heads.box_head.fc6.out_features)
    box_head.load_state_dict(heads.box_head.state_dict())
    num_logits = heads.box_predictor.cls_score.out_features  # K + 1, torchvision's num_classes
    box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_logits)
    box_predictor.load_state_dict(heads.box_predictor.state_dict())
    settings = dict(
        min_size=min(size), max_size=max(size), image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        rpn_anchor_generator=TorchvisionAnchorGenerator(rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios),
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_counts["training"],
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_counts["testing"],
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_counts["training"],
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_counts["testing"],
        rpn_batch_size_per_image=rpn.sampler.batch_size_per_image, rpn_nms_thresh=rpn.nms_thresh,
        box_roi_pool=_torchvision_pooler(heads.box_roi_pool), box_head=box_head, box_predictor=box_predictor,
        box_batch_size_per_image=heads.sampler.batch_size_per_image, box_score_thresh=heads.score_thresh,
        box_nms_thresh=heads.nms_thresh, box_detections_per_img=heads.detections_per_img,
    )
    if not heads.has_mask():
        return TorchvisionFasterRCNN(backbone, **settings)
    convs = [m for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    mask_head = MaskRCNNHeads(channels, [c.out_channels for c in convs], 1)
    for conv, (theirs, *_) in zip(convs, mask_head):  # each of theirs is Sequential(conv, relu)
        theirs.load_state_dict(conv.state_dict())
    mask_predictor = MaskRCNNPredictor(convs[-1].out_channels, heads.mask_predictor.conv5_mask.out_channels,
                                       heads.mask_predictor.mask_fcn_logits.out_channels)
    mask_predictor.load_state_dict(heads.mask_predictor.state_dict())
    return TorchvisionMaskRCNN(backbone, mask_roi_pool=_torchvision_pooler(heads.mask_roi_pool), mask_head=mask_head,
                               mask_predictor=mask_predictor, **settings)


def to_torchvision(module: nn.Module, image_size: int | tuple[int, int] | None = None,
                   copy_backbone: bool = True) -> nn.Module:
    """The torchvision twin of an fpnbook :class:`~fpnbook.fpn.FPN`, RetinaNet, Faster or Mask R-CNN.

    Detectors need ``image_size`` (an int for square images, or ``(height, width)``):
    torchvision's transform resizes to it, which for images of that size is the identity.
    """
    if isinstance(module, FPN):
        return torchvision_fpn(module)
    if image_size is None:
        raise ValueError(f"image_size is needed for the torchvision twin of a {type(module).__name__}")
    if isinstance(module, RetinaNet):
        return torchvision_retinanet(module, image_size, copy_backbone)
    if isinstance(module, (FasterRCNN, MaskRCNN)):
        return torchvision_rcnn(module, image_size, copy_backbone)
    raise TypeError(f"no torchvision twin for {type(module).__name__}; expected an FPN, RetinaNet, "
                    "FasterRCNN or MaskRCNN")
