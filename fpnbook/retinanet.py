"""RetinaNet (Lin et al. 2017): a one-stage detector that works because of the focal loss.

Images -> backbone + FPN (P3..P7, strides 8..128) -> at every pixel of every level
``A = 9`` anchors (3 aspect ratios x 3 scales a third of an octave apart) -> two small subnets
shared across levels: one scores each anchor for each of the ``K`` classes (sigmoids,
no background class), one regresses each anchor's box. Training labels anchors by
IoU (>= 0.5 foreground, < 0.4 background, ignored between) and sums the focal loss
over *all* labelled anchors, normalised by the number of foreground anchors.
Inference keeps the best 1000 (anchor, class) pairs per level above score 0.05,
decodes them, and runs class-wise NMS.

Inputs and outputs follow torchvision's detection models: a list of float
Tensor[3, H, W] images in 0..1 and targets ``{"boxes": [N, 4], "labels": [N]}``;
boxes are ``(x1, y1, x2, y2)`` in input-image pixels, labels are ``1..K``
(logit channel ``k - 1`` scores label ``k``). Images are normalised and padded, not resized.

Differences from torchvision's ``RetinaNet``: ``num_classes`` here is ``K``
(torchvision's counts a never-used background channel, so it is ``K + 1``; see
:func:`fpnbook.interop.retinanet_head_state_dict`), and anchors default to sizes for the book's
256 px images (:data:`ANCHOR_BASE_SIZES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import ANCHOR_BASE_SIZES, ASPECT_RATIOS, AnchorGenerator, octave_sizes
from .backbone import group_norm_groups
from .boxes import BoxCoder, box_iou, clip_boxes_to_image
from .images import batch_images, check_targets
from .losses import prior_bias, sigmoid_focal_loss
from .matching import BETWEEN_THRESHOLDS, Matcher
from .timing import stage

# Anchor base sizes on P3..P7 for the book's 256 px images. The paper puts 32..512 px
# anchors (4x the stride) on 800 px images; our objects run from 8 px to ~190 px on
# 256 px images, so we use 16..256 (2x the stride, top scale 406 px). Smaller anchors
# at stride 8 would leave gaps between neighbours (a box between two anchor centres
# would overlap none of them by 0.5); objects under ~16 px get their best anchor
# through the low-quality-match rule.
LOSSES = ("focal", "ce", "alpha_ce")


def default_anchor_generator(base_sizes: Sequence[float] = ANCHOR_BASE_SIZES) -> AnchorGenerator:
    """RetinaNet's 9 anchors per location: ratios 1:2, 1:1, 2:1 x sizes ``base * 2**(j/3)``, one base per level."""
    return AnchorGenerator(octave_sizes(base_sizes, 3), (ASPECT_RATIOS,) * len(base_sizes))


def subnet(channels: int, num_convs: int, norm: str | None = None) -> nn.Sequential:
    """``num_convs`` blocks of (3x3 conv, [GroupNorm], ReLU), keeping ``channels`` channels and the map size.

    Block ``i`` is ``subnet[i]``, laid out like torchvision's ``Conv2dNormActivation``
    (a conv followed by a norm has no bias: the norm's shift replaces it).
    """
    blocks = []
    for _ in range(num_convs):
        layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1, bias=norm is None)]
        if norm == "gn":
            layers.append(nn.GroupNorm(group_norm_groups(channels), channels))
        blocks.append(nn.Sequential(*layers, nn.ReLU(inplace=True)))
    return nn.Sequential(*blocks)


def flatten_level(x: Tensor, values_per_anchor: int) -> Tensor:
    """Tensor[B, A * V, H, W] -> Tensor[B, H * W * A, V], in the anchors' order (location-major, then anchor)."""
    batch, _, height, width = x.shape
    x = x.view(batch, -1, values_per_anchor, height, width).permute(0, 3, 4, 1, 2)
    return x.reshape(batch, -1, values_per_anchor)


class RetinaNetHead(nn.Module):
    """The classification and box subnets, shared by every pyramid level (the paper's Fig. 3 c, d).

    Classification: ``num_convs`` x (3x3 conv, ReLU), then a 3x3 conv to ``A * K`` logits
    whose bias starts at ``prior_bias(prior)``, so every anchor starts at foreground
    probability ``prior``. Box: the same trunk (own weights), then a 3x3 conv to ``A * 4``
    deltas. All other weights start Gaussian with std 0.01 and zero bias.

    ``norm``: None (the paper: no normalisation) or ``"gn"``: GroupNorm after every
    trunk conv, as torchvision's RetinaNet v2 and FCOS do. Not in the paper, but
    narrow heads trained from scratch need it: with 32-64 channels and std-0.01
    weights, each plain conv shrinks the signal 5-10x, so the box subnet hardly learns
    and the classifier learns slowly (and can diverge at lr 0.05); with GN the tiny
    model fits a one-image batch in a few dozen SGD steps.

    forward: list (or ordered dict) of Tensor[B, in_channels, H_l, W_l] ->
    ``{"cls_logits": Tensor[B, sum_l(H_l * W_l * A), K], "bbox_regression": Tensor[B, sum_l(H_l * W_l * A), 4]}``,
    rows in the order of the anchors. Same outputs as torchvision's ``RetinaNetHead``.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        prior: float = 0.01,
        num_convs: int = 4,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_anchors", num_anchors), ("num_classes", num_classes)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive int, got {value}")
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        if norm not in (None, "gn"):
            raise ValueError(f"norm must be None or 'gn', got {norm!r}")
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_subnet = subnet(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.box_subnet = subnet(in_channels, num_convs, norm)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior))

    def forward(self, features: Sequence[Tensor] | Mapping[str, Tensor]) -> dict[str, Tensor]:
        maps = list(features.values()) if isinstance(features, Mapping) else list(features)
        cls_logits = [flatten_level(self.cls_logits(self.cls_subnet(x)), self.num_classes) for x in maps]
        bbox_regression = [flatten_level(self.bbox_pred(self.box_subnet(x)), 4) for x in maps]
        return {"cls_logits": torch.cat(cls_logits, dim=1), "bbox_regression": torch.cat(bbox_regression, dim=1)}


class RetinaNet(nn.Module):
    """RetinaNet on a backbone with an FPN that gives P3..P7, with torchvision's interface.

    ``backbone``: e.g. :class:`fpnbook.fpn.BackboneWithFPN` with :class:`~fpnbook.fpn.LastLevelP6P7`;
    it maps Tensor[B, 3, H, W] to an ordered dict of maps with ``backbone.out_channels``
    channels, one per anchor level. ``num_classes``: ``K``, the object classes (labels 1..K).
    ``anchor_generator``: defaults to :func:`default_anchor_generator` (16..256 px on P3..P7).
    ``loss``: ``"focal"`` (FL with ``focal_gamma``, ``focal_alpha``), ``"alpha_ce"``
    (α-balanced BCE: γ = 0) or ``"ce"`` (plain BCE), for the paper's Table 1.
    ``prior``: the classifier's starting foreground probability. ``head_norm``: None (the
    paper) or ``"gn"`` (GroupNorm in the subnets; use it when training a narrow head
    from scratch, see :class:`RetinaNetHead`).

    forward(images, targets=None):
      * training: ``images`` list of float Tensor[3, H_i, W_i] in 0..1; ``targets`` list of
        ``{"boxes": float [N_i, 4] XYXY pixels, "labels": int64 [N_i] in 1..K}`` (N_i may be 0)
        -> ``{"classification": Tensor[], "bbox_regression": Tensor[]}``.
      * eval: -> one ``{"boxes": [D, 4] XYXY pixels of the input image, "labels": int64 [D],
        "scores": [D]}`` per image, best first, ``D <= detections_per_img``.

    Box loss: L1 on the (dx, dy, dw, dh) deltas of foreground anchors, as torchvision
    (the paper's Detectron used smooth L1 with beta 0.11, nearly the same). Both losses
    are normalised per image by its foreground count (at least 1) and averaged over the
    images, as torchvision does, so the two give the same numbers.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        anchor_generator: AnchorGenerator | None = None,
        *,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        loss: str = "focal",
        prior: float = 0.01,
        head_norm: str | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise TypeError("backbone must have an out_channels attribute (see fpnbook.fpn.BackboneWithFPN)")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be the number of object classes K >= 1, got {num_classes}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        anchor_generator = default_anchor_generator() if anchor_generator is None else anchor_generator
        anchors_per_location = set(anchor_generator.num_anchors_per_location())
        if len(anchors_per_location) != 1:
            raise ValueError(
                "the head is shared by all levels, so every level needs the same number of anchors, "
                f"got {sorted(anchors_per_location)}"
            )
        levels = getattr(backbone, "names", None)
        if levels is not None and len(levels) != len(anchor_generator.sizes):
            raise ValueError(
                f"the backbone gives {len(levels)} maps {list(levels)} but the anchor generator has "
                f"{len(anchor_generator.sizes)} levels (RetinaNet uses P3..P7)"
            )
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.anchor_generator = anchor_generator
        num_anchors = anchors_per_location.pop()
        self.head = RetinaNetHead(backbone.out_channels, num_anchors, self.num_classes, prior, norm=head_norm)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.loss_name = loss
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            with stage("checks"):
                targets = check_targets(targets, len(images), self.num_classes)
        with stage("batch_images"):
            batch, image_sizes = batch_images(images)
        features = list(self.backbone(batch).values())
        with stage("retinanet.head"):
            head_outputs = self.head(features)
        with stage("retinanet.anchors"):
            anchors = self.anchor_generator.anchors_per_level(tuple(batch.shape[-2:]), features)
        if self.training:
            with stage("retinanet.loss"):
                return self.compute_loss(targets, head_outputs, torch.cat(anchors))
        return self.postprocess(head_outputs, anchors, image_sizes)

    def match(self, targets: Sequence[Mapping[str, Tensor]], anchors: Tensor) -> Tensor:
        """Label each anchor of each image: LongTensor[B, N] of ground-truth indices, -1 background, -2 ignored.

        ``anchors``: Tensor[N, 4] XYXY pixels, shared by the padded batch. IoU >= fg_iou_thresh
        is foreground, < bg_iou_thresh background, in between ignored; each ground truth
        also keeps the anchors that overlap it best (``allow_low_quality_matches``).
        """
        return torch.stack([self.matcher(box_iou(t["boxes"].to(anchors), anchors)) for t in targets])

    def anchor_targets(
        self, targets: Sequence[Mapping[str, Tensor]], anchors: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What the loss asks of each anchor of each image of a batch, for ``anchors`` Tensor[N, 4] XYXY pixels.

        Returns ``matched`` (LongTensor[B, N], :meth:`match`), ``labels`` (LongTensor[B, N]:
        the matched object's class 1..K, 0 for background and ignored anchors), ``valid``
        (BoolTensor[B, N]: False for the ignored anchors between the IoU thresholds, which
        no loss sees) and ``gt_boxes`` (Tensor[B, G, 4], each image's boxes padded to the
        batch's largest count ``G``).
        """
        matched = self.match(targets, anchors)  # [B, N]
        gt_boxes, gt_labels = pad_targets(targets, anchors)  # [B, G, 4], [B, G]
        labels = torch.where(matched >= 0, gt_labels.gather(1, matched.clamp(min=0)), 0)
        return matched, labels, matched != BETWEEN_THRESHOLDS, gt_boxes

    def compute_loss(
        self, targets: Sequence[Mapping[str, Tensor]], head_outputs: dict[str, Tensor], anchors: Tensor
    ) -> dict[str, Tensor]:
        """Focal (or CE) classification loss and L1 box loss for a batch; see the class docstring.

        ``head_outputs``: the head's ``cls_logits`` [B, N, K] and ``bbox_regression`` [B, N, 4];
        ``anchors``: Tensor[N, 4] XYXY pixels. Returns scalar ``classification`` and ``bbox_regression``.
        """
        cls_logits, bbox_regression = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        with stage("retinanet.matching"):
            matched, anchor_labels, valid, gt_boxes = self.anchor_targets(targets, anchors)
        foreground = matched >= 0
        num_foreground = foreground.sum(dim=1).clamp(min=1)  # [B]
        num_images = cls_logits.shape[0]

        # Every labelled anchor counts: no sampling, the focal loss does the balancing.
        cls_targets = F.one_hot(anchor_labels, self.num_classes + 1)[..., 1:].to(cls_logits.dtype)
        gamma, alpha = self.focal_params()
        cls_loss = sigmoid_focal_loss(cls_logits, cls_targets, alpha=alpha, gamma=gamma).sum(dim=2)
        cls_loss = (cls_loss * valid).sum(dim=1) / num_foreground

        image_idx, anchor_idx = foreground.nonzero(as_tuple=True)
        matched_boxes = gt_boxes[image_idx, matched[image_idx, anchor_idx]]
        box_targets = self.box_coder.encode(matched_boxes, anchors[anchor_idx])
        box_loss = (bbox_regression[image_idx, anchor_idx] - box_targets).abs().sum(dim=1)
        box_loss = (box_loss / num_foreground[image_idx]).sum()
        return {"classification": cls_loss.sum() / num_images, "bbox_regression": box_loss / num_images}

    def focal_params(self) -> tuple[float, float]:
        """``(gamma, alpha)`` of the classification loss; ``alpha = -1`` means no class weighting."""
        if self.loss_name == "ce":
            return 0.0, -1.0
        if self.loss_name == "alpha_ce":
            return 0.0, self.focal_alpha
        return self.focal_gamma, self.focal_alpha

    def postprocess(
        self,
        head_outputs: dict[str, Tensor],
        anchors_per_level: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Head outputs -> per image ``{"boxes", "labels", "scores"}``: top-k per level, decode, clip, per-class NMS."""
        level_sizes = [len(a) for a in anchors_per_level]
        logits = head_outputs["cls_logits"].split(level_sizes, dim=1)
        deltas = head_outputs["bbox_regression"].split(level_sizes, dim=1)
        candidates = [self.level_candidates(*level) for level in zip(logits, deltas, anchors_per_level)]
        image_idx, boxes, scores, labels = (torch.cat(parts) for parts in zip(*candidates))
        detections = []
        for i, image_size in enumerate(image_sizes):
            mine = image_idx == i
            image_boxes = clip_boxes_to_image(boxes[mine], image_size)
            keep = batched_nms(image_boxes, scores[mine], labels[mine], self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "labels": labels[mine][keep], "scores": scores[mine][keep]})
        return detections

    def level_candidates(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One level, all images at once: each image's ``topk_candidates`` best (anchor, class) pairs over the threshold.

        ``logits`` [B, N_l, K], ``deltas`` [B, N_l, 4], ``anchors`` [N_l, 4] -> image index [M],
        decoded boxes [M, 4] (XYXY pixels, not yet clipped), scores [M] (descending) and labels [M] in 1..K.
        """
        scores = torch.sigmoid(logits).flatten(1)  # [B, N_l * K], column = anchor * K + class
        keep = scores > self.score_thresh
        # top-k is the slow part on a CPU, and usually few pairs pass the threshold: skip it then.
        if keep.sum(dim=1).max() > self.topk_candidates:
            kth_best = scores.topk(self.topk_candidates, dim=1).values[:, -1:]
            keep &= scores >= kth_best
        image_idx, flat_idx = keep.nonzero(as_tuple=True)
        # Best first, ties in index order, as torchvision's top-k hands them to NMS (ties decide
        # which of two equal-scoring overlapping boxes NMS keeps).
        order = scores[image_idx, flat_idx].argsort(descending=True, stable=True)
        image_idx, flat_idx = image_idx[order], flat_idx[order]
        anchor_idx = flat_idx // self.num_classes
        boxes = self.box_coder.decode(deltas[image_idx, anchor_idx], anchors[anchor_idx])
        return image_idx, boxes, scores[image_idx, flat_idx], flat_idx % self.num_classes + 1


def pad_targets(targets: Sequence[Mapping[str, Tensor]], like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image boxes and labels as Tensor[B, G, 4] and LongTensor[B, G], zero-padded; G = max(1, most objects)."""
    most = max([1] + [len(t["labels"]) for t in targets])
    boxes = like.new_zeros(len(targets), most, 4)
    labels = torch.zeros(len(targets), most, dtype=torch.int64, device=like.device)
    for i, t in enumerate(targets):
        boxes[i, : len(t["boxes"])] = t["boxes"]
        labels[i, : len(t["labels"])] = t["labels"]
    return boxes, labels
