"""Two-stage detectors: Faster R-CNN with an FPN, and Mask R-CNN.

    images -> batch_images -> backbone + FPN (P2..P6) -> RPN -> proposals
           -> RoIHeads (box branch on P2..P5 [+ mask branch]) -> detections

Same interface as torchvision's detection models: ``model(images, targets)`` with
``images`` a list of Tensor[3, H, W] in 0..1 and ``targets`` a list of dicts
(``boxes`` [N, 4] XYXY pixels, ``labels`` int64 [N] in 1..K, and for Mask R-CNN
``masks`` [N, H, W], optionally ``has_mask`` bool [N]). Training returns a dict of
losses; eval returns one dict per image with ``boxes``, ``labels``, ``scores`` and,
for Mask R-CNN, ``masks`` [N, 1, H, W] float probabilities pasted into the image.
Unlike torchvision the model does not resize: images are only normalised and padded
(:func:`fpnbook.images.batch_images`), so boxes and masks stay in input pixels.

Scaled to the book's ~256 px images (the papers use ~800 px):

- anchors 16, 32, 64, 128, 256 px on P2..P6, half the paper's 32..512
  (:data:`fpnbook.rpn.SMALL_ANCHOR_SIZES`);
- RoI level assignment ``k = floor(4 + log2(sqrt(w * h) / 112))``, clamped to P2..P5:
  canonical scale 112 instead of the paper's 224. With 224, P2 would take every RoI under
  112 px (90% of the validation split's objects), P3 those of 112-224 px (the other 10%),
  and P4 and P5 none. With 112, P2 takes 68%, P3 (56-112 px) 22% and P4 (112-224 px) 10%;
  no validation object reaches P5 (the largest is 177 px), which gets only larger
  proposals. A RoI on P3..P5 spans at least 7 feature pixels (56/8, 112/16, 224/32), one
  per cell of the 7x7 pooled grid; P2, clamped, also takes every smaller RoI, down to 2
  feature pixels for an 8 px object;
- narrower heads: FPN 64 channels, box head fc 256, mask head 4 x 64 channels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from .anchors import ASPECT_RATIOS, AnchorGenerator
from .fpn import FPN, LastLevelMaxPool
from .images import batch_images, check_targets
from .poolers import MultiScaleRoIAlign
from .roi_heads import BoxPredictor, MaskHead, MaskPredictor, RoIHeads, TwoMLPHead, paste_masks_in_image
from .rpn import SMALL_ANCHOR_SIZES, RegionProposalNetwork, RPNHead
from .timing import stage
from .weight_transfer import (
    FusedMaskPredictor,
    TransferMaskPredictor,
    WeightTransfer,
    check_mask_classes,
    partial_mask_targets,
    transfer_input_dim,
)


CANONICAL_SCALE = 112  # the paper's 224 for ~800 px images; see the module docstring
BOX_POOL_SIZE, MASK_POOL_SIZE = 7, 14


class FasterRCNN(nn.Module):
    """Faster R-CNN with an FPN (Lin et al. 2017, Sec. 4.2).

    ``backbone``: a :class:`fpnbook.fpn.BackboneWithFPN` (or any module with ``names`` and
    ``out_channels`` returning an ordered dict of maps). ``num_classes`` is K, the object
    classes (labels 1..K); torchvision's ``FasterRCNN`` counts the background in its
    ``num_classes``, so it is K + 1 there. ``rpn`` / ``roi_heads``: ready-made modules, or None to build the defaults
    described in the module docstring from ``anchor_sizes``, ``rpn_*_nms_top_n`` (proposals
    kept per level before NMS and per image after it, ``dict(training=, testing=)``), ``canonical_scale``,
    ``representation_size`` and the ``box_*`` settings (RoIs sampled per image, score
    threshold, NMS IoU, detections kept). The RPN uses every map; the RoI
    heads pool from all maps but the last (P2..P5 when the FPN adds P6).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        rpn: RegionProposalNetwork | None = None,
        roi_heads: RoIHeads | None = None,
        *,
        anchor_sizes: Sequence[Sequence[float]] = SMALL_ANCHOR_SIZES,
        rpn_pre_nms_top_n: Mapping[str, int] = dict(training=2000, testing=1000),
        rpn_post_nms_top_n: Mapping[str, int] = dict(training=2000, testing=1000),
        canonical_scale: int = CANONICAL_SCALE,
        representation_size: int = 256,
        box_batch_size_per_image: int = 512,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if not isinstance(getattr(backbone, "out_channels", None), int) or not hasattr(backbone, "names"):
            raise TypeError("backbone must have 'names' and one int 'out_channels' shared by every level "
                            "(e.g. fpnbook.fpn.BackboneWithFPN)")
        if roi_heads is None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes (K, the object classes, at least 1) is needed to build the RoI heads, "
                             f"got {num_classes!r}")
        self.backbone = backbone
        channels, names = backbone.out_channels, list(backbone.names)
        if rpn is None:
            generator = AnchorGenerator(anchor_sizes, [ASPECT_RATIOS] * len(anchor_sizes))
            head = RPNHead(channels, generator.num_anchors_per_location()[0])
            rpn = RegionProposalNetwork(
                generator, head, pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n
            )
        if roi_heads is None:
            pool = MultiScaleRoIAlign(self.roi_names(names), BOX_POOL_SIZE, 2, canonical_scale=canonical_scale)
            roi_heads = RoIHeads(
                pool,
                TwoMLPHead(channels * BOX_POOL_SIZE**2, representation_size),
                BoxPredictor(representation_size, num_classes + 1),  # + the background
                batch_size_per_image=box_batch_size_per_image,
                score_thresh=box_score_thresh,
                nms_thresh=box_nms_thresh,
                detections_per_img=box_detections_per_img,
            )
        self.rpn = rpn
        self.roi_heads = roi_heads

    @staticmethod
    def roi_names(names: Sequence[str]) -> list[str]:
        # P6 exists for the RPN's largest anchors only; RoIs never pool from it (FPN paper, Sec. 4.2).
        return list(names[:-1]) if len(names) > 1 and names[-1] in ("p6", "pool") else list(names)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        with stage("batch_images"):
            batch, image_sizes = batch_images(images)
        if self.training or targets is not None:
            with stage("checks"):  # once per step, here; the RPN and the RoI heads trust CheckedTargets
                targets = check_targets(targets, len(image_sizes), self.roi_heads.box_predictor.num_logits - 1,
                                        image_sizes, masks=self.roi_heads.has_mask())
        features = self.backbone(batch)
        with stage("rpn"):
            proposals, rpn_losses = self.rpn(batch, image_sizes, features, targets if self.training else None)
        with stage("roi_heads"):
            detections, roi_losses = self.roi_heads(features, proposals, image_sizes, targets if self.training else None)
        if self.training:
            return {**rpn_losses, **roi_losses}
        for detection, size in zip(detections, image_sizes):
            if "masks" in detection:
                detection["masks"] = paste_masks_in_image(detection["masks"], detection["boxes"], size)
        return detections


class MaskRCNN(FasterRCNN):
    """Mask R-CNN (He et al. 2017): Faster R-CNN plus a mask branch on the same RoIs.

    As :class:`FasterRCNN`, plus ``mask_roi_pool`` / ``mask_head`` / ``mask_predictor``
    (None builds a 14x14 RoIAlign on the box levels, :class:`MaskHead` with
    ``mask_layers``, and :class:`MaskPredictor` with ``mask_dim_reduced`` channels), and
    ``class_agnostic_mask``. Ignored when ``roi_heads`` is given.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        rpn: RegionProposalNetwork | None = None,
        roi_heads: RoIHeads | None = None,
        *,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
        mask_layers: Sequence[int] = (64,) * 4,
        mask_dim_reduced: int = 64,
        class_agnostic_mask: bool = False,
        canonical_scale: int = CANONICAL_SCALE,
        **kwargs,
    ) -> None:
        super().__init__(backbone, num_classes, rpn, roi_heads, canonical_scale=canonical_scale, **kwargs)
        if roi_heads is not None:
            if not roi_heads.has_mask():
                raise ValueError("roi_heads given to MaskRCNN must have a mask branch")
            return
        if mask_roi_pool is None:
            names = self.roi_names(list(backbone.names))
            mask_roi_pool = MultiScaleRoIAlign(names, MASK_POOL_SIZE, 2, canonical_scale=canonical_scale)
        if mask_head is None:
            mask_head = MaskHead(backbone.out_channels, mask_layers)
        if mask_predictor is None:
            channels = mask_head.out_channels if isinstance(mask_head, MaskHead) else mask_layers[-1]
            mask_predictor = MaskPredictor(channels, mask_dim_reduced, 1 if class_agnostic_mask else num_classes + 1)
        heads = self.roi_heads
        heads.mask_roi_pool, heads.mask_head, heads.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        heads.class_agnostic_mask = class_agnostic_mask


class MaskXRCNN(MaskRCNN):
    """Mask^X R-CNN (Hu et al. 2018): a Mask R-CNN whose mask branch trains on ``mask_classes`` only.

    Inputs and outputs are :class:`fpnbook.rcnn.MaskRCNN`'s. In training every target
    goes through :func:`partial_mask_targets` first: ``has_mask`` [G] is derived from
    ``mask_classes`` when a target lacks it, and a target that marks a mask on another
    class is refused, so the mask loss sees only ``mask_classes`` objects while the box
    losses cover every class. At inference it predicts masks for every class. Build one
    with :func:`to_mask_x` (or :func:`fpnbook.models.build`).
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, mask_classes: Iterable[int]) -> None:
        super().__init__(backbone, rpn=rpn, roi_heads=roi_heads)
        self.mask_classes = check_mask_classes(mask_classes, roi_heads.box_predictor.cls_score.out_features - 1)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is not None:
            targets = partial_mask_targets(targets, self.mask_classes)
        return super().forward(images, targets)

    def extra_repr(self) -> str:
        return f"mask_classes={sorted(self.mask_classes)}"


def to_mask_x(
    model: nn.Module,
    mask_classes: Iterable[int],
    transfer: str | None = "cls+box",
    kind: str = "mlp",
    hidden: int | None = None,
    stop_gradient: bool = True,
    class_agnostic_mlp: bool = False,
) -> MaskXRCNN:
    """A :class:`MaskXRCNN` made of ``model``'s parts, trained with the masks of ``mask_classes`` only.

    ``model`` is an :class:`fpnbook.rcnn.MaskRCNN` (anything whose ``roi_heads`` has
    ``box_predictor``, ``mask_head`` and a ``mask_predictor`` with a ``conv5_mask``
    deconv). ``transfer`` ("cls", "box", "cls+box") replaces the mask predictor by a
    :class:`TransferMaskPredictor` with a ``kind`` T reading those box weights;
    ``transfer=None`` keeps the model's own predictor, which must then be class-agnostic
    (build it with ``class_agnostic_mask=True``): the baseline. ``class_agnostic_mlp``
    adds the :class:`MLPMaskBranch` (the fused head).

    The parts move, they are not copied: ``model``'s RoI heads get the new mask
    predictor, so use the returned model from then on. State dict keys stay those of a
    Mask R-CNN with that predictor, so weights load either way.
    """
    heads = getattr(model, "roi_heads", None)
    for name in ("box_predictor", "mask_head", "mask_predictor"):
        if getattr(heads, name, None) is None:
            raise TypeError(f"model.roi_heads must have a {name} (build the model with fpnbook.models.mask_rcnn_tiny)")
    check_mask_classes(mask_classes, heads.box_predictor.cls_score.out_features - 1)  # before anything changes
    predictor = heads.mask_predictor
    deconv = getattr(predictor, "conv5_mask", None)
    if not isinstance(deconv, nn.ConvTranspose2d):
        raise TypeError("model.roi_heads.mask_predictor must have a conv5_mask deconv (see fpnbook.roi_heads.MaskPredictor)")
    in_channels, dim_reduced = deconv.in_channels, deconv.out_channels
    if transfer is None:
        if not heads.class_agnostic_mask:
            raise ValueError("transfer=None is the class-agnostic baseline: build the model with class_agnostic_mask=True")
    else:
        size = heads.box_predictor.cls_score.in_features
        weight_transfer = WeightTransfer(transfer_input_dim(size, transfer), dim_reduced, hidden, transfer, kind)
        predictor = TransferMaskPredictor(heads.box_predictor, weight_transfer, in_channels, dim_reduced, stop_gradient)
        heads.class_agnostic_mask = False
    if class_agnostic_mlp:
        predictor = FusedMaskPredictor(predictor, in_channels)
    heads.mask_predictor = predictor
    return MaskXRCNN(model.backbone, model.rpn, heads, mask_classes)


RPN_FEATURES = ("c4", "c5", "fpn", "bottom_up", "no_lateral", "p2")


class RPNModel(nn.Module):
    """A trainable RPN on its own, for FPN Table 1 (RPN on C4, on C5, or on the FPN).

    ``backbone``: a module with ``names``/``out_channels``/``strides`` returning C2..C5
    (e.g. :func:`fpnbook.backbone.resnet_tiny`). ``features``:

    - ``"fpn"``: an FPN (``fpn_channels``) with P2..P6; one anchor size per level
      (``anchor_sizes``, default :data:`SMALL_ANCHOR_SIZES`, 16..256) x 3 ratios;
    - ``"c4"`` / ``"c5"``: the single map C4 (stride 16) or C5 (stride 32); all five sizes
      on that one map x 3 ratios = 15 anchors per pixel, as the paper's baselines
      (sizes 32..512 there, 16..256 here for our 256 px images);
    - the paper's ablations of Table 1: ``"bottom_up"`` (d), the FPN without its top-down
      pathway, and ``"no_lateral"`` (e), without its lateral connections (see
      :class:`~fpnbook.fpn.FPN`), anchors as ``"fpn"``; ``"p2"`` (f), the full FPN but only
      its finest map P2, with all five sizes on it as the single-map baselines.

    The rest of the keyword arguments go to :class:`RegionProposalNetwork`.

    forward(images: list of Tensor[3, H, W] in 0..1, targets: list of dicts with ``boxes``)
    -> in training ``{"loss_objectness", "loss_rpn_box_reg"}``; in eval one dict per
    image with ``boxes`` Tensor[P, 4] (XYXY pixels), ``scores`` Tensor[P] (objectness
    probability, best first) and ``levels`` Tensor[P] (0 = the finest map used).
    """

    def __init__(
        self,
        backbone: nn.Module,
        features: str = "fpn",
        *,
        fpn_channels: int = 64,
        anchor_sizes: Sequence[Sequence[float]] = SMALL_ANCHOR_SIZES,
        aspect_ratios: Sequence[float] = ASPECT_RATIOS,
        **rpn_kwargs,
    ) -> None:
        super().__init__()
        if features not in RPN_FEATURES:
            raise ValueError(f"features must be one of {RPN_FEATURES}, got {features!r}")
        self.backbone = backbone
        self.features = features
        channels = dict(zip(backbone.names, backbone.out_channels))
        if features in ("fpn", "bottom_up", "no_lateral"):
            self.fpn = FPN(backbone.out_channels, fpn_channels, LastLevelMaxPool(),
                           top_down=features != "bottom_up", lateral=features != "no_lateral")
            sizes = [tuple(s) for s in anchor_sizes]
            in_channels = fpn_channels
        elif features == "p2":
            self.fpn = FPN(backbone.out_channels, fpn_channels)  # P2..P5; only P2 is read
            sizes = [tuple(s for level in anchor_sizes for s in level)]
            in_channels = fpn_channels
        else:
            self.fpn = None
            sizes = [tuple(s for level in anchor_sizes for s in level)]  # every size on the one map
            in_channels = channels[features]
        generator = AnchorGenerator(sizes, [tuple(aspect_ratios)] * len(sizes))
        head = RPNHead(in_channels, generator.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(generator, head, **rpn_kwargs)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch, image_sizes = batch_images(images)
        if self.training:  # checked once, here, where they enter
            targets = check_targets(targets, len(image_sizes), labels=False)
        maps = self.backbone(batch)
        if self.features == "p2":
            maps = OrderedDict([("p2", self.fpn(maps)["p2"])])
        elif self.fpn is not None:
            maps = self.fpn(maps)
        else:
            maps = OrderedDict([(self.features, maps[self.features])])
        if not self.training:
            return self.rpn.propose(batch, image_sizes, maps)
        anchors, objectness, deltas, _ = self.rpn.predict(batch, image_sizes, maps)
        return self.rpn.losses(anchors, objectness, deltas, targets)
