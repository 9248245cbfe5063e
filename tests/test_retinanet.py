
import pytest
import torch
from torch import nn

from fpnbook.anchors import AnchorGenerator
from fpnbook.images import batch_images
from fpnbook.interop import retinanet_head_key, to_torchvision
from fpnbook.losses import sigmoid_focal_loss
from fpnbook.models import retinanet_tiny
from fpnbook.retinanet import (
    RetinaNet,
    RetinaNetHead,
    default_anchor_generator,
)

K = 3  # object classes


def tiny(**kwargs):
    torch.manual_seed(0)
    return retinanet_tiny(K, out_channels=32, **kwargs)


def images_and_targets():
    """Two images of different sizes (both padded to 128 x 128), one with objects, one without."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 120.0, 60.0], [5.0, 5.0, 13.0, 12.0]]),
         "labels": torch.tensor([1, 3, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # fmt: skip
    return images, targets


def test_head_output_shapes_and_order():
    head = RetinaNetHead(in_channels=8, num_anchors=9, num_classes=K)
    maps = [torch.randn(2, 8, 16, 12), torch.randn(2, 8, 8, 6), torch.randn(2, 8, 4, 3)]
    out = head(maps)
    rows = sum(m.shape[-2] * m.shape[-1] * 9 for m in maps)
    assert out["cls_logits"].shape == (2, rows, K)
    assert out["bbox_regression"].shape == (2, rows, 4)
    # Row (y * w + x) * A + a of level 0 is logit channel a * K + k at pixel (y, x).
    raw = head.cls_logits(head.cls_subnet(maps[0]))
    y, x, a, k = 5, 7, 4, 2
    assert out["cls_logits"][1, (y * 12 + x) * 9 + a, k] == raw[1, a * K + k, y, x]
    assert len(head.cls_subnet) == len(head.box_subnet) == 4


def test_head_initialisation():
    head = RetinaNetHead(in_channels=64, num_anchors=9, num_classes=K, prior=0.01)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10
    for conv in convs:
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert conv is head.cls_logits or (conv.bias == 0).all()
    torch.testing.assert_close(torch.sigmoid(head.cls_logits.bias), torch.full((9 * K,), 0.01))


def test_prior_gives_initial_foreground_probability_of_one_percent():
    model = tiny().eval()
    images, _ = images_and_targets()
    with torch.no_grad():
        batch, _ = batch_images(images)
        probs = torch.sigmoid(model.head(model.backbone(batch))["cls_logits"])
    assert probs.mean().item() == pytest.approx(0.01, rel=0.05)
    assert probs.max().item() < 0.02
    # So nothing passes the 0.05 score threshold yet.
    assert all(len(d["boxes"]) == 0 for d in model(images))


def test_train_losses_finite_and_positive():
    model = tiny().train()
    images, targets = images_and_targets()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    for value in losses.values():
        assert value.ndim == 0 and torch.isfinite(value) and value > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("head_norm", [None, "gn"])
def test_sgd_overfits_one_image(head_norm):
    model = tiny(head_norm=head_norm).train()
    images, targets = images_and_targets()
    images, targets = images[:1], targets[:1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    for _ in range(20):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    # Without normalisation the narrow head starts slowly (1.80 -> 1.53 here); with GroupNorm
    # it learns much faster (1.90 -> 0.49).
    assert history[-1] < (0.4 if head_norm == "gn" else 0.9) * history[0]
    if head_norm is None:
        assert history == sorted(history, reverse=True)  # every step helps


def test_images_without_objects_train_and_predict():
    model = tiny().train()
    images, targets = images_and_targets()
    losses = model(images[1:], targets[1:])
    assert losses["bbox_regression"].item() == 0
    assert losses["classification"].item() > 0  # every anchor is a negative
    sum(losses.values()).backward()
    assert model.head.cls_logits.bias.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(-20.0)  # nothing scores above the threshold
        (detections,) = model(images[1:])
    assert detections["boxes"].shape == (0, 4) and detections["labels"].dtype == torch.int64
    assert detections["scores"].shape == (0,)


def test_eval_output_format():
    model = tiny(detections_per_img=50).eval()
    with torch.no_grad():
        model.head.cls_logits.bias.zero_()  # every (anchor, class) scores ~0.5
        model.head.bbox_pred.weight.normal_(std=0.3)
    images, _ = images_and_targets()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for image, det in zip(images, detections):
        assert set(det) == {"boxes", "labels", "scores"}
        n = len(det["scores"])
        assert 0 < n <= 50
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and det["labels"].min() >= 1 and det["labels"].max() <= K
        assert (det["scores"] > 0.05).all() and (det["scores"][:-1] >= det["scores"][1:]).all()
        height, width = image.shape[-2:]
        boxes = det["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()


def test_matching_rules():
    model = tiny()
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 5.5],  # IoU 0.55 with the first box: foreground
        [0.0, 0.0, 10.0, 4.5],  # IoU 0.45: ignored
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.50: foreground (>= 0.5)
        [50.0, 50.0, 60.0, 60.0],  # no overlap: background
        [98.0, 98.0, 114.0, 114.0],  # IoU 0.0625 with the tiny box, its best anchor: kept as foreground
        [90.0, 90.0, 130.0, 130.0],  # IoU 0.01 with the tiny box: background
        [0.0, 0.0, 10.0, 3.0],  # IoU 0.30: background
    ])  # fmt: skip
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 104.0, 104.0]]), "labels": torch.tensor([2, 1])}]
    matched = model.match(targets, anchors)
    assert matched.tolist() == [[0, -2, 0, -1, 1, -1, -1]]
    # What the loss asks of each anchor: the class of its object (0 for background and ignored), and whether it counts.
    same, labels, counted, gt_boxes = model.anchor_targets(targets, anchors)
    assert same.tolist() == matched.tolist() and labels.tolist() == [[2, 0, 2, 0, 1, 0, 0]]
    assert counted.tolist() == [[True, False, True, True, True, True, True]]
    torch.testing.assert_close(gt_boxes[0], targets[0]["boxes"])

    # The loss: focal loss over the non-ignored anchors / number of foreground anchors (3).
    g = torch.Generator().manual_seed(0)
    head_outputs = {"cls_logits": torch.randn(1, 7, K, generator=g), "bbox_regression": torch.randn(1, 7, 4, generator=g)}
    losses = model.compute_loss(targets, head_outputs, anchors)
    cls_targets = torch.zeros(7, K)
    cls_targets[[0, 2], 1] = 1.0  # label 2 -> channel 1
    cls_targets[4, 0] = 1.0
    valid = torch.tensor([True, False, True, True, True, True, True])
    expected = sigmoid_focal_loss(head_outputs["cls_logits"][0][valid], cls_targets[valid], reduction="sum") / 3
    torch.testing.assert_close(losses["classification"], expected)
    # Changing the ignored anchor's outputs changes nothing.
    head_outputs["cls_logits"][0, 1] = 50.0
    torch.testing.assert_close(model.compute_loss(targets, head_outputs, anchors)["classification"], expected)


def test_loss_options_for_table_1():
    images, targets = images_and_targets()
    losses = {}
    for loss in ("focal", "ce", "alpha_ce"):
        model = tiny(loss=loss, prior=0.3)
        torch.manual_seed(0)
        losses[loss] = model(images[:1], targets[:1])["classification"]
    # With p = 0.3 everywhere the negatives dominate: α-CE weighs them by 0.75, FL far less.
    assert losses["focal"] < losses["alpha_ce"] < losses["ce"]
    model = tiny(loss="ce")
    assert model.focal_params() == (0.0, -1.0)
    assert tiny(loss="alpha_ce", focal_alpha=0.5).focal_params() == (0.0, 0.5)
    assert tiny(focal_gamma=1.0).focal_params() == (1.0, 0.25)


def test_default_anchors_and_tiny_builder():
    model = tiny()
    assert model.backbone.strides == [8, 16, 32, 64, 128]
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    sizes = default_anchor_generator().sizes
    assert sizes[0][0] == 16 and sizes[-1][0] == 256
    assert sizes[0][2] == pytest.approx(16 * 2 ** (2 / 3))


def torchvision_twin(model: RetinaNet, image_size: tuple[int, int]) -> nn.Module:
    """torchvision's RetinaNet on the same backbone module, anchors and head weights, without resizing."""
    return to_torchvision(model, image_size, copy_backbone=False)


def randomise_head(model: RetinaNet) -> None:
    """Spread the outputs so that scores vary and many boxes pass the threshold."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.head.cls_logits.bias.add_(-1.0)


@pytest.mark.parametrize("head_norm", [None, "gn"])
def test_equals_torchvision(head_norm):
    model = tiny(head_norm=head_norm)
    randomise_head(model)
    theirs = torchvision_twin(model, (96, 128))
    images, targets = images_and_targets()

    # Head outputs: ours drop torchvision's background channel 0.
    x = [torch.randn(2, 32, s, s) for s in (16, 8, 4, 2, 1)]
    ours_out, their_out = model.head(x), theirs.head(x)
    torch.testing.assert_close(ours_out["cls_logits"], their_out["cls_logits"][..., 1:], rtol=0, atol=0)
    torch.testing.assert_close(ours_out["bbox_regression"], their_out["bbox_regression"], rtol=0, atol=0)

    # Losses and their gradients, through the whole training forward.
    model.train(), theirs.train()
    ours_losses = model(images, targets)
    sum(ours_losses.values()).backward()
    ours_grads = [p.grad.clone() for p in model.head.parameters()]
    model.zero_grad()
    their_losses = theirs(images, [dict(t) for t in targets])
    sum(their_losses.values()).backward()
    for name in ("classification", "bbox_regression"):
        torch.testing.assert_close(ours_losses[name], their_losses[name], rtol=1e-5, atol=1e-7)
    their_grads = dict(theirs.head.named_parameters())
    for (key, _), grad in zip(model.head.named_parameters(), ours_grads):
        their_grad = their_grads[retinanet_head_key(key)].grad
        if key.startswith("cls_logits"):  # drop the background channel of each anchor
            their_grad = their_grad.view(9, K + 1, *their_grad.shape[1:])[:, 1:].flatten(0, 1)
        # Summed in another order, so equal up to float32 rounding relative to the largest entry.
        torch.testing.assert_close(grad, their_grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())

    # Detections, through the whole eval forward.
    model.eval(), theirs.eval()
    with torch.no_grad():
        ours_det, their_det = model(images), theirs(images)
    for o, t in zip(ours_det, their_det):
        assert len(o["boxes"]) > 20
        torch.testing.assert_close(o["boxes"], t["boxes"])
        torch.testing.assert_close(o["scores"], t["scores"])
        assert torch.equal(o["labels"], t["labels"])


def test_torchvision_head_keys():
    assert retinanet_head_key("cls_subnet.3.0.weight") == "classification_head.conv.3.0.weight"
    assert retinanet_head_key("box_subnet.1.1.bias") == "regression_head.conv.1.1.bias"
    assert retinanet_head_key("cls_logits.bias") == "classification_head.cls_logits.bias"
    assert retinanet_head_key("bbox_pred.weight") == "regression_head.bbox_reg.weight"
    with pytest.raises(ValueError, match="key"):
        retinanet_head_key("backbone.conv1.weight")


def test_bad_input_raises():
    model = tiny().train()
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match="targets"):
        model(images)
    with pytest.raises(ValueError, match="one dict per image"):
        model(images, targets[:1])
    bad = [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]), "labels": torch.tensor([1])}, targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        model(images, bad)
    bad = [{"boxes": torch.tensor([[0.0, 0.0, 5.0]]), "labels": torch.tensor([1])}, targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        model(images, bad)
    bad = [targets[0], {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([K + 1])}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must be in 1..3"):
        model(images, bad)
    bad = [targets[0], {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1.0])}]
    with pytest.raises(ValueError, match="integer"):
        model(images, bad)
    with pytest.raises(ValueError, match="loss"):
        tiny(loss="bce")
    with pytest.raises(ValueError, match="levels"):
        RetinaNet(model.backbone, K, AnchorGenerator(((32,),) * 4, ((1.0,),) * 4))
    with pytest.raises(ValueError, match="same number of anchors"):
        RetinaNet(model.backbone, K, AnchorGenerator(((32,),) * 4 + ((64, 90),), ((1.0,),) * 5))
    with pytest.raises(ValueError, match="num_classes"):
        RetinaNet(model.backbone, 0)
    with pytest.raises(ValueError, match="norm"):
        RetinaNetHead(8, 9, K, norm="bn")
