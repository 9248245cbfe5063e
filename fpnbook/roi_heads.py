"""The second stage of Faster / Mask R-CNN: classify each proposal, refine its box, predict its mask.

Each proposal (RoI) is pooled from the pyramid to a small fixed grid (7x7 for the
box branch, 14x14 for the mask branch), then:

- the *box head* (two fc layers) and *box predictor* give class logits
  [K, num_logits] (``num_logits = num_classes + 1``, 0 = background) and class-specific deltas [K, num_logits * 4],
  encoded with :class:`fpnbook.boxes.BoxCoder` weights (10, 10, 5, 5);
- the *mask head* (four 3x3 convs) and *mask predictor* (a 2x2 stride-2 deconv, then
  a 1x1 conv) give one 28x28 mask logit map per class [K, num_logits, 28, 28]
  (torchvision's layout, with a background channel that the sigmoid loss never reads;
  the paper's head has one channel per object class).

Training (Mask R-CNN paper, Sec. 3.1): the ground-truth boxes join the proposals;
RoIs with IoU >= 0.5 with a ground truth are foreground, the rest background; 512
RoIs per image are sampled, at most 25% foreground. Losses:

    loss_classifier = cross-entropy over the sampled RoIs
    loss_box_reg    = smooth-L1(beta=1/9) of the ground-truth class' deltas of the
                      foreground RoIs, summed and divided by the number of sampled RoIs.
                      beta = 1/9 is torchvision's choice, which the book follows: the
                      papers' box loss is Fast R-CNN's (its Eq. 3), whose smooth L1 has
                      beta = 1, as Detectron's has.
    loss_mask       = per-pixel sigmoid BCE of the ground-truth class' 28x28 mask only,
                      averaged over the foreground RoIs. Classes do not compete for a
                      pixel (no softmax over classes): the classifier already chose the
                      class, the mask only says which pixels belong to it.

Mask targets are the ground-truth masks cut out by each RoI and resized to 28x28
with RoIAlign (``aligned=False``, as torchvision's ``project_masks_on_boxes``).
With partial supervision (chapter 6), a target may carry ``has_mask`` BoolTensor[G]:
RoIs matched to objects without a mask get no mask loss at all.

Inference: softmax scores, class-specific boxes decoded and clipped, tiny boxes and
scores <= 0.05 dropped, NMS (0.5) per class, the best 100 kept; the mask is the
sigmoid of the predicted class' channel, [N, 1, 28, 28], which the model pastes into
the image with :func:`paste_masks_in_image`.

**The mask predictor contract** (for :mod:`fpnbook.weight_transfer`). ``RoIHeads``
calls ``mask_predictor(mask_features)`` with mask_features Tensor[K, C, 14, 14] and
expects logits Tensor[K, num_logits, 28, 28] (or [K, 1, 28, 28] with
``class_agnostic_mask``); it picks the class channel itself. :class:`MaskPredictor`
splits its work so that the per-class weights can be swapped: ``upsample(x)`` gives
[K, dim_reduced, 28, 28], ``class_weights()`` gives ``(weight [num_logits, dim_reduced],
bias [num_logits])``, and the logits are the 1x1 conv of the two. A weight-transfer
predictor overrides ``class_weights()`` to return ``tau_c = T(omega_c)`` computed from
the box predictor's ``cls_score.weight`` / ``bbox_pred.weight`` (a module it holds a
reference to); nothing else changes.

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .boxes import BoxCoder, box_iou, check_boxes, clip_boxes_to_image, remove_small_boxes
from .images import check_targets
from .matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from .ops import roi_align
from .timing import stage

# Detections below this width or height (pixels) are dropped, as torchvision does.
MIN_DETECTION_SIZE = 1e-2


class TwoMLPHead(nn.Module):
    """The FPN box head: flatten, then fc + ReLU twice. Tensor[K, C, 7, 7] -> Tensor[K, representation_size].

    ``in_features = C * 7 * 7``. Named ``fc6``/``fc7`` like torchvision's (and Detectron's).
    """

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """Class logits and class-specific box deltas from the box head's features.

    forward: Tensor[K, in_features] -> (class_logits Tensor[K, num_logits],
    box_deltas Tensor[K, num_logits * 4], columns ``4c..4c+3`` for class ``c``).
    ``num_logits`` is K + 1: the object classes and the background (index 0), which is
    torchvision's ``FastRCNNPredictor(in_channels, num_classes)``'s ``num_classes``. Initialised as in Detectron:
    normal(std 0.01) for the classifier, normal(std 0.001) for the deltas, zero biases.
    """

    def __init__(self, in_features: int, num_logits: int) -> None:
        super().__init__()
        if num_logits < 2:
            raise ValueError(f"num_logits counts the background too (K + 1), so it must be at least 2, got {num_logits}")
        self.num_logits = num_logits
        self.cls_score = nn.Linear(in_features, num_logits)
        self.bbox_pred = nn.Linear(in_features, num_logits * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    """The mask head's fully convolutional trunk: ``len(layers)`` x (3x3 conv, ReLU).

    Tensor[K, in_channels, S, S] -> Tensor[K, layers[-1], S, S] (S = 14 in the paper,
    which uses four layers of 256 channels). Kaiming-normal init, zero biases.
    """

    def __init__(self, in_channels: int, layers: Sequence[int] = (256,) * 4, dilation: int = 1) -> None:
        if len(layers) == 0 or any(int(c) < 1 for c in layers):
            raise ValueError(f"layers must be a non-empty list of positive channel counts, got {tuple(layers)}")
        modules: list[nn.Module] = []
        for channels in layers:
            modules += [nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            in_channels = channels
        super().__init__(*modules)
        self.out_channels = int(layers[-1])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskPredictor(nn.Module):
    """Per-class mask logits: 2x2 stride-2 deconv + ReLU, then a 1x1 conv with one output per class.

    forward: Tensor[K, in_channels, S, S] -> Tensor[K, num_logits, 2S, 2S] logits (``num_logits``:
    K + 1 per-class masks, background included as in torchvision's ``MaskRCNNPredictor``, or 1 class-agnostic).
    Submodules ``conv5_mask`` and ``mask_fcn_logits`` are named like torchvision's
    ``MaskRCNNPredictor``, whose state dict loads as it is. See the module docstring for
    the contract that lets weight transfer replace :meth:`class_weights`.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_logits: int) -> None:
        super().__init__()
        self.num_logits = num_logits
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_logits, 1)
        # Detectron2's init: tiny per-class weights, so every mask starts at probability ~0.5.
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.conv5_mask.bias)
        nn.init.zeros_(self.mask_fcn_logits.bias)

    def upsample(self, x: Tensor) -> Tensor:
        """Tensor[K, in_channels, S, S] -> Tensor[K, dim_reduced, 2S, 2S]: the features every class' mask reads."""
        return F.relu(self.conv5_mask(x))

    def class_weights(self) -> tuple[Tensor, Tensor]:
        """The per-class mask weights: ``(weight Tensor[num_logits, dim_reduced], bias Tensor[num_logits])``."""
        return self.mask_fcn_logits.weight[:, :, 0, 0], self.mask_fcn_logits.bias

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.class_weights()
        return F.conv2d(self.upsample(x), weight[:, :, None, None], bias)


def fast_rcnn_loss(
    class_logits: Tensor, box_regression: Tensor, labels: Sequence[Tensor], regression_targets: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """``(loss_classifier, loss_box_reg)`` over the sampled RoIs of all images.

    ``class_logits`` Tensor[K, C], ``box_regression`` Tensor[K, C * 4], per-image ``labels``
    (0 background) and ``regression_targets`` Tensor[K_i, 4] (encoded, weights 10, 10, 5, 5).
    The box loss reads only the ground-truth class' deltas of foreground RoIs and, as in
    torchvision, is divided by the number of *all* sampled RoIs.
    """
    labels, targets = torch.cat(list(labels)), torch.cat(list(regression_targets))
    if labels.numel() == 0:
        return class_logits.sum() * 0, box_regression.sum() * 0
    loss_classifier = F.cross_entropy(class_logits, labels)
    positive = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(labels.shape[0], -1, 4)[positive, labels[positive]]
    loss_box = F.smooth_l1_loss(deltas, targets[positive], beta=1 / 9, reduction="sum") / labels.numel()
    return loss_classifier, loss_box


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Mask targets: each RoI's matched ground-truth mask, cut out by the RoI and resized to ``size x size``.

    ``gt_masks`` Tensor[G, H, W] (0/1, any dtype) in image pixels, ``boxes`` Tensor[K, 4] XYXY
    pixels, ``matched_idxs`` LongTensor[K] into ``gt_masks``. Returns float Tensor[K, size, size]
    in 0..1 (soft at the edges): RoIAlign with ``aligned=False`` and adaptive sampling,
    exactly torchvision's ``project_masks_on_boxes``.
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, size, size))
    rois = torch.cat([matched_idxs[:, None].to(boxes), boxes], dim=1)
    masks = gt_masks[:, None].to(boxes)
    return roi_align(masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=False)[:, 0]


def mask_loss(mask_logits: Tensor, channels: Tensor, mask_targets: Tensor) -> Tensor:
    """Sigmoid BCE between channel ``channels[k]`` of RoI ``k``'s logits and its target, averaged over pixels.

    ``mask_logits`` Tensor[K, C, M, M], ``channels`` LongTensor[K] (the ground-truth class, or
    0 for a class-agnostic head), ``mask_targets`` Tensor[K, M, M]. The other C - 1 channels
    get no gradient. With K = 0 it returns ``0 * mask_logits.sum()``: zero, and still part of
    the graph so every parameter gets a (zero) gradient.
    """
    if mask_targets.shape[0] == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(channels.shape[0], device=channels.device), channels]
    return F.binary_cross_entropy_with_logits(picked, mask_targets)


def softmax_mask_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
    """The multinomial alternative to :func:`mask_loss` (Mask R-CNN Table 2b, "softmax"), averaged over pixels.

    ``mask_logits`` Tensor[K, C, M, M] with channel 0 the background and ``c`` class ``c``;
    ``labels`` LongTensor[K] in 1..C-1; ``mask_targets`` Tensor[K, M, M] in 0..1. Every
    pixel is one C-way softmax classification: class ``labels[k]`` where the target is
    >= 0.5, background elsewhere. Unlike the sigmoid loss, every channel gets a gradient, so
    the classes' masks compete: the coupling the paper finds costs 5.5 mask AP. With K = 0
    it returns a zero that is still part of the graph.
    """
    if mask_targets.shape[0] == 0:
        return mask_logits.sum() * 0
    pixel_classes = torch.where(mask_targets >= 0.5, labels[:, None, None], 0)
    return F.cross_entropy(mask_logits, pixel_classes)


def softmax_mask_probs(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """Per-RoI mask probabilities of a head trained with :func:`softmax_mask_loss`.

    ``mask_logits`` Tensor[K, C, M, M], ``labels`` LongTensor[K] -> Tensor[K, 1, M, M]: the
    softmax over the C channels, read at each RoI's class.
    """
    probs = mask_logits.softmax(dim=1)
    return probs[torch.arange(len(labels), device=labels.device), labels][:, None]


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Grow XYXY boxes about their centres by ``scale``. Tensor[N, 4] -> Tensor[N, 4]."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat([centres - half, centres + half], dim=1)


def resize_matrix(start: Tensor, length: Tensor, out_size: int, in_size: int) -> Tensor:
    """Bilinear resizing along one axis as a matrix: Tensor[N, out_size, in_size].

    Row ``p`` of box ``n`` samples the ``in_size`` mask cells at image pixel ``p``: for
    ``0 <= p - start[n] < length[n]`` it holds the two weights of
    ``F.interpolate(..., size=length, mode="bilinear", align_corners=False)`` at position
    ``p - start[n]``; outside the box the row is zero.
    """
    pixels = torch.arange(out_size, device=start.device)
    local = pixels[None, :] - start[:, None]  # [N, out]
    inside = (local >= 0) & (local < length[:, None])
    scale = in_size / length.to(torch.float32)
    source = ((local.to(torch.float32) + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    lower = source.floor().clamp(max=in_size - 1)
    frac = source - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=in_size - 1)
    weights = torch.zeros(start.shape[0], out_size, in_size, device=start.device)
    weights.scatter_add_(2, lower[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(2, upper[..., None], (frac * inside)[..., None])
    return weights


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """Put each RoI's ``M x M`` mask back into the image: Tensor[N, 1, M, M] -> Tensor[N, 1, H, W].

    ``boxes`` Tensor[N, 4] XYXY pixels, ``image_size`` ``(H, W)``. Each mask is resized
    bilinearly to its box and zero elsewhere. As torchvision does, the mask is first padded
    by ``padding`` zero cells and the box grown to match, so the mask fades to zero at the
    box edge instead of stopping sharply, and box corners are snapped to whole pixels
    (truncated) first. Bilinear resizing is separable, so each paste is two small matrix
    products, ``rows @ mask @ cols.T``, for all boxes at once. Equals torchvision's
    ``paste_masks_in_image`` up to float rounding.
    """
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2] != masks.shape[3]:
        raise ValueError(f"masks must be Tensor[N, 1, M, M], got {list(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be Tensor[{masks.shape[0]}, 4] (one per mask), got {list(boxes.shape)}")
    # No early return for N = 0: the products below give Tensor[0, 1, H, W] anyway, and an
    # ``if`` on the count would be frozen into an exported graph (fpnbook.export).
    height, width = image_size
    size = int(masks.shape[-1])
    padded = F.pad(masks[:, 0], (padding,) * 4)
    grown = expand_boxes(boxes, (size + 2 * padding) / size).to(torch.int64)
    box_w = (grown[:, 2] - grown[:, 0] + 1).clamp(min=1)
    box_h = (grown[:, 3] - grown[:, 1] + 1).clamp(min=1)
    rows = resize_matrix(grown[:, 1], box_h, height, size + 2 * padding).to(masks)
    cols = resize_matrix(grown[:, 0], box_w, width, size + 2 * padding).to(masks)
    return (rows @ padded @ cols.transpose(1, 2))[:, None]


class RoIHeads(nn.Module):
    """Box branch and (optional) mask branch on top of the proposals.

    ``box_roi_pool``, ``mask_roi_pool``: poolers called as ``pool(features, boxes_list, image_sizes)``
    (e.g. ``fpnbook.poolers.MultiScaleRoIAlign``) giving Tensor[K, C, S, S]. ``box_head`` /
    ``box_predictor`` as :class:`TwoMLPHead` / :class:`BoxPredictor`; ``mask_head`` /
    ``mask_predictor`` as :class:`MaskHead` / :class:`MaskPredictor` (or any predictor keeping
    the contract in the module docstring). The mask branch is on when all three mask
    modules are given. ``class_agnostic_mask``: the mask predictor has one channel, used for
    every class.

    forward(features, proposals, image_sizes, targets=None) -> (detections, losses):

    - ``features``: ordered dict of pyramid maps Tensor[B, C, H_i, W_i];
    - ``proposals``: list of Tensor[P_i, 4] XYXY pixels (from the RPN);
    - ``image_sizes``: each image's ``(h, w)`` before padding;
    - ``targets`` (training): dicts with ``boxes`` [G, 4], ``labels`` int64 [G] in 1..K,
      ``masks`` [G, h, w] (mask branch), optional ``has_mask`` bool [G].

    Training returns ``([], {"loss_classifier", "loss_box_reg"[, "loss_mask"]})``; eval returns
    one dict per image with ``boxes`` [N, 4], ``labels`` [N], ``scores`` [N] and, with the mask
    branch, ``masks`` [N, 1, M, M] probabilities in the box's frame (not yet pasted), and ``{}``.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        *,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
        class_agnostic_mask: bool = False,
    ) -> None:
        super().__init__()
        given = [m is not None for m in (mask_roi_pool, mask_head, mask_predictor)]
        if any(given) and not all(given):
            raise ValueError("the mask branch needs all of mask_roi_pool, mask_head and mask_predictor (or none)")
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.class_agnostic_mask = class_agnostic_mask

    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    def forward(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if len(proposals) != len(image_sizes):
            raise ValueError(f"proposals must have one Tensor[P, 4] per image: {len(proposals)} for {len(image_sizes)}")
        with stage("checks"):
            for i, p in enumerate(proposals):
                check_boxes(p, f"proposals[{i}]")
        if not self.training:
            return self.detect(features, proposals, image_sizes), {}
        with stage("checks"):  # a no-op when the model's forward has checked them already
            targets = check_targets(targets, len(image_sizes), num_classes=self.box_predictor.num_logits - 1,
                                    image_sizes=image_sizes, masks=self.has_mask())
        return [], self.losses(features, proposals, image_sizes, targets)

    def losses(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Sample RoIs and return ``{"loss_classifier", "loss_box_reg"[, "loss_mask"]}``."""
        with stage("roi.sampling"):
            rois, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        with stage("roi_align"):
            box_features = self.box_roi_pool(features, rois, image_sizes)
        with stage("box_head"):
            class_logits, box_regression = self.box_predictor(self.box_head(box_features))
        with stage("roi.loss"):
            loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask():
            losses["loss_mask"] = self.mask_training_loss(features, rois, image_sizes, targets, matched_idxs, labels)
        return losses

    def detect(
        self, features: Mapping[str, Tensor], proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes``, ``labels``, ``scores`` [+ ``masks`` [N, 1, M, M] probabilities]."""
        box_features = self.box_head(self.box_roi_pool(features, list(proposals), image_sizes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
        detections = [{"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels)]
        if self.has_mask():
            logits = self.mask_logits(features, boxes, image_sizes)
            channels = torch.cat(labels)
            if self.class_agnostic_mask:
                channels = torch.zeros_like(channels)
            # Only the predicted class' mask is kept; sigmoid, not softmax: classes do not compete.
            probs = logits[torch.arange(channels.shape[0], device=channels.device), channels][:, None].sigmoid()
            for detection, image_probs in zip(detections, probs.split([b.shape[0] for b in boxes])):
                detection["masks"] = image_probs
        return detections

    def select_training_samples(
        self, proposals: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Add the ground truths to the proposals, match, sample: per image the sampled RoIs
        Tensor[K_i, 4], their matched ground-truth indices, labels (0 background) and regression targets."""
        rois, matched_idxs, labels, regression_targets = [], [], [], []
        for image_proposals, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(image_proposals.dtype)
            # The ground truths are perfect proposals: they make sure every object has positives early on.
            image_proposals = torch.cat([image_proposals, gt_boxes])
            image_matched, image_labels = self.assign_targets(image_proposals, gt_boxes, target["labels"])
            pos, neg = self.sampler([image_labels])
            keep = torch.where(pos[0] | neg[0])[0]
            image_proposals, image_matched, image_labels = image_proposals[keep], image_matched[keep], image_labels[keep]
            matched_boxes = gt_boxes[image_matched] if gt_boxes.shape[0] else torch.zeros_like(image_proposals)
            rois.append(image_proposals)
            matched_idxs.append(image_matched)
            labels.append(image_labels)
            regression_targets.append(self.box_coder.encode(matched_boxes, image_proposals))
        return rois, matched_idxs, labels, regression_targets

    def assign_targets(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per proposal: the matched ground truth's index (0 where unmatched) and its label (0 background, -1 ignored)."""
        if gt_boxes.shape[0] == 0:
            zeros = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
            return zeros, zeros.clone()
        matches = self.matcher(box_iou(gt_boxes, proposals))
        matched = matches.clamp(min=0)
        labels = gt_labels[matched].to(torch.int64)
        labels[matches == BELOW_LOW_THRESHOLD] = 0
        labels[matches == BETWEEN_THRESHOLDS] = -1
        return matched, labels

    def mask_logits(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Mask logits Tensor[sum K_i, num_logits (or 1), M, M] for per-image boxes Tensor[K_i, 4]."""
        with stage("roi_align"):
            mask_features = self.mask_roi_pool(features, list(boxes), image_sizes)
        with stage("mask_head"):
            logits = self.mask_predictor(self.mask_head(mask_features))
        if self.class_agnostic_mask and logits.shape[1] != 1:
            raise ValueError(f"class_agnostic_mask needs a mask predictor with 1 channel, it gives {logits.shape[1]}")
        return logits

    def mask_training_loss(
        self,
        features: Mapping[str, Tensor],
        rois: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]],
        matched_idxs: Sequence[Tensor],
        labels: Sequence[Tensor],
    ) -> Tensor:
        """``loss_mask`` over the foreground RoIs whose object has a mask (``has_mask``, default all)."""
        mask_rois, mask_targets, channels = [], [], []
        for image_rois, target, matched, image_labels in zip(rois, targets, matched_idxs, labels):
            has_mask = target.get("has_mask")
            keep = image_labels > 0
            if has_mask is not None and has_mask.numel() > 0:  # an image with no objects has no RoI to keep
                # Objects without a mask train the box branch only; no mask pixel of theirs is read.
                keep &= has_mask.to(keep.device)[matched]
            mask_rois.append(image_rois[keep])
            channels.append(image_labels[keep])
            mask_targets.append((target["masks"], image_rois[keep], matched[keep]))
        logits = self.mask_logits(features, mask_rois, image_sizes)
        size = logits.shape[-1]
        with stage("mask_targets"):
            targets_cut = torch.cat([project_masks_on_boxes(m, b, i, size) for m, b, i in mask_targets])
        channels = torch.cat(channels)
        if self.class_agnostic_mask:
            channels = torch.zeros_like(channels)
        with stage("roi.loss"):
            return mask_loss(logits, channels, targets_cut)

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Scores, class-specific boxes, thresholds and per-class NMS: per image ``(boxes, scores, labels)``.

        Same signature and results as torchvision's ``RoIHeads.postprocess_detections``.
        """
        num_logits = class_logits.shape[1]
        counts = [p.shape[0] for p in proposals]
        all_proposals = torch.cat(list(proposals))
        pred_boxes = self.box_coder.decode(box_regression, all_proposals).reshape(-1, num_logits, 4)
        pred_scores = F.softmax(class_logits, dim=-1)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, size in zip(pred_boxes.split(counts), pred_scores.split(counts), image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_logits, device=scores.device).expand_as(scores)
            # Every (RoI, class) pair is a candidate detection; drop the background column.
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, MIN_DETECTION_SIZE)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels
