from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TorchvisionTwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from fpnbook.boxes import clip_boxes_to_image
from fpnbook.roi_heads import (
    BoxPredictor,
    MaskHead,
    MaskPredictor,
    RoIHeads,
    TwoMLPHead,
    mask_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
    softmax_mask_loss,
    softmax_mask_probs,
)
from fpnbook.rcnn import MultiScaleRoIAlign  # fpnbook.poolers' (torchvision's until it lands)

CHANNELS, NUM_LOGITS = 8, 4
PADDED = (96, 128)
IMAGE_SIZES = [(96, 128), (80, 100)]
NAMES = ["p2", "p3", "p4", "p5"]


def features(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(batch, CHANNELS, PADDED[0] // 2**k, PADDED[1] // 2**k, generator=g))
        for name, k in zip(NAMES, range(2, 6))
    )


def make_targets(seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0], [5.0, 70.0, 30.0, 94.0]]),
             torch.tensor([[30.0, 30.0, 90.0, 66.0]])]
    labels = [torch.tensor([1, 3, 2]), torch.tensor([2])]
    out = []
    for b, l, (h, w) in zip(boxes, labels, IMAGE_SIZES):
        masks = torch.zeros(len(b), h, w)
        for m, box in zip(masks, b.long()):
            region = torch.rand(box[3] - box[1], box[2] - box[0], generator=g) > 0.3
            m[box[1]:box[3], box[0]:box[2]] = region.float()
        out.append({"boxes": b, "labels": l, "masks": masks})
    return out


def make_proposals(targets, count=300, seed=0):
    """Random boxes plus boxes jittered around each object, so that both classes of RoI exist."""
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for t, (h, w) in zip(targets, IMAGE_SIZES):
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w - 20.0, h - 20.0])
        wh = 8 + torch.rand(count, 2, generator=g) * 60
        random_boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], dim=1)
        jitter = t["boxes"].repeat(20, 1) + torch.randn(20 * len(t["boxes"]), 4, generator=g) * 3
        jitter = torch.cat([jitter[:, :2], torch.maximum(jitter[:, 2:], jitter[:, :2] + 1)], dim=1)
        proposals.append(torch.cat([random_boxes, jitter]))
    return proposals


def twin_heads(mask=True, seed=0, **kwargs):
    """Our RoIHeads and torchvision's, with the same poolers and weights."""
    torch.manual_seed(seed)
    box_pool = MultiScaleRoIAlign(NAMES, 7, 2)
    mask_pool = MultiScaleRoIAlign(NAMES, 14, 2)
    their_box_head = TorchvisionTwoMLPHead(CHANNELS * 49, 32)
    their_predictor = FastRCNNPredictor(32, NUM_LOGITS)
    # Larger class weights than the init so that scores spread and NMS has work to do.
    torch.nn.init.normal_(their_predictor.cls_score.weight, std=0.5)
    box_head, predictor = TwoMLPHead(CHANNELS * 49, 32), BoxPredictor(32, NUM_LOGITS)
    box_head.load_state_dict(their_box_head.state_dict())
    predictor.load_state_dict(their_predictor.state_dict())
    settings = dict(fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=128, positive_fraction=0.25,
                    score_thresh=0.05, nms_thresh=0.5, detections_per_img=40)
    settings.update(kwargs)
    mask_modules, their_mask_modules = {}, {}
    if mask:
        their_mask_head = MaskRCNNHeads(CHANNELS, (16, 16), 1)
        their_mask_predictor = MaskRCNNPredictor(16, 16, NUM_LOGITS)
        mask_head, mask_predictor = MaskHead(CHANNELS, (16, 16)), MaskPredictor(16, 16, NUM_LOGITS)
        copy_mask_head(mask_head, their_mask_head)
        mask_predictor.load_state_dict(their_mask_predictor.state_dict())
        mask_modules = dict(mask_roi_pool=mask_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        their_mask_modules = dict(mask_roi_pool=mask_pool, mask_head=their_mask_head, mask_predictor=their_mask_predictor)
    ours = RoIHeads(box_pool, box_head, predictor, **settings, **mask_modules)
    theirs = tv_roi_heads.RoIHeads(box_pool, their_box_head, their_predictor, bbox_reg_weights=None, **settings,
                                   **their_mask_modules)
    return ours, theirs


def copy_mask_head(ours: MaskHead, theirs: MaskRCNNHeads) -> None:
    # torchvision: "{i}.0.weight" (Conv2dNormActivation); ours: "{2i}.weight" (conv, relu, conv, relu, ...).
    ours.load_state_dict({f"{2 * int(k.split('.')[0])}.{k.split('.')[-1]}": v for k, v in theirs.state_dict().items()})


def test_sampling_512_rois_with_a_quarter_foreground():
    heads, _ = twin_heads(mask=False, batch_size_per_image=512)
    targets = make_targets()
    proposals = make_proposals(targets, count=1500)
    proposals[1] = proposals[1][:1500]  # random boxes only: few foreground
    rois, matched, labels, regression = heads.select_training_samples(proposals, targets)
    assert [len(r) for r in rois] == [512, 512]
    assert (labels[0] > 0).sum() == 128
    # Image 1 has fewer than 128 foreground candidates (its proposals and its ground truth): all are kept.
    iou = tv_roi_heads.box_ops.box_iou(targets[1]["boxes"], proposals[1]).max(dim=0).values
    assert (labels[1] > 0).sum() == (iou >= 0.5).sum() + 1 < 128
    assert all(len(m) == len(r) == len(t) for m, r, t in zip(matched, rois, regression))
    for image_rois, image_labels, image_matched, target in zip(rois, labels, matched, targets):
        fg = image_labels > 0
        assert torch.equal(image_labels[fg], target["labels"][image_matched[fg]])
        iou = tv_roi_heads.box_ops.box_iou(target["boxes"], image_rois).max(dim=0).values
        assert (iou[fg] >= 0.5).all() and (iou[~fg] < 0.5).all()


def test_few_proposals_keep_every_foreground():
    heads, _ = twin_heads(mask=False, batch_size_per_image=512)
    targets = make_targets()
    proposals = make_proposals(targets, count=50)
    rois, _, labels, _ = heads.select_training_samples(proposals, targets)
    for image_rois, image_labels, image_proposals, target in zip(rois, labels, proposals, targets):
        # Fewer candidates than the batch: every proposal and every ground truth is used.
        assert len(image_rois) == len(image_proposals) + len(target["boxes"]) < 512
        assert 0 < (image_labels > 0).sum() <= 128


@pytest.mark.parametrize("mask", [False, True])
def test_training_losses_equal_torchvision_with_the_same_seed(mask):
    ours, theirs = twin_heads(mask=mask)
    ours.train(), theirs.train()
    feats, targets = features(), make_targets()
    if not mask:
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    proposals = make_proposals(targets)
    torch.manual_seed(7)
    _, losses = ours(feats, [p.clone() for p in proposals], IMAGE_SIZES, targets)
    torch.manual_seed(7)
    _, expected = theirs(feats, [p.clone() for p in proposals], IMAGE_SIZES, targets)
    assert set(losses) == set(expected) == {"loss_classifier", "loss_box_reg"} | ({"loss_mask"} if mask else set())
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", [False, True])
def test_eval_detections_equal_torchvision_given_the_same_proposals(mask):
    ours, theirs = twin_heads(mask=mask)
    ours.eval(), theirs.eval()
    feats, proposals = features(1), make_proposals(make_targets(), seed=1)
    with torch.no_grad():
        detections, losses = ours(feats, proposals, IMAGE_SIZES)
        expected, _ = theirs(feats, proposals, IMAGE_SIZES)
    assert losses == {}
    for d, e in zip(detections, expected):
        assert set(d) == set(e) == {"boxes", "labels", "scores"} | ({"masks"} if mask else set())
        assert 0 < len(d["boxes"]) <= 40
        assert torch.equal(d["labels"], e["labels"])
        for key in d:
            torch.testing.assert_close(d[key], e[key], rtol=1e-5, atol=1e-5)
        if mask:
            assert d["masks"].shape == (len(d["boxes"]), 1, 28, 28)


def test_postprocess_equals_torchvision():
    ours, theirs = twin_heads(mask=False)
    g = torch.Generator().manual_seed(3)
    proposals = make_proposals(make_targets(), count=200, seed=3)
    count = sum(len(p) for p in proposals)
    class_logits = torch.randn(count, NUM_LOGITS, generator=g) * 3
    box_regression = torch.randn(count, NUM_LOGITS * 4, generator=g) * 2
    boxes, scores, labels = ours.postprocess_detections(class_logits, box_regression, proposals, IMAGE_SIZES)
    expected = theirs.postprocess_detections(class_logits, box_regression, proposals, IMAGE_SIZES)
    for ours_part, their_part in zip((boxes, scores, labels), expected):
        for a, b in zip(ours_part, their_part):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert all((s > 0.05).all() for s in scores) and all(((l >= 1) & (l < NUM_LOGITS)).all() for l in labels)
    for b, (h, w) in zip(boxes, IMAGE_SIZES):
        assert (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all() and (b >= 0).all()


def test_mask_targets_equal_torchvision_project_masks_on_boxes():
    targets = make_targets()
    g = torch.Generator().manual_seed(0)
    for target, proposals in zip(targets, make_proposals(targets, count=30)):
        matched = torch.randint(len(target["boxes"]), (len(proposals),), generator=g)
        for masks in (target["masks"], target["masks"].to(torch.uint8)):
            ours = project_masks_on_boxes(masks, proposals, matched, 28)
            expected = tv_roi_heads.project_masks_on_boxes(masks, proposals, matched, 28)
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert project_masks_on_boxes(targets[0]["masks"], torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 28).shape == (0, 28, 28)


def test_mask_loss_reads_only_the_ground_truth_class_channel():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, NUM_LOGITS, 28, 28, generator=g, requires_grad=True)
    channels = torch.tensor([1, 3, 2, 2, 1, 3])
    mask_targets = (torch.rand(6, 28, 28, generator=g) > 0.5).float()
    loss = mask_loss(logits, channels, mask_targets)
    loss.backward()
    touched = logits.grad.abs().sum(dim=(2, 3)) > 0
    assert torch.equal(touched, torch.nn.functional.one_hot(channels, NUM_LOGITS).bool())
    # Sigmoid per pixel, not softmax over classes: the loss equals BCE of the picked channel alone.
    picked = logits.detach()[torch.arange(6), channels]
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(picked, mask_targets))
    empty = torch.randn(0, NUM_LOGITS, 28, 28, requires_grad=True)
    zero = mask_loss(empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28))
    assert zero == 0 and zero.requires_grad


def test_softmax_mask_loss_is_a_per_pixel_multinomial_that_touches_every_channel():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, NUM_LOGITS, 28, 28, generator=g, requires_grad=True)
    labels = torch.tensor([1, 3, 2, 2, 1])
    mask_targets = (torch.rand(5, 28, 28, generator=g) > 0.5).float()
    loss = softmax_mask_loss(logits, labels, mask_targets)
    loss.backward()
    assert (logits.grad.abs().sum(dim=(2, 3)) > 0).all()  # the classes compete
    # By hand: -log of the softmax probability of the pixel's class, averaged over pixels.
    log_probs = logits.detach().log_softmax(dim=1)
    pixel_class = torch.where(mask_targets.bool(), labels[:, None, None], torch.zeros_like(labels)[:, None, None])
    expected = -log_probs.gather(1, pixel_class[:, None]).mean()
    torch.testing.assert_close(loss, expected)
    probs = softmax_mask_probs(logits.detach(), labels)
    assert probs.shape == (5, 1, 28, 28)
    torch.testing.assert_close(probs[:, 0], log_probs.exp()[torch.arange(5), labels])
    empty = torch.randn(0, NUM_LOGITS, 28, 28, requires_grad=True)
    zero = softmax_mask_loss(empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28))
    assert zero == 0 and zero.requires_grad


class CountingPredictor(MaskPredictor):
    """A MaskPredictor that remembers how many RoIs it saw and keeps their logits' gradients."""

    def forward(self, x):
        self.seen = x.shape[0]
        self.logits = super().forward(x)
        self.logits.retain_grad()
        return self.logits


def test_has_mask_false_objects_get_no_mask_loss():
    heads, _ = twin_heads(mask=True)
    predictor = CountingPredictor(16, 16, NUM_LOGITS)
    heads.mask_predictor = predictor
    heads.train()
    feats = features()
    targets = make_targets()
    targets[0]["has_mask"] = torch.tensor([True, False, True])
    targets[1]["has_mask"] = torch.tensor([False])
    # Masks of objects without one may hold anything: NaN would poison the loss if one pixel were read.
    targets[0]["masks"][1] = float("nan")
    targets[1]["masks"][0] = float("nan")
    proposals = make_proposals(targets)
    torch.manual_seed(0)
    _, losses = heads(feats, proposals, IMAGE_SIZES, targets)
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0
    losses["loss_mask"].backward()
    # Repeat the sampling to see which RoIs went to the mask branch: positives matched to objects 0 and 2 only.
    torch.manual_seed(0)
    rois, matched, labels, _ = heads.select_training_samples(proposals, targets)
    expected = int(((labels[0] > 0) & (matched[0] != 1)).sum())
    assert 0 < expected < int((labels[0] > 0).sum() + (labels[1] > 0).sum())
    assert predictor.seen == expected
    assert torch.isfinite(predictor.logits.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in heads.mask_head.parameters())


def test_no_mask_at_all_gives_zero_mask_loss_and_zero_gradients():
    heads, _ = twin_heads(mask=True)
    heads.train()
    targets = make_targets()
    for t in targets:
        t["has_mask"] = torch.zeros(len(t["boxes"]), dtype=torch.bool)
    _, losses = heads(features(), make_proposals(targets), IMAGE_SIZES, targets)
    assert losses["loss_mask"] == 0
    losses["loss_mask"].backward()
    for p in heads.mask_predictor.parameters():
        assert p.grad is not None and p.grad.abs().sum() == 0  # connected to the graph, but zero


@pytest.mark.parametrize("has_mask", [False, True], ids=["no-has_mask", "empty-has_mask"])
def test_image_without_objects_trains(has_mask):
    heads, _ = twin_heads(mask=True)
    heads.train()
    targets = make_targets()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 80, 100)}
    if has_mask:  # partial supervision gives every image a has_mask, an empty one here (this once crashed)
        targets[0]["has_mask"] = torch.ones(len(targets[0]["boxes"]), dtype=torch.bool)
        targets[1]["has_mask"] = torch.zeros(0, dtype=torch.bool)
    _, losses = heads(features(), make_proposals(targets), IMAGE_SIZES, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_class_agnostic_mask():
    heads, _ = twin_heads(mask=True)
    heads.mask_predictor = MaskPredictor(16, 16, 1)
    heads.class_agnostic_mask = True
    heads.train()
    targets = make_targets()
    _, losses = heads(features(), make_proposals(targets), IMAGE_SIZES, targets)
    assert torch.isfinite(losses["loss_mask"])
    heads.eval()
    detections, _ = heads(features(), make_proposals(targets), IMAGE_SIZES)
    with torch.no_grad():
        logits = heads.mask_logits(features(), [d["boxes"] for d in detections], IMAGE_SIZES)
    torch.testing.assert_close(torch.cat([d["masks"] for d in detections]), logits.sigmoid())
    heads.mask_predictor = MaskPredictor(16, 16, NUM_LOGITS)
    with pytest.raises(ValueError, match="class_agnostic_mask"):
        heads(features(), make_proposals(targets), IMAGE_SIZES)


def test_mask_predictor_contract_lets_class_weights_be_replaced():
    theirs = MaskRCNNPredictor(16, 12, NUM_LOGITS)
    ours = MaskPredictor(16, 12, NUM_LOGITS)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 16, 14, 14)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(x).shape == (3, NUM_LOGITS, 28, 28)

    class Transferred(MaskPredictor):
        def __init__(self, source):
            super().__init__(16, 12, NUM_LOGITS)
            self.source = source  # e.g. the box predictor; here any [num_classes, 12] weight

        def class_weights(self):
            return self.source, torch.zeros(NUM_LOGITS)

    tau = torch.randn(NUM_LOGITS, 12)
    transferred = Transferred(tau)
    expected = torch.einsum("kdhw,cd->kchw", transferred.upsample(x), tau)
    torch.testing.assert_close(transferred(x), expected)


def test_heads_shapes():
    assert TwoMLPHead(8 * 49, 32)(torch.randn(5, 8, 7, 7)).shape == (5, 32)
    logits, deltas = BoxPredictor(32, NUM_LOGITS)(torch.randn(5, 32))
    assert logits.shape == (5, NUM_LOGITS) and deltas.shape == (5, NUM_LOGITS * 4)
    assert MaskHead(8, (16,) * 4)(torch.randn(2, 8, 14, 14)).shape == (2, 16, 14, 14)
    with pytest.raises(ValueError, match="num_logits"):
        BoxPredictor(32, 1)


def test_paste_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 1, 28, 28, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([140.0, 110.0]) - 20
    wh = torch.rand(40, 2, generator=g) ** 2 * 120 + 0.3  # from sub-pixel to larger than the mask
    # Clipped to the image, as detections are (torchvision's paste fails on boxes wholly outside);
    # the 1-cell padding still grows boxes at the border past the image.
    boxes = clip_boxes_to_image(torch.cat([xy, xy + wh], dim=1), (96, 128))
    ours = paste_masks_in_image(masks, boxes, (96, 128))
    expected = tv_roi_heads.paste_masks_in_image(masks, boxes, (96, 128))
    assert ours.shape == expected.shape == (40, 1, 96, 128)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert paste_masks_in_image(masks[:0], boxes[:0], (5, 7)).shape == (0, 1, 5, 7)
    outside = torch.tensor([[-50.0, 10.0, -20.0, 30.0], [10.0, 120.0, 40.0, 150.0]])
    assert paste_masks_in_image(masks[:2], outside, (96, 128)).abs().sum() == 0
    with pytest.raises(ValueError, match="masks"):
        paste_masks_in_image(masks[:, 0], boxes, (96, 128))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(masks, boxes[:3], (96, 128))


@settings(max_examples=30, deadline=None)
@given(
    x1=st.floats(-30, 90), y1=st.floats(-30, 60), w=st.floats(0, 100), h=st.floats(0, 100),
    size=st.sampled_from([14, 28]), height=st.integers(1, 70), width=st.integers(1, 90),
)
def test_paste_equals_torchvision_property(x1, y1, w, h, size, height, width):
    mask = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    box = clip_boxes_to_image(torch.tensor([[x1, y1, x1 + w, y1 + h]]), (height, width))
    ours = paste_masks_in_image(mask, box, (height, width))
    torch.testing.assert_close(ours, tv_roi_heads.paste_masks_in_image(mask, box, (height, width)), rtol=0, atol=1e-5)


def test_bad_targets_raise():
    heads, _ = twin_heads(mask=True)
    heads.train()
    feats, targets = features(), make_targets()
    proposals = make_proposals(targets, count=20)
    with pytest.raises(ValueError, match="targets must be given"):
        heads(feats, proposals, IMAGE_SIZES)
    bad = [dict(t) for t in targets]
    bad[0]["labels"] = torch.tensor([1, 0, 2])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        heads(feats, proposals, IMAGE_SIZES, bad)
    bad = [dict(t) for t in targets]
    bad[1]["labels"] = torch.tensor([NUM_LOGITS])
    with pytest.raises(ValueError, match="num_classes"):
        heads(feats, proposals, IMAGE_SIZES, bad)
    bad = [dict(t) for t in targets]
    bad[1]["masks"] = torch.zeros(1, 96, 128)
    with pytest.raises(ValueError, match=r"targets\[1\]\['masks'\]"):
        heads(feats, proposals, IMAGE_SIZES, bad)
    bad = [dict(t) for t in targets]
    bad[0]["has_mask"] = torch.tensor([1, 0, 1])
    with pytest.raises(ValueError, match="has_mask"):
        heads(feats, proposals, IMAGE_SIZES, bad)
    with pytest.raises(ValueError, match="mask branch"):
        RoIHeads(heads.box_roi_pool, heads.box_head, heads.box_predictor, mask_head=heads.mask_head)
