"""fpnbook.pretrain: the generated segmentation data, the pretrainer, and how detectors take its weights."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from fpnbook.checkpoint import load_backbone, read_backbone
from fpnbook.cli import main
from fpnbook.data import CocoDataset
from fpnbook.models import ModelConfig, build
from fpnbook.pretrain import (IGNORE, SemanticFromInstances, SemanticPretrainer, ShapesSemantic, backbone_state,
                              jitter_boxes, object_accuracy, pretrainer_from_state, segmentation_scores,
                              semantic_labels)


def test_labels_are_the_masks_classes():
    image, target = ShapesSemantic(3, image_size=64, seed=5)[1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    label = target["semantic"]
    assert label.shape == (64, 64) and label.dtype == torch.int64
    again_image, again = ShapesSemantic(3, image_size=64, seed=5)[1]
    assert torch.equal(label, again["semantic"]) and torch.equal(image, again_image)
    assert not torch.equal(label, ShapesSemantic(3, image_size=64, seed=6)[1][1]["semantic"]) or label.max() == 0
    assert set(label.unique().tolist()) <= set(range(9))


def test_mask_classes_ignore_other_objects_over_their_boxes():
    dataset = ShapesSemantic(40, image_size=96, seed=0, mask_classes=[1, 3])
    full = ShapesSemantic(40, image_size=96, seed=0)
    seen_ignored = False
    for i in range(len(dataset)):
        label, everything = dataset[i][1]["semantic"], full[i][1]["semantic"]
        assert not set(label.unique().tolist()) & {2, 4, 5, 6, 7, 8}
        ignored = label == IGNORE
        seen_ignored |= bool(ignored.any())
        # where nothing is ignored, the labels are the full ones
        assert torch.equal(label[~ignored], everything[~ignored])
        # every pixel of an unmasked class is inside an ignored box
        assert ignored[(everything != 0) & ~torch.isin(everything, torch.tensor([1, 3]))].all()
    assert seen_ignored


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_size_is_rejected(bad):
    with pytest.raises(ValueError, match="size"):
        ShapesSemantic(bad)


def test_bad_mask_classes_are_rejected():
    with pytest.raises(ValueError, match="mask_classes"):
        ShapesSemantic(2, mask_classes=[0, 9])


def test_pretrainer_learns_and_predicts_per_pixel():
    torch.manual_seed(0)
    model = SemanticPretrainer()
    images, targets = zip(*(ShapesSemantic(2, image_size=64)[i] for i in range(2)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(list(images), list(targets))["loss_semantic"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        logits = model(list(images))
    assert logits.shape == (2, 9, 64, 64)


def test_pretrainer_needs_targets_in_training():
    model = SemanticPretrainer()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)])


def test_backbone_has_mask_rcnn_parameter_names():
    pretrainer = SemanticPretrainer()
    detector = build(ModelConfig(kind="mask_rcnn"))
    assert pretrainer.backbone.state_dict().keys() == detector.backbone.state_dict().keys()


def test_cli_pretrain_then_train_from_it(tmp_path, capsys):
    out = tmp_path / "backbone"
    assert main(["pretrain", "--out", str(out), "--iterations", "2", "--batch-size", "2", "--size", "64",
                 "--warmup", "1", "--log-every", "1"]) == 0
    state = read_backbone(out / "backbone.pt")
    assert state["steps"] == 2 and state["command"].startswith("python -m fpnbook pretrain")
    assert state["train_seconds"] > 0  # from the checkpoint: training only, resumed sessions included
    assert main(["pretrain", "--out", str(out), "--iterations", "2", "--size", "64"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    data = tmp_path / "data"
    assert main(["data", "--out", str(data), "--train", "2", "--val", "2", "--size", "64"]) == 0
    argv = ["train", "--model", "retinanet", "--out", str(tmp_path / "run"), "--iterations", "1", "--batch-size", "2",
            "--workers", "0", "--warmup", "1", "--init", str(out / "backbone.pt"),
            "--train-ann", str(data / "train.json"), "--train-images", str(data / "train"),
            "--val-ann", str(data / "val.json"), "--val-images", str(data / "val")]
    assert main(argv) == 0
    assert "initialised the body from" in capsys.readouterr().err
    missing = [str(tmp_path / "nope.pt") if a == str(out / "backbone.pt") else a for a in argv]
    assert main(missing) == 2
    assert "not found" in capsys.readouterr().err



def test_segmentation_scores_of_a_perfect_and_a_blind_model():
    dataset = ShapesSemantic(3, image_size=64)

    class Oracle(SemanticPretrainer):
        def forward(self, images, targets=None):
            labels = torch.stack([dataset[i][1]["semantic"] for i in range(len(images))])
            return torch.nn.functional.one_hot(labels.clamp(min=0), 9).permute(0, 3, 1, 2).float()

    perfect = segmentation_scores(Oracle(), dataset, batch_size=3)
    assert perfect["pixel_accuracy"] == 1 and perfect["mean_iou"] == 1

    class Blind(SemanticPretrainer):
        def forward(self, images, targets=None):
            out = torch.zeros(len(images), 9, 64, 64)
            out[:, 0] = 1
            return out

    blind = segmentation_scores(Blind(), dataset, batch_size=3)
    assert blind["iou"]["circle"] == 0 and 0 < blind["pixel_accuracy"] < 1


def test_pretrainer_from_state_rebuilds_the_same_model():
    torch.manual_seed(2)
    model = SemanticPretrainer().eval()
    again = pretrainer_from_state(backbone_state(model))
    image = ShapesSemantic(1, image_size=64)[0][0]
    with torch.no_grad():
        assert torch.equal(model([image]), again([image]))


def test_jitter_boxes_keeps_the_originals_and_stays_in_the_image():
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 64.0, 64.0]])
    out = jitter_boxes(boxes, 5, (64, 64))
    assert out.shape == (12, 4) and torch.equal(out[:2], boxes)
    assert (out[:, 0] >= 0).all() and (out[:, 2] <= 64).all() and (out[:, 2] - out[:, 0] >= 1).all()
    assert (out[:, 3] - out[:, 1] >= 1).all()
    assert box_iou(out[2::2], boxes[:1]).min() > 0.2  # copies of the first box still cover it
    assert jitter_boxes(torch.zeros(0, 4), 3, (64, 64)).shape == (0, 4)


def test_object_loss_is_zero_without_objects_and_trains_the_box_head():
    torch.manual_seed(0)
    model = SemanticPretrainer()
    empty = {"semantic": torch.zeros(64, 64, dtype=torch.int64), "boxes": torch.zeros(0, 4),
             "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)], [empty])
    assert losses["loss_object"] == 0
    image, target = next((x, t) for x, t in ShapesSemantic(20, image_size=64) if len(t["labels"]))
    losses = model([image], [target])
    losses["loss_object"].backward()
    assert model.box_head.fc6.weight.grad.abs().sum() > 0


def test_box_head_transfers_into_two_stage_models():
    torch.manual_seed(3)
    pretrainer = SemanticPretrainer()
    config = ModelConfig(kind="mask_rcnn")
    model = build(config)
    load_backbone(model, backbone_state(pretrainer), config)
    for name, tensor in pretrainer.box_head.state_dict().items():
        assert torch.equal(model.roi_heads.box_head.state_dict()[name], tensor)
    assert 0 <= object_accuracy(pretrainer, ShapesSemantic(4, image_size=64)) <= 1


def test_pixels_only_pretrainer_saves_and_loads_without_a_box_head():
    model = SemanticPretrainer(objects=False)
    assert not any(name.startswith("box_head") for name in model.state_dict())
    state = backbone_state(model)
    assert "box_head" not in state and not pretrainer_from_state(state).objects
    config = ModelConfig(kind="mask_rcnn")
    assert load_backbone(build(config), state, config) == ["body", "fpn"]
    with pytest.raises(ValueError, match="per-object"):
        object_accuracy(model, ShapesSemantic(2, image_size=64))


def test_semantic_labels_ignore_objects_without_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:7, 4:8] = True
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 5.0, 8.0, 7.0]])
    label = semantic_labels(masks, boxes, torch.tensor([2, 5]), has_mask=torch.tensor([True, False]))
    assert (label[1:3, 1:3] == 2).all() and (label[5:7, 4:8] == IGNORE).all()
    assert (label == 0).sum() == 64 - 4 - 8
    empty = semantic_labels(torch.zeros(1, 8, 8), boxes[:1], torch.tensor([3]))  # an object with no mask drawn
    assert (empty[1:3, 1:3] == IGNORE).all()


def test_cli_pretrains_on_coco_data(tmp_path):
    data = tmp_path / "data"
    assert main(["data", "--out", str(data), "--train", "2", "--val", "1", "--size", "64"]) == 0
    out = tmp_path / "backbone"
    assert main(["pretrain", "--out", str(out), "--iterations", "1", "--batch-size", "2", "--warmup", "1",
                 "--train-ann", str(data / "train.json"), "--train-images", str(data / "train")]) == 0
    assert read_backbone(out / "backbone.pt")["num_classes"] == 8
    items = SemanticFromInstances(CocoDataset(data / "train", data / "train.json"))
    image, target = items[0]
    assert target["semantic"].shape == image.shape[1:] and set(target) == {"semantic", "boxes", "labels"}


def test_cli_mask_x_backbone_records_its_mask_classes(tmp_path):
    out = tmp_path / "mask_x"
    assert main(["pretrain", "--out", str(out), "--iterations", "1", "--batch-size", "2", "--size", "64",
                 "--warmup", "1", "--mask-classes", "3,1"]) == 0
    state = read_backbone(out / "backbone.pt")
    assert state["mask_classes"] == [1, 3]
    config = ModelConfig(kind="mask_x_rcnn", mask_classes=(1, 3))
    assert load_backbone(build(config), state, config) == ["body", "fpn", "box_head"]
