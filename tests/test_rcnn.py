import pytest
import torch
from torch import nn

from fpnbook.interop import to_torchvision
from fpnbook.models import faster_rcnn_tiny, fpn_backbone_tiny, mask_rcnn_tiny
from fpnbook.rcnn import (
    FasterRCNN,
    MaskRCNN,
)

NUM_CLASSES = 2  # K: the object classes, labels 1..2 (the models add the background)


def scene(height=64, width=64, seed=0):
    """An image with a bright square (class 1) and a dark disc (class 2), and its target."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=g) * 0.2 + 0.4
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 8:30, 10:34] = 1
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks[1] = ((y - 44) ** 2 + (x - 44) ** 2 <= 12**2).to(torch.uint8)
    image[:, masks[0].bool()] = 0.95
    image[:, masks[1].bool()] = 0.05
    target = {
        "boxes": torch.tensor([[10.0, 8.0, 34.0, 30.0], [32.0, 32.0, 57.0, 57.0]]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
    }
    return image, target


def empty_target(height, width):
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, height, width, dtype=torch.uint8)}


MASK_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def test_losses_are_finite_and_backpropagate():
    torch.manual_seed(0)
    model = mask_rcnn_tiny(NUM_CLASSES)
    image, target = scene()
    other, other_target = scene(48, 80, seed=1)
    other_target["masks"] = other_target["masks"][:, :48, :80]
    other_target["boxes"] = other_target["boxes"].clamp(max=47)
    losses = model([image, other], [target, other_target])
    assert set(losses) == MASK_LOSSES
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.backbone.stem[0].weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_a_few_sgd_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = mask_rcnn_tiny(NUM_CLASSES, box_batch_size_per_image=64)  # fewer RoIs: a faster test
    image, target = scene()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def losses():
        torch.manual_seed(1)  # the same anchors and RoIs sampled each time
        return model([image], [target])

    first = losses()
    for _ in range(6):
        optimizer.zero_grad()
        sum(losses().values()).backward()
        optimizer.step()
    with torch.no_grad():
        last = losses()
    assert sum(last.values()) < 0.9 * sum(first.values())
    # The box loss may grow for a while: a better RPN gives more foreground RoIs to regress.
    for key in ("loss_objectness", "loss_classifier", "loss_mask"):
        assert last[key] < first[key]


def test_eval_output_format_with_masks_pasted_into_the_image():
    torch.manual_seed(0)
    model = mask_rcnn_tiny(NUM_CLASSES).eval()
    images = [scene()[0], scene(48, 80)[0]]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for detections, image in zip(out, images):
        height, width = image.shape[1:]
        assert set(detections) == {"boxes", "labels", "scores", "masks"}
        n = len(detections["boxes"])
        assert 0 < n <= 100
        assert detections["masks"].shape == (n, 1, height, width) and detections["masks"].dtype == torch.float32
        assert ((detections["masks"] >= 0) & (detections["masks"] <= 1)).all()
        assert detections["labels"].dtype == torch.int64
        assert ((detections["labels"] >= 1) & (detections["labels"] <= NUM_CLASSES)).all()
        assert (detections["scores"][:-1] >= detections["scores"][1:]).all()
        boxes = detections["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        # Mask pixels live around their box (the paste pads the box by one 28th on each side).
        outside = detections["masks"][:, 0].clone()
        for m, b in zip(outside, boxes):
            x1, y1, x2, y2 = b.tolist()
            pad_x, pad_y = (x2 - x1) / 28 + 1, (y2 - y1) / 28 + 1
            m[max(int(y1 - pad_y), 0): int(y2 + pad_y) + 1, max(int(x1 - pad_x), 0): int(x2 + pad_x) + 1] = 0
        assert outside.abs().sum() == 0


def test_faster_rcnn_has_no_masks():
    torch.manual_seed(0)
    model = faster_rcnn_tiny(NUM_CLASSES)
    image, target = scene()
    losses = model([image], [{"boxes": target["boxes"], "labels": target["labels"]}])
    assert set(losses) == MASK_LOSSES - {"loss_mask"}
    with torch.no_grad():
        out = model.eval()([image])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_images_without_objects_train_and_predict():
    torch.manual_seed(0)
    model = mask_rcnn_tiny(NUM_CLASSES)
    blank = torch.full((3, 64, 96), 0.5)
    losses = model([blank], [empty_target(64, 96)])
    assert set(losses) == MASK_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0
    sum(losses.values()).backward()
    image, target = scene()
    losses = model([image, blank[:, :, :64]], [target, empty_target(64, 64)])
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = MaskRCNN(fpn_backbone_tiny(), NUM_CLASSES, box_score_thresh=0.99).eval()([blank])
    assert out[0]["boxes"].shape == (0, 4) and out[0]["masks"].shape == (0, 1, 64, 96)
    assert out[0]["labels"].shape == (0,) and out[0]["scores"].shape == (0,)


def test_bad_input_raises():
    model = mask_rcnn_tiny(NUM_CLASSES)
    image, target = scene()
    with pytest.raises(ValueError, match="targets must be given"):
        model([image])
    bad = dict(target, boxes=torch.tensor([[10.0, 8.0, 4.0, 30.0], [32.0, 32.0, 57.0, 57.0]]))
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        model([image], [bad])
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]"):
        model([image], [dict(target, masks=target["masks"][:, :32])])
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]"):
        model([image], [{k: v for k, v in target.items() if k != "masks"}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        model([image], [dict(target, labels=target["labels"].float())])
    with pytest.raises(ValueError, match="one dict per image"):
        model([image, image], [target])
    with pytest.raises(ValueError, match="num_classes"):
        model([image], [dict(target, labels=torch.tensor([1, NUM_CLASSES + 1]))])
    with pytest.raises(TypeError, match="images"):
        model(torch.stack([image]), [target])
    with pytest.raises(ValueError, match="num_classes"):
        FasterRCNN(fpn_backbone_tiny())
    with pytest.raises(TypeError, match="backbone"):
        FasterRCNN(torch.nn.Conv2d(3, 3, 1), NUM_CLASSES)


def torchvision_twin(model: MaskRCNN, image_size) -> nn.Module:
    """torchvision's MaskRCNN around the same backbone module, with our heads' weights and counts copied in.

    Its transform resizes by min_size / max_size: set to the image size, the resize is the identity.
    """
    return to_torchvision(model, image_size, copy_backbone=False)


def spread_out(seed=0):
    """A tiny Mask R-CNN with larger RPN and classifier weights than the init, so that scores and boxes
    are not all alike, and fewer proposals, so that the test is fast."""
    torch.manual_seed(seed)
    model = mask_rcnn_tiny(NUM_CLASSES, rpn_pre_nms_top_n=dict(training=500, testing=300),
                           rpn_post_nms_top_n=dict(training=400, testing=200), box_detections_per_img=30)
    for p in model.rpn.head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.2)
    return model


def test_eval_equals_torchvision_mask_rcnn_with_the_same_weights():
    model = spread_out().eval()
    images = [scene()[0], scene(seed=1)[0]]
    theirs = torchvision_twin(model, (64, 64)).eval()
    with torch.no_grad():
        ours, expected = model(images), theirs(images)
    for d, e in zip(ours, expected):
        assert len(d["boxes"]) > 10
        assert torch.equal(d["labels"], e["labels"])
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(d[key], e[key], rtol=1e-4, atol=1e-4)


def test_training_losses_equal_torchvision_mask_rcnn():
    model = spread_out()
    (image, target), (other, other_target) = scene(), scene(seed=1)
    theirs = torchvision_twin(model, (64, 64)).train()
    torch.manual_seed(5)
    expected = theirs([image, other], [target, other_target])
    torch.manual_seed(5)
    # torchvision's transform draws one random number per image to pick a training size; do the same.
    for _ in range(2):
        torch.empty(1).uniform_(0.0, 1.0)
    losses = model([image, other], [target, other_target])
    assert set(losses) == set(expected)
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key], rtol=1e-4, atol=1e-5)
