"""``interop.from_torchvision``: torchvision's ResNet-50 FPN detectors (v1) become fpnbook models with equal outputs.

torchvision's builders are called with ``weights=None`` (nothing is downloaded) and a
seed; parity is checked on small images in eval mode. The published COCO files load the
same way (``from_torchvision(state_dict, kind)``): only their values differ.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from fpnbook import interop
from fpnbook.rcnn import FasterRCNN, MaskRCNN
from fpnbook.retinanet import RetinaNet

SIZE = 96


def torchvision_model(kind: str, num_classes: int = 4, v2: bool = False, **kwargs):
    torch.manual_seed(0)
    builder = getattr(torchvision.models.detection, interop.TORCHVISION_BUILDERS[kind] + ("_v2" if v2 else ""))
    if kind != "retinanet":
        kwargs.setdefault("box_detections_per_img", 20)  # fewer masks to paste
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, min_size=SIZE, max_size=SIZE, **kwargs)
    if kind == "retinanet":
        model.score_thresh = 0.001  # random heads score every anchor ~0.01 (the prior)
        with torch.no_grad():  # torchvision's background channel, never a positive in training
            model.head.classification_head.cls_logits.bias.view(9, num_classes)[:, 0] = -1000.0
    return model.eval()


def images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, SIZE, SIZE, generator=generator), torch.rand(3, 64, SIZE, generator=generator)]


def assert_same_detections(theirs, ours):
    for a, b in zip(theirs, ours, strict=True):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-4, rtol=1e-5)
        if "masks" in a:
            torch.testing.assert_close(b["masks"], a["masks"], atol=1e-3, rtol=0)


@pytest.mark.parametrize(("kind", "cls", "v2"), [("retinanet", RetinaNet, False), ("retinanet", RetinaNet, True),
                                                 ("faster_rcnn", FasterRCNN, False), ("mask_rcnn", MaskRCNN, False)])
def test_twin_gives_torchvisions_detections(kind, cls, v2):
    theirs = torchvision_model(kind, v2=v2)
    ours = interop.from_torchvision(theirs)
    assert type(ours) is cls and not ours.training
    assert ours.roi_heads.box_predictor.num_logits - 1 == 3 if kind != "retinanet" else ours.num_classes == 3
    with torch.no_grad():
        assert_same_detections(theirs(images()), ours(images()))


def test_state_dict_and_file_load_like_the_model(tmp_path):
    theirs = torchvision_model("faster_rcnn")
    path = tmp_path / "fasterrcnn.pt"
    torch.save(theirs.state_dict(), path)
    from_file = interop.from_torchvision(path, kind="faster_rcnn").eval()
    from_model = interop.from_torchvision(theirs)
    for (k, a), (_, b) in zip(from_model.state_dict().items(), from_file.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_resized_input_and_scaled_boxes_give_torchvisions_pipeline():
    theirs = torchvision_model("faster_rcnn")
    theirs.transform.min_size, theirs.transform.max_size = (80,), 120
    ours = interop.from_torchvision(theirs)
    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(2))
    resized, scale = interop.torchvision_resize(image, 80, 120)
    assert resized.shape[1:] == (80, 112) and scale == pytest.approx(1.6)
    with torch.no_grad():
        (expected,), (got,) = theirs([image]), ours([resized])
    got["boxes"] = interop.scale_boxes(got["boxes"], resized.shape[1:], image.shape[1:])
    assert_same_detections([expected], [got])


def test_v2_rcnn_and_foreign_weights_are_refused_in_one_line():
    v2 = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match="only the v1 models"):
        interop.from_torchvision(v2)
    with pytest.raises(ValueError, match="kind"):
        interop.from_torchvision({"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="not torchvision's maskrcnn_resnet50_fpn"):
        interop.from_torchvision({"a": torch.zeros(1)}, kind="mask_rcnn")
    with pytest.raises(ValueError, match="kind must be one of"):
        interop.from_torchvision({"a": torch.zeros(1)}, kind="yolo")
    with pytest.raises(TypeError, match="torchvision RetinaNet, FasterRCNN or MaskRCNN"):
        interop.from_torchvision(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="image must be a float Tensor"):
        interop.torchvision_resize(torch.zeros(3, 4, 4, dtype=torch.uint8))


TORCHVISION_LAYOUT = dict(layout="torchvision", backbone="resnet50", norm="frozen_bn", fpn_channels=256)


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn", "mask_rcnn"])
def test_torchvision_layout_builds_the_twins_structure(kind):
    from fpnbook.models import ModelConfig, build

    twin = interop.from_torchvision(torchvision_model(kind, num_classes=4)).state_dict()
    built = build(ModelConfig(kind=kind, num_classes=3, **TORCHVISION_LAYOUT)).state_dict()
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in twin.items()}


def test_init_from_torchvision_replaces_only_the_class_specific_layers(tmp_path):
    from fpnbook.models import TORCHVISION_FROZEN, ModelConfig, build

    theirs = torchvision_model("mask_rcnn", num_classes=6)  # a stand-in for COCO's 91
    path = tmp_path / "maskrcnn.pt"
    torch.save(theirs.state_dict(), path)
    model = build(ModelConfig(kind="mask_rcnn", num_classes=2, **TORCHVISION_LAYOUT))
    fresh = interop.init_from_torchvision(model, path, "mask_rcnn")
    assert sorted(fresh) == sorted(["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                                    "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
                                    "roi_heads.mask_predictor.mask_fcn_logits.weight",
                                    "roi_heads.mask_predictor.mask_fcn_logits.bias"])
    twin = interop.from_torchvision(theirs).state_dict()
    assert all(torch.equal(v, twin[k]) for k, v in model.state_dict().items() if k not in fresh)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(TORCHVISION_FROZEN) for n in frozen)
    assert model.backbone.backbone.body.layer2[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="layout='torchvision'"):
        interop.init_from_torchvision(build(ModelConfig(kind="mask_rcnn", num_classes=2)), path, "mask_rcnn")


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn", "mask_rcnn"])
def test_twin_gives_torchvisions_training_losses(kind):
    """Same weights, same images and targets, the same seed for the samplers: the same losses."""
    theirs = torchvision_model(kind)
    ours = interop.from_torchvision(theirs).train()
    theirs.train()
    for module in theirs.modules():  # weights=None builds BatchNorm; in eval mode it is the frozen BN of the twin
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    generator = torch.Generator().manual_seed(3)
    targets = []
    for image in images():
        height, width = image.shape[1:]
        corners = torch.rand(3, 2, generator=generator) * torch.tensor([width / 2, height / 2])
        boxes = torch.cat([corners, corners + torch.tensor([width / 2, height / 2]) - 1], dim=1)
        masks = torch.zeros(3, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            mask[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks})
    torch.manual_seed(5)
    expected = theirs(images(), targets)
    torch.manual_seed(5)
    if kind != "retinanet":  # torchvision's R-CNN transform draws one number per image to pick a training size
        for _ in targets:
            torch.empty(1).uniform_(0.0, 1.0)
    got = ours(images(), targets)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
