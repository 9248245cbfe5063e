from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fpnbook.anchors import AnchorGenerator
from fpnbook.backbone import resnet_tiny
from fpnbook.images import batch_images
from fpnbook.rcnn import RPNModel
from fpnbook.rpn import SMALL_ANCHOR_SIZES, RegionProposalNetwork, RPNHead, flatten_predictions, rpn_loss

RATIOS = ((0.5, 1.0, 2.0),) * 5
CHANNELS = 8
PADDED = (96, 128)
IMAGE_SIZES = [(96, 128), (70, 100)]


def copy_head_weights(ours: RPNHead, theirs: tv_rpn.RPNHead) -> None:
    """torchvision's RPNHead keys -> ours (conv.0.0 -> conv, cls_logits -> objectness, bbox_pred -> deltas)."""
    names = {"conv.0.0": "conv", "cls_logits": "objectness", "bbox_pred": "deltas"}
    state = {}
    for key, value in theirs.state_dict().items():
        module, _, param = key.rpartition(".")
        state[f"{names[module]}.{param}"] = value
    ours.load_state_dict(state)


def twin_rpns(seed=0, **kwargs):
    """Our RPN and torchvision's with the same anchors and head weights (re-drawn larger than the init
    so that the deltas move boxes by many pixels and proposals cross the image border)."""
    torch.manual_seed(seed)
    their_head = tv_rpn.RPNHead(CHANNELS, 3)
    for p in their_head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ours_head = RPNHead(CHANNELS, 3)
    copy_head_weights(ours_head, their_head)
    settings = dict(
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n=dict(training=300, testing=200), post_nms_top_n=dict(training=250, testing=150),
        nms_thresh=0.7,
    )
    settings.update(kwargs)
    ours = RegionProposalNetwork(AnchorGenerator(SMALL_ANCHOR_SIZES, RATIOS), ours_head, **settings)
    theirs = tv_rpn.RegionProposalNetwork(TorchvisionAnchorGenerator(SMALL_ANCHOR_SIZES, RATIOS), their_head, **settings)
    return ours, theirs


def inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *PADDED, generator=g)
    features = OrderedDict(
        (f"p{k}", torch.randn(batch, CHANNELS, -(-PADDED[0] // 2**k), -(-PADDED[1] // 2**k), generator=g))
        for k in range(2, 7)
    )
    return images, IMAGE_SIZES[:batch], features


def targets(batch=2):
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0], [5.0, 70.0, 14.0, 79.0]]),
             torch.tensor([[30.0, 30.0, 90.0, 66.0]])]
    return [{"boxes": b} for b in boxes[:batch]]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_proposals_equal_torchvision(training, seed):
    ours, theirs = twin_rpns(seed)
    ours.train(training), theirs.train(training)
    images, sizes, features = inputs(seed)
    t = targets() if training else None
    with torch.no_grad():
        boxes, _ = ours(images, sizes, features, t)
        expected, _ = theirs(ImageList(images, sizes), features, t)
    assert [len(b) for b in boxes] == [len(e) for e in expected]
    assert all(len(b) > 20 for b in boxes)
    for b, e in zip(boxes, expected):
        torch.testing.assert_close(b, e, rtol=0, atol=1e-4)


def test_propose_gives_scores_levels_and_the_same_boxes():
    ours, theirs = twin_rpns(0, score_thresh=0.2)
    ours.eval(), theirs.eval()
    images, sizes, features = inputs()
    proposals = ours.propose(images, sizes, features)
    boxes, _ = ours(images, sizes, features)
    decoded, objectness = torchvision_decoded(theirs, images, sizes, features)
    counts = [m.shape[-2] * m.shape[-1] * 3 for m in features.values()]
    _, expected_scores = theirs.filter_proposals(decoded, objectness, sizes, counts)
    for image, (p, b, s) in enumerate(zip(proposals, boxes, expected_scores)):
        assert torch.equal(p["boxes"], b)
        torch.testing.assert_close(p["scores"], s)
        assert (p["scores"] >= 0.2).all() and (p["scores"][:-1] >= p["scores"][1:]).all()
        assert p["levels"].dtype == torch.int64 and len(set(p["levels"].tolist())) > 1
        # A proposal of level l is one of the boxes decoded from level l's anchors.
        per_level = [clip(x, sizes[image]) for x in decoded[image].split(counts)]
        for box, level in zip(p["boxes"], p["levels"]):
            assert (per_level[level] == box).all(dim=1).any()


def clip(boxes, size):
    return torch.stack([boxes[:, 0].clamp(0, size[1]), boxes[:, 1].clamp(0, size[0]),
                        boxes[:, 2].clamp(0, size[1]), boxes[:, 3].clamp(0, size[0])], dim=1)


def torchvision_decoded(theirs, images, sizes, features):
    maps = list(features.values())
    with torch.no_grad():
        objectness, deltas = theirs.head(maps)
        anchors = theirs.anchor_generator(ImageList(images, sizes), maps)
        objectness, deltas = tv_rpn.concat_box_prediction_layers(objectness, deltas)
        proposals = theirs.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    return proposals, objectness


def test_flatten_predictions_matches_torchvision_layout():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 3, 5, 7, generator=g), torch.randn(2, 3, 3, 4, generator=g)]
    deltas = [torch.randn(2, 12, 5, 7, generator=g), torch.randn(2, 12, 3, 4, generator=g)]
    flat_logits, flat_deltas = flatten_predictions(logits, deltas)
    expected_logits, expected_deltas = tv_rpn.concat_box_prediction_layers(logits, deltas)
    assert torch.equal(flat_logits.reshape(-1, 1), expected_logits)
    assert torch.equal(flat_deltas.reshape(-1, 4), expected_deltas)


def test_labels_and_regression_targets_equal_torchvision():
    ours, theirs = twin_rpns()
    images, sizes, features = inputs()
    t = targets()
    anchors = ours.anchor_generator(PADDED, features)
    labels, regression = ours.assign_targets(anchors, t)
    their_labels, matched = theirs.assign_targets_to_anchors([anchors, anchors], t)
    their_regression = theirs.box_coder.encode(matched, [anchors, anchors])
    for ours_l, theirs_l, ours_r, theirs_r, target in zip(labels, their_labels, regression, their_regression, t):
        assert torch.equal(ours_l, theirs_l)
        positive = ours_l == 1
        # Every object has an anchor, the 9 px one through a low-quality match.
        assert positive.sum() >= len(target["boxes"])
        torch.testing.assert_close(ours_r[positive], theirs_r[positive], rtol=0, atol=1e-5)


def test_losses_equal_torchvision_with_the_same_seed():
    ours, theirs = twin_rpns()
    ours.train(), theirs.train()
    images, sizes, features = inputs()
    t = targets()
    torch.manual_seed(123)
    _, losses = ours(images, sizes, features, t)
    torch.manual_seed(123)
    _, expected = theirs(ImageList(images, sizes), features, t)
    assert set(losses) == set(expected) == {"loss_objectness", "loss_rpn_box_reg"}
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key], rtol=1e-5, atol=1e-6)
    assert losses["loss_rpn_box_reg"] > 0


def test_rpn_loss_given_a_sample():
    objectness = torch.tensor([2.0, -1.0, 0.5, 3.0])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.05, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    regression_targets = torch.zeros(4, 4)
    pos = torch.tensor([True, False, True, False])
    neg = torch.tensor([False, True, False, False])  # anchor 3 not sampled: its wild deltas do not count
    loss_obj, loss_box = rpn_loss(objectness, deltas, labels, regression_targets, pos, neg)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(objectness[:3], labels[:3])
    torch.testing.assert_close(loss_obj, bce)
    # smooth L1 with beta 1/9 below beta: 0.5 x^2 / beta; divided by the 3 sampled anchors.
    torch.testing.assert_close(loss_box, torch.tensor(0.5 * 0.05**2 * 9 / 3))


def test_image_without_objects():
    ours, theirs = twin_rpns()
    ours.train(), theirs.train()
    images, sizes, features = inputs()
    t = [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}]
    torch.manual_seed(0)
    proposals, losses = ours(images, sizes, features, t)
    torch.manual_seed(0)
    _, expected = theirs(ImageList(images, sizes), features, t)
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_objectness"] > 0
    torch.testing.assert_close(losses["loss_objectness"], expected["loss_objectness"])
    assert all(len(p) > 0 for p in proposals)


def test_gradients_reach_the_head_but_not_through_proposals():
    ours, _ = twin_rpns()
    ours.train()
    images, sizes, features = inputs()
    proposals, losses = ours(images, sizes, features, targets())
    assert not any(p.requires_grad for p in proposals)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.head.parameters())


def test_bad_input_raises():
    ours, _ = twin_rpns()
    images, sizes, features = inputs()
    ours.train()
    with pytest.raises(ValueError, match="targets"):
        ours(images, sizes, features)
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]"):
        ours(images, sizes, features, [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.tensor([[5.0, 5.0, 1.0, 9.0]])}])
    with pytest.raises(ValueError, match="one dict per image"):
        ours(images, sizes, features, targets(batch=1))
    ours.eval()
    with pytest.raises(ValueError, match="image_sizes"):
        ours(images, sizes[:1], features)
    with pytest.raises(ValueError, match=r"image_sizes\[0\]"):
        ours(images, [(200, 128), (70, 100)], features)
    with pytest.raises(ValueError, match="levels"):
        ours(images, sizes, OrderedDict(list(features.items())[:3]))
    wrong_head = RegionProposalNetwork(AnchorGenerator(SMALL_ANCHOR_SIZES, RATIOS), RPNHead(CHANNELS, 9))
    with pytest.raises(ValueError, match="anchors per pixel"):
        wrong_head.eval()(images, sizes, features)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        RegionProposalNetwork(AnchorGenerator(), RPNHead(CHANNELS, 3), pre_nms_top_n=dict(train=1, test=1))


def test_head_init_and_shapes():
    head = RPNHead(16, 3)
    for conv in (head.conv, head.objectness, head.deltas):
        assert conv.weight.std() < 0.02 and conv.bias.abs().sum() == 0
    logits, deltas = head([torch.randn(2, 16, 8, 6), torch.randn(2, 16, 4, 3)])
    assert [list(x.shape) for x in logits] == [[2, 3, 8, 6], [2, 3, 4, 3]]
    assert [list(x.shape) for x in deltas] == [[2, 12, 8, 6], [2, 12, 4, 3]]


@pytest.mark.parametrize("features, anchors_per_pixel", [("fpn", 3), ("c4", 15), ("c5", 15), ("bottom_up", 3),
                                                       ("no_lateral", 3), ("p2", 15)])
def test_rpn_model_trains_and_proposes(features, anchors_per_pixel):
    torch.manual_seed(0)
    model = RPNModel(resnet_tiny(), features, pre_nms_top_n=dict(training=200, testing=100),
                     post_nms_top_n=dict(training=100, testing=50))
    assert model.rpn.anchor_generator.num_anchors_per_location()[0] == anchors_per_pixel
    images = [torch.rand(3, 96, 128), torch.rand(3, 70, 100)]
    losses = model(images, targets())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    out = model(images)
    assert len(out) == 2
    for o, image in zip(out, images):
        assert set(o) == {"boxes", "scores", "levels"} and 0 < len(o["boxes"]) <= 50
        assert (o["boxes"][:, 2] <= image.shape[2]).all() and (o["boxes"][:, 3] <= image.shape[1]).all()
    with pytest.raises(ValueError, match="features"):
        RPNModel(resnet_tiny(), "c3")


def test_rpn_model_training_losses_equal_the_full_rpn_and_select_no_proposals(monkeypatch):
    torch.manual_seed(0)
    model = RPNModel(resnet_tiny(), "fpn")
    images = [torch.rand(3, 96, 128), torch.rand(3, 70, 100)]
    batch, sizes = batch_images(images)
    torch.manual_seed(1)
    maps = model.fpn(model.backbone(batch))
    expected = model.rpn(batch, sizes, maps, targets())[1]  # forward: proposals and losses
    monkeypatch.setattr(model.rpn, "select_proposals", lambda *a, **k: pytest.fail("a lone RPN selected proposals"))
    torch.manual_seed(1)
    losses = model(images, targets())
    for name in expected:
        torch.testing.assert_close(losses[name], expected[name])
    with pytest.raises(ValueError, match="targets"):
        model(images)
