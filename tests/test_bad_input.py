"""Bad input gets a clear error that names the argument, never a raw one, a NaN or a wrong answer.

One table per kind of failure; property tests (hypothesis) throw random malformed input
at the public ops, the evaluation and the command line. Each case asserts the documented
error type (ValueError, TypeError, FileNotFoundError, FileExistsError) and a piece of the
message that names what was wrong.
"""

from __future__ import annotations

import json
import math
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from fpnbook import backbone, boxes, checkpoint, data, evaluate, fpn, labelme, losses, models, poolers, train
from fpnbook.cli import main
from fpnbook.files import atomic_save, atomic_write_text, load_torch_file
from fpnbook.images import check_targets
from fpnbook.widgets import focal as focal_widget
from fpnbook.widgets import roi as roi_widget

CLEAR = (ValueError, TypeError, FileNotFoundError, FileExistsError)
ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def expect(error, match, fn, *args, **kwargs):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


# ---------------------------------------------------------------- raw errors from deep inside


FEATURES = {"p2": torch.zeros(1, 4, 16, 16), "p3": torch.zeros(1, 4, 8, 8)}
POOLER = poolers.MultiScaleRoIAlign(["p2", "p3"], 7, 2)
BOX = torch.tensor([[0.0, 0.0, 10.0, 10.0]])

RAW_CASES = {
    "box_iou on a 1-D box": (ValueError, "boxes1", lambda: boxes.box_iou(torch.zeros(4), BOX)),
    "box_iou on [N, 3]": (ValueError, "boxes2", lambda: boxes.box_iou(BOX, torch.zeros(2, 3))),
    "box_area on a list": (TypeError, "boxes", lambda: boxes.box_area([[0, 0, 1, 1]])),
    "xywh_to_xyxy on [N, 3]": (ValueError, r"\[N, 4\]", lambda: boxes.xywh_to_xyxy(torch.zeros(2, 3))),
    "decode deltas [N, 3]": (ValueError, "deltas", lambda: boxes.BoxCoder().decode(torch.zeros(2, 3), BOX.repeat(2, 1))),
    "decode deltas and boxes that do not pair": (ValueError, "reference_boxes",
                                                 lambda: boxes.BoxCoder().decode(torch.zeros(2, 4), BOX)),
    "encode boxes that do not pair": (ValueError, "reference_boxes",
                                      lambda: boxes.BoxCoder().encode(BOX.repeat(2, 1), BOX)),
    "MultiScaleRoIAlign with a 1-D box": (ValueError, r"boxes\[0\]", lambda: POOLER(FEATURES, [BOX[0]], [(64, 64)])),
    "MultiScaleRoIAlign with height 0": (ValueError, r"image_shapes\[0\]", lambda: POOLER(FEATURES, [BOX], [(0, 64)])),
    "MultiScaleRoIAlign with more box lists than images": (
        ValueError, "per image", lambda: POOLER(FEATURES, [BOX, BOX], [(64, 64)] * 2)),
    "train on device foo": (ValueError, "device", lambda: train.TrainConfig(device="foo")),
    "resolve_device cuda:7": (ValueError, "cuda:7", lambda: train.resolve_device("cuda:7")),
    "resolve_device of an int": (TypeError, "device", lambda: train.resolve_device(3)),
    "FPN with a float channel count": (ValueError, "out_channels", lambda: fpn.FPN([8, 16], 7.5)),
    "FPN with a string channel list": (ValueError, "in_channels_list", lambda: fpn.FPN("816", 8)),
    "roi widget with x=NaN": (ValueError, "x must be", lambda: roi_widget.roi_explorer_state(
        np.zeros((64, 64, 3), np.uint8), NAN, 1, 10, 10)),
    "roi widget on an image smaller than the stride": (ValueError, "stride", lambda: roi_widget.roi_explorer_state(
        np.zeros((8, 8, 3), np.uint8), 1, 1, 4, 4, stride=16)),
}


@pytest.mark.parametrize("case", RAW_CASES)
def test_no_raw_error(case):
    error, match, fn = RAW_CASES[case]
    expect(error, match, fn)


# ---------------------------------------------------------------- silent wrong answers


SILENT_CASES = {
    "focal loss alpha=NaN": (ValueError, "alpha", lambda: losses.sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), alpha=NAN)),
    "focal loss gamma=NaN": (ValueError, "gamma", lambda: losses.sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), gamma=NAN)),
    "focal loss targets of 2": (ValueError, "targets", lambda: losses.sigmoid_focal_loss(torch.zeros(3), torch.full((3,), 2.0))),
    "focal loss targets of -1": (ValueError, "targets", lambda: losses.sigmoid_focal_loss(torch.zeros(3), -torch.ones(3))),
    "assign_levels canonical_scale=0": (ValueError, "canonical_scale", lambda: poolers.assign_levels(BOX, 2, 5, canonical_scale=0)),
    "assign_levels canonical_scale=-1": (ValueError, "canonical_scale", lambda: poolers.assign_levels(BOX, 2, 5, canonical_scale=-1)),
    "assign_levels canonical_scale=NaN": (ValueError, "canonical_scale", lambda: poolers.assign_levels(BOX, 2, 5, canonical_scale=NAN)),
    "MultiScaleRoIAlign canonical_scale=0": (ValueError, "canonical_scale",
                                             lambda: poolers.MultiScaleRoIAlign(["p2"], 7, 2, canonical_scale=0)),
    "ModelConfig(num_classes=True)": (ValueError, "num_classes", lambda: models.ModelConfig(num_classes=True)),
    "ModelConfig(fpn_channels='64')": (ValueError, "fpn_channels", lambda: models.ModelConfig(fpn_channels="64")),
    "ModelConfig(fpn_channels=0)": (ValueError, "fpn_channels", lambda: models.ModelConfig(fpn_channels=0)),
    "TrainConfig(warmup_factor=-1)": (ValueError, "warmup_factor", lambda: train.TrainConfig(warmup_factor=-1)),
    "TrainConfig(lr_decay=-0.1)": (ValueError, "lr_decay", lambda: train.TrainConfig(lr_decay=-0.1)),
    "TrainConfig(clip_grad_norm=-1)": (ValueError, "clip_grad_norm", lambda: train.TrainConfig(clip_grad_norm=-1)),
    "focal widget gamma=NaN": (ValueError, "gamma", lambda: focal_widget.focal_explorer_state(
        NAN, 0.25, torch.tensor([0.5]), torch.tensor([0.5]))),
    "focal widget alpha=NaN": (ValueError, "alpha", lambda: focal_widget.focal_explorer_state(
        2.0, NAN, torch.tensor([0.5]), torch.tensor([0.5]))),
    "focal widget p_t=NaN": (ValueError, "pos_pt", lambda: focal_widget.focal_explorer_state(
        2.0, 0.25, torch.tensor([NAN]), torch.tensor([0.5]))),
    "focal widget weight=NaN": (ValueError, "neg_weight", lambda: focal_widget.focal_explorer_state(
        2.0, 0.25, torch.tensor([0.5]), torch.tensor([0.5]), neg_weight=[NAN])),
    "TrainConfig(milestones='12')": (ValueError, "milestones", lambda: train.TrainConfig(milestones="12")),
    "TrainConfig(milestones beyond the run)": (ValueError, "milestones",
                                               lambda: train.TrainConfig(iterations=10, milestones=(5, 50))),
    "ModelConfig(mask_classes=(0, 99))": (ValueError, "mask_classes",
                                          lambda: models.ModelConfig(kind="mask_x_rcnn", mask_classes=(0, 99))),
    "batch_images(size_divisible=0)": (ValueError, "size_divisible",
                                       lambda: __import__("fpnbook.images").images.batch_images(
                                           [torch.zeros(3, 8, 8)], size_divisible=0)),
    "a model shown a NaN image": (ValueError, r"images\[0\]", lambda: models.build(models.ModelConfig(kind="retinanet"))
                                  .eval()([torch.full((3, 32, 32), NAN)])),
}


@pytest.mark.parametrize("case", SILENT_CASES)
def test_no_silent_wrong_answer(case):
    error, match, fn = SILENT_CASES[case]
    expect(error, match, fn)


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn", "mask_rcnn"])
def test_zero_width_box_is_refused_by_every_model(kind):
    """One rule for all models: a box with x1 == x2 is an error, not an inf/NaN loss."""
    model = models.build(models.ModelConfig(kind=kind)).train()
    image = torch.rand(3, 64, 64)
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[10.0, 10.0, 10.0, 30.0]]), "labels": torch.tensor([1]), "masks": masks}
    expect(ValueError, r"targets\[0\]\['boxes'\].*zero width", model, [image], [target])


def test_targets_are_checked_once_per_step(monkeypatch):
    """The model checks its targets at its boundary; the RPN and the RoI heads trust what it hands down."""
    import fpnbook.images as images_module

    calls = []
    original = images_module.check_boxes

    def counting(b, name="boxes", allow_degenerate=True):
        if name.startswith("targets"):
            calls.append(name)
        return original(b, name, allow_degenerate)

    monkeypatch.setattr(images_module, "check_boxes", counting)
    model = models.build(models.ModelConfig(kind="mask_rcnn")).train()
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[:, 10:30, 10:30] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1]), "masks": masks}
    model([torch.rand(3, 64, 64)], [target])
    assert calls == ["targets[0]['boxes']"]


def test_check_targets_messages():
    good = {"boxes": BOX, "labels": torch.tensor([1])}
    expect(ValueError, "must be given", check_targets, None, 1)
    expect(TypeError, "list of dicts", check_targets, good, 1)
    expect(ValueError, "one dict per image", check_targets, [good], 2)
    expect(ValueError, r"labels.*int64", check_targets, [dict(good, labels=torch.tensor([1.0]))], 1)
    expect(ValueError, r"1\.\.3", check_targets, [dict(good, labels=torch.tensor([4]))], 1, 3)
    expect(ValueError, r"masks", check_targets, [good], 1, 3, [(64, 64)], True)
    assert check_targets([good], 1, 3) == (good,)


# ---------------------------------------------------------------- files: COCO, images, checkpoints, labelme


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture()
def folder(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "a.png").read_bytes()[:30])
    return tmp_path


CATS = [{"id": 1, "name": "a"}]
IMAGE = {"id": 1, "file_name": "a.png", "height": 8, "width": 8}
ANN = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}


def _rle(size):
    rle = mask_utils.encode(np.asfortranarray(np.ones(size, np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


DATASET_CASES = {
    "an image without id": ({"images": [{"file_name": "a.png"}], "categories": CATS}, r"images\[0\] has no 'id'"),
    "an image without file_name": ({"images": [{"id": 1}], "categories": CATS}, "no 'file_name'"),
    "an annotation without image_id": ({"images": [IMAGE], "annotations": [{k: v for k, v in ANN.items() if k != "image_id"}],
                                        "categories": CATS}, "no 'image_id'"),
    "an annotation of an unknown image": ({"images": [IMAGE], "annotations": [dict(ANN, image_id=7)], "categories": CATS},
                                          "1 annotation"),
    "a truncated PNG": ({"images": [dict(IMAGE, file_name="truncated.png")], "categories": CATS}, "truncated.png"),
    "an RLE of another size": ({"images": [IMAGE], "annotations": [dict(ANN, segmentation=_rle((4, 4)))], "categories": CATS},
                               "RLE has size"),
    "a polygon of 2 points": ({"images": [IMAGE], "annotations": [dict(ANN, segmentation=[[0, 0, 2, 2]])], "categories": CATS},
                              "at least 3"),
    "a bbox of 3 numbers": ({"images": [IMAGE], "annotations": [dict(ANN, bbox=[0, 0, 2])], "categories": CATS}, "bbox"),
    "annotations that are not a list": ({"images": [IMAGE], "annotations": 3, "categories": CATS}, "'annotations'"),
}


@pytest.mark.parametrize("case", DATASET_CASES)
def test_dataset_names_the_problem(folder, case):
    content, match = DATASET_CASES[case]
    ann = write_json(folder / "ann.json", content)
    with pytest.raises(ValueError, match=match):
        data.CocoDataset(folder, ann)[0]


def test_coco_files_name_themselves(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    expect(ValueError, "bad.json", evaluate.load_coco, tmp_path / "bad.json")
    expect(ValueError, "no 'images'", evaluate.load_coco, write_json(tmp_path / "x.json", {"images": 3}))
    expect(FileNotFoundError, "nope.json", evaluate.load_coco, tmp_path / "nope.json")


@pytest.fixture(scope="module")
def val_gt():
    return data.val_paths()[1]


def prediction(**changes):
    return {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5, **changes}


PREDICTION_CASES = {
    "a bbox of length 3": ([prediction(bbox=[1, 2, 3])], r"predictions\[0\] has bbox"),
    "no image_id": ([{k: v for k, v in prediction().items() if k != "image_id"}], "image_id"),
    "no score": ([{k: v for k, v in prediction().items() if k != "score"}], "score"),
    "a NaN box": ([prediction(bbox=[NAN, 2, 3, 4])], "finite"),
    "a NaN score": ([prediction(score=NAN)], "score"),
    "an unknown category": ([prediction(category_id=99)], "label_to_cat_id"),
    "an unknown image": ([prediction(image_id=10**6)], "image id"),
    "a result that is not a dict": ([[1, 2, 3]], "COCO result dict"),
}


@pytest.mark.parametrize("case", PREDICTION_CASES)
def test_coco_evaluate_names_the_prediction(val_gt, case):
    predictions, match = PREDICTION_CASES[case]
    with pytest.raises(CLEAR, match=match):
        evaluate.coco_evaluate(val_gt, predictions, iou_types=["bbox"])


def test_no_predictions_scores_like_pycocotools(tmp_path):
    """APs is -1 when the ground truth has no small object, with or without predictions."""
    big = dict(ANN, bbox=[0, 0, 50, 50], area=2500)
    gt = write_json(tmp_path / "gt.json", {"images": [dict(IMAGE, height=64, width=64)], "annotations": [big],
                                          "categories": CATS})
    empty = evaluate.coco_evaluate(gt, [], iou_types=["bbox"])["bbox"]
    one = evaluate.coco_evaluate(gt, [prediction(bbox=[30, 30, 5, 5])], iou_types=["bbox"])["bbox"]
    assert empty["APs"] == one["APs"] == -1 and empty["APl"] == one["APl"] == -1
    assert empty["APm"] == 0 and empty["AP"] == 0


def test_to_coco_results_names_the_output():
    out = {"boxes": BOX, "labels": torch.tensor([5]), "scores": torch.tensor([0.5])}
    expect(ValueError, "label_to_cat_id", evaluate.to_coco_results, [out], [1], {1: 1})
    expect(ValueError, r"outputs\[0\]\['masks'\]", evaluate.to_coco_results, [dict(out, masks=torch.zeros(1, 8, 8))], [1])
    expect(ValueError, "lacks", evaluate.to_coco_results, [{"boxes": BOX}], [1])
    expect(ValueError, r"\['scores'\]", evaluate.to_coco_results, [dict(out, scores=torch.tensor([NAN]))], [1])


def test_torch_files_fail_like_checkpoints(tmp_path):
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"code": object}))
    model = backbone.resnet_tiny()
    for name in ("truncated.pt", "pickle.pt"):
        for load in (lambda p: backbone.load_classification_weights(model, p), checkpoint.load_checkpoint, load_torch_file):
            with pytest.raises(ValueError, match=name) as error:
                load(tmp_path / name)
            assert "weights_only=False" not in str(error.value)
    expect(FileNotFoundError, "nope.pt", backbone.load_classification_weights, model, tmp_path / "nope.pt")


def test_atomic_writes_keep_plain_permissions_and_refuse_folders(tmp_path):
    path = atomic_write_text("x", tmp_path / "a.txt")
    assert path.read_text() == "x" and path.stat().st_mode & 0o044  # readable by others, like open()
    atomic_save({"a": torch.zeros(1)}, tmp_path / "b.pt")
    assert (tmp_path / "b.pt").stat().st_mode & 0o044
    expect(ValueError, "directory", atomic_write_text, "x", tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


LABELME = {"imagePath": "x.png", "imageHeight": 8, "imageWidth": 8,
           "shapes": [{"label": "a", "points": [[0, 0], [4, 0], [4, 4]], "shape_type": "polygon"}]}

LABELME_CASES = {
    "a non-numeric imageHeight": (dict(LABELME, imageHeight="x"), "imageHeight"),
    "imageHeight 0": (dict(LABELME, imageHeight=0), "imageHeight"),
    "a shape without label": (dict(LABELME, shapes=[{"points": [[0, 0], [4, 0], [4, 4]]}]), r"shapes\[0\] has no 'label'"),
    "shapes that is not a list": (dict(LABELME, shapes=5), "shapes must be a list"),
    "a list instead of an object": ([1, 2], "JSON object"),
}


@pytest.mark.parametrize("case", LABELME_CASES)
def test_labelme_names_the_file(tmp_path, case):
    content, match = LABELME_CASES[case]
    write_json(tmp_path / "x.json", content)
    with pytest.raises(ValueError, match=match):
        labelme.labelme_to_coco(tmp_path, tmp_path / "out" / "coco.json")
    assert not (tmp_path / "out" / "coco.json").exists()


def test_labelme_output_that_is_a_folder(tmp_path):
    write_json(tmp_path / "x.json", LABELME)
    (tmp_path / "outdir").mkdir()
    expect(ValueError, "is a directory", labelme.labelme_to_coco, tmp_path, tmp_path / "outdir", overwrite=True)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- work done or files touched before checks


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    data.generate_dataset(out, train=2, val=1, image_size=64, seed=0, progress=False)
    return out


def tiny_train(tiny_split, out, *extra):
    return ["train", "--out", str(out), "--iterations", "1", "--batch-size", "1", "--workers", "0", "--log-every", "1",
            "--train-ann", str(tiny_split / "train.json"), "--train-images", str(tiny_split / "train"),
            "--val-ann", str(tiny_split / "val.json"), "--val-images", str(tiny_split / "val"), *extra]


def test_train_refuses_a_folder_that_holds_a_run(tiny_split, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_train(tiny_split, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(tiny_train(tiny_split, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert main(tiny_train(tiny_split, out, "--overwrite")) == 0
    # Started afresh: a new log of the same length, not the old one with the new run appended.
    assert len((out / "metrics.jsonl").read_bytes().splitlines()) == len(before["metrics.jsonl"].splitlines())


def test_train_api_refuses_a_folder_that_holds_a_run(tiny_split, tmp_path):
    dataset = data.CocoDataset(tiny_split / "train", tiny_split / "train.json")
    config = train.TrainConfig(iterations=1, batch_size=1, out_dir=str(tmp_path), progress=False, log_every=1)
    model = models.build(models.ModelConfig(kind="retinanet"))
    train.train(model, dataset, config)
    expect(FileExistsError, "already holds a run", train.train, model, dataset, config)
    train.train(model, dataset, config, overwrite=True)


def test_resume_needs_a_run_of_the_same_model(tiny_split, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train(tiny_split, run, "--model", "retinanet")) == 0
    checkpoint.export_weights(run / "last.pt", tmp_path / "exported.pt")
    capsys.readouterr()
    assert main(tiny_train(tiny_split, tmp_path / "a", "--model", "retinanet", "--resume", str(tmp_path / "exported.pt"))) == 2
    assert "weights only" in capsys.readouterr().err
    assert main(tiny_train(tiny_split, tmp_path / "b", "--model", "mask_rcnn", "--resume", str(run / "last.pt"))) == 2
    assert "retinanet checkpoint" in capsys.readouterr().err
    dataset = data.CocoDataset(tiny_split / "train", tiny_split / "train.json")
    config = train.TrainConfig(iterations=1, batch_size=1, progress=False, log_every=1)
    expect(ValueError, "does not fit this model", train.train, models.build(models.ModelConfig(kind="mask_rcnn")),
           dataset, config, resume=run / "last.pt")


def test_train_validates_before_generating_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPNBOOK_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--out", str(tmp_path / "run"), "--iterations", "-1", "--synthetic", "4", "--size", "64"]) == 2
    assert "--iterations" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_data_validates_both_splits_first(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path), "--train", "0", "--val", "1", "--size", "32"]) == 0
    assert main(["data", "--out", str(tmp_path), "--train", "2", "--val", "1", "--size", "32"]) == 2
    assert "val" in capsys.readouterr().err
    assert not (tmp_path / "train").exists() and not (tmp_path / "train.json").exists()


def test_predict_refuses_to_replace_results(tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("mine")
    argv = ["predict", "--checkpoint", str(ROOT / "checkpoints" / "retinanet.pt"), "--images", str(tmp_path / "x.png"),
            "--out", str(out)]
    assert main(argv) == 2
    assert "results.json" in capsys.readouterr().err and (out / "results.json").read_text() == "mine"
    assert not (out / "x_pred.png").exists()
    assert main([*argv, "--overwrite"]) == 0 and json.loads((out / "results.json").read_text()) is not None


def test_predict_names_an_unreadable_image(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    argv = ["predict", "--checkpoint", str(ROOT / "checkpoints" / "retinanet.pt"), "--images", str(tmp_path / "broken.png"),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "broken.png" in capsys.readouterr().err


def test_sigterm_during_data_leaves_no_partial_files(tmp_path):
    """SIGTERM (or Ctrl-C) during `fpnbook data`: one line, exit 130, no hidden temporary folder."""
    process = subprocess.Popen([sys.executable, "-m", "fpnbook", "data", "--out", str(tmp_path), "--train", "5000",
                                "--val", "1", "--size", "128"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".train.tmp-*/*.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command line


CLI_CASES = {
    "bench --threads 0": (["bench", "--threads", "0"], "--threads"),
    "bench --batch-size 0": (["bench", "--batch-size", "0"], "--batch-size"),
    "bench --size 0": (["bench", "--size", "0"], "--size"),
    "bench --repeats 0": (["bench", "--repeats", "0"], "--repeats"),
    "train --fpn-channels x": (["train", "--out", "r", "--fpn-channels", "x"], "--fpn-channels"),
    "train --mask-classes a,b": (["train", "--out", "r", "--model", "mask_x_rcnn", "--mask-classes", "a,b"], "--mask-classes"),
    "train --batch-size -2": (["train", "--out", "r", "--batch-size", "-2"], "--batch-size"),
    "train --device foo": (["train", "--out", "r", "--device", "foo", "--synthetic", "1"], "device"),
    "train --lr nan": (["train", "--out", "r", "--lr", "nan"], "--lr"),
    "eval --batch-size 0": (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size"),
    "eval of a missing file": (["eval", "--checkpoint", "missing.pt"], "missing.pt"),
    "predict --score-threshold 2": (["predict", "--checkpoint", "x", "--images", "y", "--out", "z",
                                     "--score-threshold", "2"], "--score-threshold"),
    "data --size 0": (["data", "--out", "d", "--size", "0"], "--size"),
    "data --val -1": (["data", "--out", "d", "--val", "-1"], "--val"),
    "an unknown verb": (["fly"], "invalid choice"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_error_is_one_line(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    argv, match = CLI_CASES[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--threads", "--batch-size", "--size", "--repeats"]),
       value=st.one_of(st.integers(max_value=0).map(str), st.text(min_size=1, max_size=6).filter(
           lambda t: not t.strip().lstrip("-").isdigit() and not t.startswith("-"))))
def test_cli_bench_rejects_any_bad_number(capsys, flag, value):
    assert main(["bench", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- property tests


def malformed_tensors():
    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).filter(lambda s: len(s) != 2 or s[1] != 4)
    return shapes.map(lambda s: torch.zeros(s))


@settings(max_examples=60, deadline=None)
@given(bad=st.one_of(malformed_tensors(), st.just([[0, 0, 1, 1]]), st.just(None), st.just(np.zeros((2, 4)))))
def test_box_functions_refuse_any_malformed_boxes(bad):
    for fn in (boxes.box_area, boxes.xyxy_to_xywh, boxes.xywh_to_xyxy, boxes.xyxy_to_cxcywh,
               lambda b: boxes.box_iou(b, BOX), lambda b: boxes.box_iou(BOX, b),
               lambda b: poolers.assign_levels(b, 2, 5)):
        with pytest.raises(CLEAR, match="boxes"):
            fn(bad)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=4, max_size=4))
def test_check_boxes_accepts_exactly_the_valid_boxes(values):
    box = torch.tensor([values])
    valid = all(math.isfinite(v) for v in values) and values[2] >= values[0] and values[3] >= values[1]
    if valid:
        assert boxes.check_boxes(box) is box
    else:
        with pytest.raises(ValueError, match="boxes"):
            boxes.check_boxes(box)


@settings(max_examples=60, deadline=None)
@given(alpha=st.one_of(st.floats(allow_nan=True), st.just(0.25)), gamma=st.one_of(st.floats(allow_nan=True), st.just(2.0)),
       target=st.one_of(st.floats(-2, 3), st.just(NAN)))
def test_focal_loss_is_finite_or_refused(alpha, gamma, target):
    inputs, targets = torch.linspace(-5, 5, 4), torch.full((4,), target)
    try:
        loss = losses.sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma)
    except ValueError as error:
        assert any(word in str(error) for word in ("alpha", "gamma", "targets"))
        return
    assert torch.isfinite(loss).all() and (loss >= 0).all()


@settings(max_examples=60, deadline=None)
@given(where=st.sampled_from(["images", "annotations", "categories"]), index=st.integers(0, 1),
       key=st.sampled_from(["id", "image_id", "category_id", "bbox", "file_name"]),
       value=st.one_of(st.none(), st.just(-5), st.just("x"), st.just([1, 2]), st.just([0, 0, -1, 2]),
                       st.just([NAN, 0, 1, 1]), st.just({"a": 1})), delete=st.booleans())
def test_coco_reader_loads_or_names_the_entry(where, index, key, value, delete):
    dataset = {"images": [dict(IMAGE), dict(IMAGE, id=2)], "annotations": [dict(ANN), dict(ANN, id=2, image_id=2)],
               "categories": [dict(CATS[0]), {"id": 2, "name": "b"}]}
    entry = dataset[where][index]
    if delete:
        entry.pop(key, None)
    else:
        entry[key] = value
    try:
        coco = evaluate.coco_from_dict(dataset, "mutated.json")
    except ValueError as error:
        assert "mutated.json" in str(error)
        return
    assert len(coco.imgs) == 2 and all(a["image_id"] in coco.imgs and a["category_id"] in coco.cats
                                       for a in coco.anns.values())


KEYS = ["image_id", "category_id", "bbox", "score"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drop=st.sets(st.sampled_from(KEYS)),
       bbox=st.one_of(st.just([1, 2, 3, 4]), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5)),
       score=st.one_of(st.just(0.5), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2)),
       category=st.sampled_from([1, 8, 0, 99, "1"]))
def test_coco_evaluate_scores_or_names_the_problem(val_gt, drop, bbox, score, category):
    p = {k: v for k, v in prediction(bbox=bbox, score=score, category_id=category).items() if k not in drop}
    try:
        results = evaluate.coco_evaluate(val_gt, [p], iou_types=["bbox"])
    except CLEAR as error:
        assert "predictions[0]" in str(error)
        return
    assert all(math.isfinite(v) for v in results["bbox"].values())
