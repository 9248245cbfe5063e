"""Region Proposal Network (Ren et al. 2015; with an FPN, Lin et al. 2017 Sec. 4.1).

A small head slides over every pyramid level and, for each of the ``A`` anchors of
every pixel, predicts an *objectness* logit (is there an object here?) and four
*deltas* that move the anchor onto the object. The best few thousand moved anchors,
after non-maximum suppression, are the *proposals* that the RoI heads classify.

Training (per image): anchors with IoU >= 0.7 with a ground truth are positive,
< 0.3 negative, in between ignored; each ground truth also keeps its best anchors
even below 0.7 (low-quality matches), so no object goes without one. 256 anchors are
sampled, at most half positive. Losses, both divided by the number of sampled anchors:

    loss_objectness  = BCE-with-logits(objectness, label)     over sampled anchors
    loss_rpn_box_reg = smooth-L1(deltas, target, beta=1/9)    over sampled positives

Proposal selection is done *per level*, as torchvision does: the top ``pre_nms_top_n``
anchors of each level by objectness are decoded, clipped to the image, small boxes
dropped, NMS (IoU 0.7) run within each level, and the best ``post_nms_top_n`` of the
image kept. Picking per level stops the many small anchors of P2 from crowding out
the few large ones of P6.

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels. The proposals equal those of
``torchvision.models.detection.rpn.RegionProposalNetwork`` given the same head
weights, anchors and inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import ANCHOR_BASE_SIZES, AnchorGenerator
from .boxes import BoxCoder, box_iou, clip_boxes_to_image, remove_small_boxes
from .images import check_targets
from .matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from .timing import stage

# Anchor sizes for our ~256 px images: half the paper's 32..512 for ~800 px images.
# One size per level P2..P6 (stride 4..64), i.e. 4x the stride where the paper has 8x,
# so a 256 px image is covered from ~10 px objects (low-quality matches reach 8 px ones)
# up to the whole image.
SMALL_ANCHOR_SIZES = tuple((size,) for size in ANCHOR_BASE_SIZES)  # one size per level, P2..P6


class RPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then sibling 1x1 convs: objectness (``A`` channels) and deltas (``4A``).

    forward(features: list of Tensor[B, in_channels, H_i, W_i]) -> (objectness: list of
    Tensor[B, A, H_i, W_i], deltas: list of Tensor[B, 4A, H_i, W_i]); channel ``4a + j`` of
    the deltas is coordinate ``j`` (dx, dy, dw, dh) of anchor ``a``. The same weights serve
    every level. All convs start as normal(std=0.01) with zero bias (Faster R-CNN).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        if in_channels < 1 or num_anchors < 1:
            raise ValueError(f"in_channels and num_anchors must be positive, got {in_channels}, {num_anchors}")
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            objectness.append(self.objectness(t))
            deltas.append(self.deltas(t))
        return objectness, deltas


def flatten_predictions(objectness: Sequence[Tensor], deltas: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> Tensor[B, N] logits and Tensor[B, N, 4] deltas, in the anchors' order.

    ``N = sum_i(H_i * W_i * A)``: level by level, then row by row, then the ``A`` anchors of a
    pixel, the order of :class:`fpnbook.anchors.AnchorGenerator`.
    """
    flat_logits, flat_deltas = [], []
    for logits, level_deltas in zip(objectness, deltas):
        batch, num_anchors, height, width = logits.shape
        flat_logits.append(logits.permute(0, 2, 3, 1).reshape(batch, -1))
        level_deltas = level_deltas.view(batch, num_anchors, 4, height, width)
        flat_deltas.append(level_deltas.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


def rpn_loss(
    objectness: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor, sampled_pos: Tensor, sampled_neg: Tensor
) -> tuple[Tensor, Tensor]:
    """The RPN's two losses over a given sample of anchors.

    ``objectness`` Tensor[M] logits, ``deltas`` Tensor[M, 4], ``labels`` Tensor[M] (1 object,
    0 background), ``regression_targets`` Tensor[M, 4], and the sampled anchors as boolean
    masks Tensor[M] (``M`` anchors of all images concatenated). Both losses are divided by
    the number of sampled anchors. Returns ``(loss_objectness, loss_rpn_box_reg)``.
    """
    sampled = sampled_pos | sampled_neg
    num_sampled = max(int(sampled.sum()), 1)
    box_loss = F.smooth_l1_loss(deltas[sampled_pos], regression_targets[sampled_pos], beta=1 / 9, reduction="sum")
    objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled], reduction="sum")
    return objectness_loss / num_sampled, box_loss / num_sampled


class RegionProposalNetwork(nn.Module):
    """The RPN: head, anchors, matching, losses and per-level proposal selection.

    ``anchor_generator`` gives ``A_i`` anchors per pixel of level ``i``; ``head`` maps the
    list of level maps to per-level objectness [B, A, H, W] and deltas [B, 4A, H, W]
    (e.g. :class:`RPNHead`). ``pre_nms_top_n`` and ``post_nms_top_n`` are dicts with
    ``training`` and ``testing`` counts.

    forward(images, image_sizes, features, targets=None) -> (proposals, losses):

    - ``images``: the padded batch Tensor[B, 3, H, W] (only its size is used);
    - ``image_sizes``: each image's ``(h, w)`` before padding (proposals are clipped to it);
    - ``features``: ordered dict of level maps Tensor[B, C, H_i, W_i], fine to coarse;
    - ``targets``: in training, one dict per image with ``boxes`` Tensor[G, 4] (XYXY pixels).

    ``proposals`` is a list of Tensor[P_i, 4] XYXY pixels, best first; ``losses`` is
    ``{"loss_objectness", "loss_rpn_box_reg"}`` in training and ``{}`` in eval.
    :meth:`propose` returns the same proposals with their scores and pyramid levels.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        *,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: Mapping[str, int] = dict(training=2000, testing=1000),
        post_nms_top_n: Mapping[str, int] = dict(training=2000, testing=1000),
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
    ) -> None:
        super().__init__()
        for name, counts in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)):
            if set(counts) != {"training", "testing"} or any(int(n) < 1 for n in counts.values()):
                raise ValueError(f"{name} must be dict(training=int, testing=int) of positive counts, got {dict(counts)}")
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n_counts = dict(pre_nms_top_n)
        self.post_nms_top_n_counts = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.score_thresh = score_thresh

    def pre_nms_top_n(self) -> int:
        return self.pre_nms_top_n_counts["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self.post_nms_top_n_counts["training" if self.training else "testing"]

    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        features: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        if self.training or targets is not None:
            with stage("checks"):  # a no-op when the model's forward has checked them already
                targets = check_targets(targets, len(image_sizes), labels=False)
        anchors, objectness, deltas, num_per_level = self.predict(images, image_sizes, features)
        with stage("rpn.proposals"):
            proposals = self.select_proposals(anchors, objectness.detach(), deltas.detach(), image_sizes, num_per_level)
        losses = self.losses(anchors, objectness, deltas, targets) if self.training else {}
        return [p["boxes"] for p in proposals], losses

    def losses(
        self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """``{"loss_objectness", "loss_rpn_box_reg"}`` for the outputs of :meth:`predict`.

        An RPN trained on its own (:class:`fpnbook.rcnn.RPNModel`) calls this after :meth:`predict` and
        skips :meth:`select_proposals`, whose boxes only the RoI heads would use.
        """
        with stage("checks"):
            targets = check_targets(targets, objectness.shape[0], labels=False)
        with stage("rpn.targets"):
            labels, regression_targets = self.assign_targets(anchors, targets)
        with stage("rpn.loss"):
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}

    @torch.no_grad()
    def propose(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]], features: Mapping[str, Tensor]
    ) -> list[dict[str, Tensor]]:
        """Proposals with what chapter 1 plots: one dict per image.

        ``boxes`` Tensor[P, 4] XYXY pixels, ``scores`` Tensor[P] (sigmoid objectness) and
        ``levels`` LongTensor[P], the index into ``features`` of the level whose anchor
        became the proposal (0 = the finest, e.g. P2). Same boxes as :meth:`forward`.
        """
        anchors, objectness, deltas, num_per_level = self.predict(images, image_sizes, features)
        return self.select_proposals(anchors, objectness, deltas, image_sizes, num_per_level)

    def predict(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]], features: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Run the head: anchors Tensor[N, 4], objectness logits Tensor[B, N], deltas Tensor[B, N, 4], anchors per level."""
        with stage("checks"):
            maps = check_inputs(images, image_sizes, features)
        with stage("rpn.anchors"):
            per_level = self.anchor_generator.anchors_per_level(tuple(images.shape[-2:]), maps)
        with stage("rpn.head"):
            objectness, deltas = self.head(maps)
        for i, (logits, level_anchors) in enumerate(zip(objectness, per_level)):
            if logits.shape[-3] * logits.shape[-2] * logits.shape[-1] != level_anchors.shape[0]:
                raise ValueError(
                    f"the head predicts {logits.shape[-3]} anchors per pixel on level {i} but the anchor "
                    f"generator has {self.anchor_generator.num_anchors_per_location()[i]}"
                )
        objectness, deltas = flatten_predictions(objectness, deltas)
        return torch.cat(per_level), objectness, deltas, [a.shape[0] for a in per_level]

    def select_proposals(
        self,
        anchors: Tensor,
        objectness: Tensor,
        deltas: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        num_per_level: Sequence[int],
    ) -> list[dict[str, Tensor]]:
        """Per-level top-k, decode, clip, drop small, per-level NMS, image top-k: one dict per image.

        ``anchors`` Tensor[N, 4], ``objectness`` Tensor[B, N] logits, ``deltas`` Tensor[B, N, 4],
        ``num_per_level`` how many of the ``N`` anchors each level has. Returns dicts of
        ``boxes`` [P, 4], ``scores`` [P] and ``levels`` [P], best score first.
        """
        top_idx, levels = [], []
        offset = 0
        for level, (logits, count) in enumerate(zip(objectness.split(list(num_per_level), dim=1), num_per_level)):
            k = min(self.pre_nms_top_n(), count)
            top_idx.append(logits.topk(k, dim=1).indices + offset)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=anchors.device))
            offset += count
        top_idx, levels = torch.cat(top_idx, dim=1), torch.cat(levels)
        results = []
        for image_logits, image_deltas, idx, size in zip(objectness, deltas, top_idx, image_sizes):
            boxes = self.box_coder.decode(image_deltas[idx], anchors[idx])
            boxes = clip_boxes_to_image(boxes, size)
            scores, lvl = torch.sigmoid(image_logits[idx]), levels
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            # NMS within each level only: boxes of different levels never suppress each other.
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "levels": lvl[keep]})
        return results

    def assign_targets(
        self, anchors: Tensor, targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Label every anchor of every image and give it its regression target.

        Returns per image ``labels`` Tensor[N] float (1 object, 0 background, -1 ignored)
        and ``regression_targets`` Tensor[N, 4] (deltas from the anchor to its matched
        ground truth; meaningless where the label is not 1).
        """
        labels, regression_targets = [], []
        for target in targets:
            gt_boxes = target["boxes"].to(anchors.dtype)
            if gt_boxes.shape[0] == 0:
                # An image with no objects: every anchor is background.
                image_labels = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
                matched_boxes = torch.zeros_like(anchors)
            else:
                matches = self.matcher(box_iou(gt_boxes, anchors))
                matched_boxes = gt_boxes[matches.clamp(min=0)]
                image_labels = (matches >= 0).to(anchors.dtype)
                image_labels[matches == BELOW_LOW_THRESHOLD] = 0.0
                image_labels[matches == BETWEEN_THRESHOLDS] = -1.0
            labels.append(image_labels)
            regression_targets.append(self.box_coder.encode(matched_boxes, anchors))
        return labels, regression_targets

    def compute_loss(
        self, objectness: Tensor, deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Sample anchors (torch's global RNG) and return ``(loss_objectness, loss_rpn_box_reg)``.

        ``objectness`` Tensor[B, N], ``deltas`` Tensor[B, N, 4], per-image ``labels`` and
        ``regression_targets`` from :meth:`assign_targets`.
        """
        sampled_pos, sampled_neg = self.sampler(labels)
        return rpn_loss(
            objectness.reshape(-1),
            deltas.reshape(-1, 4),
            torch.cat(labels),
            torch.cat(regression_targets),
            torch.cat(sampled_pos),
            torch.cat(sampled_neg),
        )


def check_inputs(images: Tensor, image_sizes: Sequence[tuple[int, int]], features: Mapping[str, Tensor]) -> list[Tensor]:
    """Raise unless the padded batch, its image sizes and the level maps agree; return the maps as a list."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise TypeError(f"images must be the padded batch Tensor[B, 3, H, W], got {getattr(images, 'shape', type(images))}")
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if len(image_sizes) != batch:
        raise ValueError(f"image_sizes must have one (h, w) per image: {len(image_sizes)} for a batch of {batch}")
    for i, size in enumerate(image_sizes):
        if len(size) != 2 or not (0 < size[0] <= height and 0 < size[1] <= width):
            raise ValueError(f"image_sizes[{i}] must be (h, w) within the padded batch's {height}x{width}, got {size}")
    if not isinstance(features, Mapping) or len(features) == 0:
        raise TypeError(f"features must be a non-empty ordered dict of Tensor[B, C, H_i, W_i], got {type(features).__name__}")
    maps = list(features.values())
    for name, x in features.items():
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] != batch:
            raise ValueError(f"features[{name!r}] must be a Tensor[{batch}, C, H, W], got {getattr(x, 'shape', type(x))}")
    return maps
