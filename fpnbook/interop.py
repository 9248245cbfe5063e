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
import os
from collections.abc import Mapping
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

from .anchors import ASPECT_RATIOS, AnchorGenerator
from .backbone import TORCHVISION_CHANNELS, TorchvisionBackbone, group_norm_groups
from .files import load_torch_file
from .fpn import FPN, BackboneWithFPN, LastLevelMaxPool, LastLevelP6P7
from .images import IMAGENET_MEAN, IMAGENET_STD
from .poolers import MultiScaleRoIAlign
from .rcnn import BOX_POOL_SIZE, MASK_POOL_SIZE, FasterRCNN, MaskRCNN
from .roi_heads import BoxPredictor, MaskHead, MaskPredictor, RoIHeads, TwoMLPHead
from .retinanet import RetinaNet, RetinaNetHead
from .rpn import RegionProposalNetwork, RPNHead

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


# ---------------------------------------------------------------- from torchvision's published detectors
#
# torchvision's ``retinanet_resnet50_fpn``, ``fasterrcnn_resnet50_fpn`` and
# ``maskrcnn_resnet50_fpn`` (the v1 models) become the book's models with the same weights.
# fpnbook never downloads: a reader with internet gets the COCO-trained files with
#     torchvision.models.get_weight("FasterRCNN_ResNet50_FPN_Weights.COCO_V1").get_state_dict()
# (cached under ``torch.hub.get_dir()``; torch.save the result to keep a file), and passes
# the model, the state dict or the file here. Those weights are published by torchvision
# under its BSD-3-Clause licence, trained on COCO (whose images carry their own licences).

TORCHVISION_BUILDERS = {
    "retinanet": "retinanet_resnet50_fpn",
    "faster_rcnn": "fasterrcnn_resnet50_fpn",
    "mask_rcnn": "maskrcnn_resnet50_fpn",
}


def _settings_must_match(pairs: list[tuple[str, object, object]]) -> None:
    """Raise one ValueError naming every torchvision setting fpnbook's model would not reproduce."""
    differ = [f"{name}: torchvision {theirs!r}, fpnbook {ours!r}" for name, theirs, ours in pairs if theirs != ours]
    if differ:
        raise ValueError("fpnbook cannot reproduce this torchvision model's settings: " + "; ".join(differ))


def _body_from_torchvision(theirs_body: nn.Module) -> TorchvisionBackbone:
    """A frozen-BN ResNet-50 (C2..C5) with the weights of torchvision's detection body.

    The published models use FrozenBatchNorm2d; a model built with ``weights=None`` has
    BatchNorm2d, whose running statistics become the frozen ones (equal in eval mode).
    """
    ours = TorchvisionBackbone("resnet50", norm="frozen_bn")
    state = {k: v for k, v in theirs_body.state_dict().items() if not k.endswith("num_batches_tracked")}
    try:
        ours.body.load_state_dict(state)
    except RuntimeError as error:  # missing keys or other sizes: not a ResNet-50
        raise ValueError(f"the torchvision body is not a ResNet-50's: {error}") from error
    return ours


def _backbone_from_torchvision(theirs: nn.Module, retinanet: bool) -> BackboneWithFPN:
    body_names = ("c3", "c4", "c5") if retinanet else ("c2", "c3", "c4", "c5")
    body = _body_from_torchvision(theirs.backbone.body)
    their_fpn, channels = theirs.backbone.fpn, theirs.backbone.out_channels
    in_channels = [TORCHVISION_CHANNELS["resnet50"][int(n[1]) - 2] for n in body_names]
    extra = their_fpn.extra_blocks
    if retinanet:
        p6 = getattr(extra, "p6", None)
        if p6 is None:
            raise ValueError("expected RetinaNet's P6/P7 extra blocks in the torchvision FPN")
        extra = LastLevelP6P7(p6.in_channels, channels, use_p5=bool(extra.use_P5))
    else:
        extra = LastLevelMaxPool()
    fpn = FPN(in_channels, channels, extra)
    load_torchvision_fpn(fpn, their_fpn)
    return BackboneWithFPN(body, fpn, in_names=body_names)


def _check_transform(theirs: nn.Module) -> None:
    transform = theirs.transform
    _settings_must_match([
        ("image_mean", [round(v, 6) for v in transform.image_mean], [round(v, 6) for v in IMAGENET_MEAN]),
        ("image_std", [round(v, 6) for v in transform.image_std], [round(v, 6) for v in IMAGENET_STD]),
        ("size_divisible", transform.size_divisible, 32),
    ])


def _retinanet_from_torchvision(theirs: nn.Module) -> RetinaNet:
    head = theirs.head
    norm = "gn" if any(isinstance(m, nn.GroupNorm) for m in head.modules()) else None
    backbone = _backbone_from_torchvision(theirs, retinanet=True)
    generator = AnchorGenerator(theirs.anchor_generator.sizes, theirs.anchor_generator.aspect_ratios)
    num_anchors = head.classification_head.num_anchors
    num_classes = head.classification_head.num_classes - 1  # torchvision counts the unused background channel
    ours = RetinaNet(
        backbone, num_classes, generator, fg_iou_thresh=theirs.proposal_matcher.high_threshold,
        bg_iou_thresh=theirs.proposal_matcher.low_threshold, score_thresh=theirs.score_thresh,
        topk_candidates=theirs.topk_candidates, nms_thresh=theirs.nms_thresh,
        detections_per_img=theirs.detections_per_img, head_norm=norm,
    )
    _settings_must_match([("head convs", len(head.classification_head.conv), len(ours.head.cls_subnet)),
                          ("group norm groups", [m.num_groups for m in head.modules() if isinstance(m, nn.GroupNorm)][:1],
                           [m.num_groups for m in ours.head.modules() if isinstance(m, nn.GroupNorm)][:1])])
    inverse = {retinanet_head_key(k): k for k in ours.head.state_dict()}
    state = {}
    for key, value in head.state_dict().items():
        if key not in inverse:
            raise ValueError(f"unexpected key in torchvision's RetinaNet head: {key!r}")
        if key.startswith("classification_head.cls_logits."):  # drop channel 0, the background
            value = value.view(num_anchors, num_classes + 1, *value.shape[1:])[:, 1:].flatten(0, 1)
        state[inverse[key]] = value.clone()
    ours.head.load_state_dict(state)
    return ours


def _rcnn_from_torchvision(theirs: nn.Module) -> FasterRCNN:
    rpn, heads = theirs.rpn, theirs.roi_heads
    if len(rpn.head.conv) != 1 or not isinstance(heads.box_head, TorchvisionTwoMLPHead):
        raise ValueError("only the v1 models are supported (one-conv RPN head, two-fc box head): "
                         "the *_resnet50_fpn_v2 models' conv heads have no fpnbook twin")
    backbone = _backbone_from_torchvision(theirs, retinanet=False)
    _settings_must_match([
        ("rpn aspect ratios", [tuple(r) for r in rpn.anchor_generator.aspect_ratios],
         [tuple(ASPECT_RATIOS)] * len(rpn.anchor_generator.sizes)),
        ("rpn box coder weights", tuple(rpn.box_coder.weights), (1.0, 1.0, 1.0, 1.0)),
        ("box coder weights", tuple(heads.box_coder.weights), (10.0, 10.0, 5.0, 5.0)),
        ("pooler sampling ratio", heads.box_roi_pool.sampling_ratio, 2),
        ("box pool size", tuple(heads.box_roi_pool.output_size), (BOX_POOL_SIZE, BOX_POOL_SIZE)),
    ])
    generator = AnchorGenerator(rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios)
    our_rpn = RegionProposalNetwork(
        generator, RPNHead(backbone.out_channels, rpn.head.cls_logits.out_channels),
        fg_iou_thresh=rpn.proposal_matcher.high_threshold, bg_iou_thresh=rpn.proposal_matcher.low_threshold,
        batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        positive_fraction=rpn.fg_bg_sampler.positive_fraction,
        pre_nms_top_n=dict(rpn._pre_nms_top_n), post_nms_top_n=dict(rpn._post_nms_top_n),
        nms_thresh=rpn.nms_thresh, min_size=rpn.min_size, score_thresh=rpn.score_thresh,
    )
    our_rpn.head.conv.load_state_dict(rpn.head.conv[0][0].state_dict())
    our_rpn.head.objectness.load_state_dict(rpn.head.cls_logits.state_dict())
    our_rpn.head.deltas.load_state_dict(rpn.head.bbox_pred.state_dict())
    names = FasterRCNN.roi_names(list(backbone.names))
    pool = MultiScaleRoIAlign(names, BOX_POOL_SIZE, 2, canonical_scale=224, canonical_level=4)
    box_head = TwoMLPHead(heads.box_head.fc6.in_features, heads.box_head.fc6.out_features)
    box_head.load_state_dict(heads.box_head.state_dict())
    box_predictor = BoxPredictor(heads.box_predictor.cls_score.in_features, heads.box_predictor.cls_score.out_features)
    box_predictor.load_state_dict(heads.box_predictor.state_dict())
    mask = {}
    if heads.has_mask():
        mask = _mask_branch_from_torchvision(heads, names, backbone.out_channels)
    our_heads = RoIHeads(
        pool, box_head, box_predictor, fg_iou_thresh=heads.proposal_matcher.high_threshold,
        bg_iou_thresh=heads.proposal_matcher.low_threshold, batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        positive_fraction=heads.fg_bg_sampler.positive_fraction, score_thresh=heads.score_thresh,
        nms_thresh=heads.nms_thresh, detections_per_img=heads.detections_per_img, **mask,
    )
    model_class = MaskRCNN if mask else FasterRCNN
    return model_class(backbone, rpn=our_rpn, roi_heads=our_heads)


def _mask_branch_from_torchvision(heads: nn.Module, names: list[str], channels: int) -> dict[str, nn.Module]:
    convs = [m for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    if any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in heads.mask_head.modules()):
        raise ValueError("only the v1 mask head (convs without normalisation) is supported")
    mask_head = MaskHead(channels, [c.out_channels for c in convs])
    for ours, conv in zip([m for m in mask_head if isinstance(m, nn.Conv2d)], convs):
        ours.load_state_dict(conv.state_dict())
    predictor = heads.mask_predictor
    mask_predictor = MaskPredictor(predictor.conv5_mask.in_channels, predictor.conv5_mask.out_channels,
                                   predictor.mask_fcn_logits.out_channels)
    mask_predictor.load_state_dict(predictor.state_dict())
    pool = MultiScaleRoIAlign(names, MASK_POOL_SIZE, 2, canonical_scale=224, canonical_level=4)
    return dict(mask_roi_pool=pool, mask_head=mask_head, mask_predictor=mask_predictor)


def torchvision_detector(kind: str, weights: Mapping[str, Tensor] | str | os.PathLike) -> nn.Module:
    """torchvision's v1 ``*_resnet50_fpn`` for ``kind`` with ``weights`` (a state dict or a file of one).

    The class count is read from the weights, so COCO's files (91 with the background) and
    fine-tuned ones both load. Nothing is downloaded: ``weights=None`` everywhere.
    """
    if kind not in TORCHVISION_BUILDERS:
        raise ValueError(f"kind must be one of {tuple(TORCHVISION_BUILDERS)}, got {kind!r}")
    if isinstance(weights, (str, os.PathLike)):
        weights = load_torch_file(weights, "torchvision detector weights")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a state dict or a path to one, got {type(weights).__name__}")
    key = "head.classification_head.cls_logits.bias" if kind == "retinanet" else "roi_heads.box_predictor.cls_score.bias"
    if key not in weights:
        raise ValueError(f"these weights are not torchvision's {TORCHVISION_BUILDERS[kind]}: no {key!r}")
    logits = int(weights[key].numel())
    anchors = 9  # torchvision's RetinaNet: 3 scales x 3 aspect ratios per location
    num_classes = logits // anchors if kind == "retinanet" else logits
    builder = getattr(torchvision.models.detection, TORCHVISION_BUILDERS[kind])
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"the weights do not fit torchvision's {TORCHVISION_BUILDERS[kind]}: {error}") from error
    return model


def from_torchvision(model: nn.Module | Mapping[str, Tensor] | str | os.PathLike, kind: str | None = None) -> nn.Module:
    """fpnbook's twin of torchvision's RetinaNet, Faster R-CNN or Mask R-CNN (ResNet-50 FPN, v1), same weights.

    ``model``: a torchvision ``RetinaNet``/``FasterRCNN``/``MaskRCNN`` built by
    ``retinanet_resnet50_fpn``, ``fasterrcnn_resnet50_fpn`` or ``maskrcnn_resnet50_fpn``; or
    such a model's state dict, or a file of one, with ``kind`` (``"retinanet"``,
    ``"faster_rcnn"``, ``"mask_rcnn"``). The v2 builders' R-CNN heads (convs with norms) have
    no twin and are refused; ``retinanet_resnet50_fpn_v2`` converts (GroupNorm head, P6 from
    C5) but trains with L1 where torchvision's v2 uses GIoU.

    The twin has a frozen-BN ResNet-50, torchvision's anchors, thresholds and counts, and
    K = torchvision's ``num_classes - 1`` (labels keep torchvision's numbers: for COCO
    weights, label k is COCO category id k). fpnbook models do not resize: give the twin
    what torchvision's transform gives its model (:func:`torchvision_resize`), and scale the
    boxes back with :func:`scale_boxes`; it then returns torchvision's detections.
    """
    if not isinstance(model, nn.Module):
        if kind is None:
            raise ValueError("kind ('retinanet', 'faster_rcnn' or 'mask_rcnn') is needed to read a state dict or file")
        model = torchvision_detector(kind, model)
    if not isinstance(model, (TorchvisionRetinaNet, TorchvisionFasterRCNN)):
        raise TypeError(f"expected a torchvision RetinaNet, FasterRCNN or MaskRCNN, got {type(model).__name__}")
    _check_transform(model)
    ours = _retinanet_from_torchvision(model) if isinstance(model, TorchvisionRetinaNet) else _rcnn_from_torchvision(model)
    return ours.train(model.training)


def torchvision_resize(image: Tensor, min_size: int = 800, max_size: int = 1333) -> tuple[Tensor, float]:
    """Resize a float [3, H, W] image as torchvision's detection transform does; returns (image, scale).

    The shorter side becomes ``min_size`` unless the longer would pass ``max_size``
    (bilinear, ``recompute_scale_factor=True``, as ``GeneralizedRCNNTransform``), so an
    fpnbook twin from :func:`from_torchvision` sees exactly what torchvision's model sees.
    """
    from torchvision.models.detection.transform import _resize_image_and_masks

    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a float Tensor[3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    resized, _ = _resize_image_and_masks(image, float(min_size), float(max_size), None)
    return resized, resized.shape[-1] / image.shape[-1]


def scale_boxes(boxes: Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Boxes [N, 4] XYXY on a resized image -> the original image's pixels (torchvision's ``resize_boxes``)."""
    from torchvision.models.detection.transform import resize_boxes

    return resize_boxes(boxes, list(resized_size), list(original_size))


# Class-specific layers: their shapes follow K, so fine-tuning on other classes starts them afresh.
CLASS_SPECIFIC = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.", "head.cls_logits.")


def init_from_torchvision(model: nn.Module, weights: Mapping[str, Tensor] | str | os.PathLike, kind: str) -> list[str]:
    """Start ``model`` from torchvision's ``kind`` weights for fine-tuning; returns the parameters started afresh.

    ``model`` is built with ``ModelConfig(kind=kind, layout="torchvision", num_classes=K)``
    for the reader's K. Every weight is copied from :func:`from_torchvision`'s twin except the
    class-specific predictors when K differs from the weights' (they keep their fresh
    initialisation). The stem and ``layer1`` stay frozen as ``build`` made them
    (``models.TORCHVISION_FROZEN``), as torchvision does when it fine-tunes.
    """
    twin = from_torchvision(weights, kind).state_dict()
    ours = model.state_dict()
    differ = [k for k in ours if k not in twin or twin[k].shape != ours[k].shape]
    foreign = [k for k in differ if not k.startswith(CLASS_SPECIFIC)] + [k for k in twin if k not in ours]
    if foreign:
        raise ValueError(f"the model is not torchvision's {TORCHVISION_BUILDERS[kind]} layout (build it with "
                         f"ModelConfig(kind={kind!r}, layout='torchvision')): {foreign[:3]} do not match")
    model.load_state_dict({k: v for k, v in twin.items() if k not in differ}, strict=False)
    return differ
