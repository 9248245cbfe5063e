"""Every verb of `python -m fpnbook`, end to end on tiny data."""

import json
import subprocess
import sys

import pytest
import torch

from fpnbook.cli import main


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "--out", str(root), "--train", "4", "--val", "2", "--size", "64", "--seed", "3"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--model", "mask_rcnn", "--out", str(out), "--iterations", "2", "--batch-size", "2",
            "--workers", "0", "--warmup", "1", "--checkpoint-every", "1",
            "--train-ann", str(tiny_data / "train.json"), "--train-images", str(tiny_data / "train"),
            "--val-ann", str(tiny_data / "val.json"), "--val-images", str(tiny_data / "val")]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("verb", ["data", "train", "eval", "predict", "bench"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit:
        main([verb, "--help"])
    assert exit.value.code == 0 and f"usage: fpnbook {verb}" in capsys.readouterr().out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "fpnbook", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


def test_data_refuses_to_overwrite(tiny_data, capsys):
    assert main(["data", "--out", str(tiny_data), "--val", "2", "--size", "64"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_train_writes_checkpoint_log_and_summary(trained):
    assert (trained / "last.pt").is_file()
    assert len((trained / "metrics.jsonl").read_text().splitlines()) >= 2
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["command"].startswith("python -m fpnbook train") and "bbox" in summary["val"]


def test_eval_prints_ap_table(trained, tiny_data, capsys):
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--ann", str(tiny_data / "val.json"),
                 "--images", str(tiny_data / "val")]) == 0
    table = capsys.readouterr().out
    assert "AP50" in table and "segm" in table


def test_predict_draws_and_writes_results(trained, tiny_data, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trained / "last.pt"), "--images", str(tiny_data / "val"),
                 "--out", str(out), "--score-threshold", "0.0"]) == 0
    assert len(list(out.glob("*_pred.png"))) == 2
    results = json.loads((out / "results.json").read_text())
    assert all({"image_id", "bbox", "score", "category_id", "file_name"} <= r.keys() for r in results)
    assert main(["predict", "--checkpoint", str(trained / "last.pt"), "--images", str(tiny_data / "val"),
                 "--out", str(out)]) == 2  # refuses to overwrite the drawings


def test_bench_reports_images_per_second(capsys):
    assert main(["bench", "--model", "retinanet", "--size", "64", "--batch-size", "1", "--repeats", "1",
                 "--threads", "1"]) == 0
    assert capsys.readouterr().out.count("images/s") == 2


def test_data_from_labelme(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"imagePath": "a.png", "imageHeight": 8, "imageWidth": 8,
                                                  "shapes": [{"label": "x", "points": [[1, 1], [6, 1], [6, 6]]}]}))
    assert main(["data", "--from-labelme", str(tmp_path), "--out", str(tmp_path / "coco.json")]) == 0
    assert json.loads((tmp_path / "coco.json").read_text())["categories"][0]["name"] == "x"


def test_checkpoint_errors_are_clear(tmp_path, trained, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((trained / "last.pt").read_bytes()[:1000])
    assert main(["eval", "--checkpoint", str(corrupt)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    state = torch.load(trained / "last.pt", weights_only=True)
    state["model_config"]["kind"] = "yolo"
    torch.save(state, tmp_path / "badconfig.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "badconfig.pt")]) == 2
    assert "ModelConfig.kind" in capsys.readouterr().err


def test_train_rejects_bad_config(tiny_data, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path), "--iterations", "0", "--train-ann", str(tiny_data / "train.json"),
            "--train-images", str(tiny_data / "train")]
    assert main(argv) == 2
    assert "iterations" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adam"], "invalid choice"),
    (["--ema-decay", "1.5"], "--ema-decay"),
    (["--rpn-pre-nms-top-n", "0"], "--rpn-pre-nms-top-n"),
    (["--rpn-post-nms-top-n", "-3"], "--rpn-post-nms-top-n"),
    (["--rois-per-image", "0"], "--rois-per-image"),
    (["--lr", "-1"], "--lr"),
])
def test_train_rejects_bad_recipe_options(tiny_data, tmp_path, capsys, flags, message):
    argv = ["train", "--out", str(tmp_path), "--train-ann", str(tiny_data / "train.json"),
            "--train-images", str(tiny_data / "train"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_mask_classes_name_the_flag(tiny_data, tmp_path, capsys):
    argv = ["pretrain", "--out", str(tmp_path / "b"), "--iterations", "1", "--mask-classes", "1,a"]
    assert main(argv) == 2
    assert "--mask-classes must be comma-separated integer labels" in capsys.readouterr().err


def test_train_fine_tunes_torchvision_weights(tiny_data, tmp_path, capsys):
    """`--init-torchvision`: stand-in weights of torchvision's Faster R-CNN (random, 5 classes) fine-tuned on 8."""
    import torchvision

    from fpnbook.checkpoint import load_model

    torch.manual_seed(0)
    standin = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5)
    torch.save(standin.state_dict(), tmp_path / "fasterrcnn.pt")
    out = tmp_path / "run"
    argv = ["train", "--model", "faster_rcnn", "--out", str(out), "--iterations", "2", "--batch-size", "1",
            "--workers", "0", "--warmup", "1", "--init-torchvision", str(tmp_path / "fasterrcnn.pt"),
            "--train-ann", str(tiny_data / "train.json"), "--train-images", str(tiny_data / "train"),
            "--val-ann", str(tiny_data / "val.json"), "--val-images", str(tiny_data / "val")]
    assert main(argv) == 0
    assert "started afresh for --num-classes 8: roi_heads.box_predictor.cls_score.weight" in capsys.readouterr().err
    model, state = load_model(out / "last.pt")
    assert state["model_config"]["layout"] == "torchvision" and state["train_config"]["lr"] == 1e-4
    assert model.roi_heads.box_predictor.num_logits == 9
    assert main([*argv[:4], str(tmp_path / "other"), *argv[5:], "--init", str(tmp_path / "fasterrcnn.pt")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.fixture(scope="module")
def val_subset(tmp_path_factory):
    """(ann, images) of the committed val split's first 6 images, so the shipped checkpoint runs in seconds."""
    from fpnbook.data import val_paths

    images, ann = val_paths()
    coco = json.loads(ann.read_text())
    coco["images"] = coco["images"][:6]
    kept = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    path = tmp_path_factory.mktemp("val6") / "val6.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_eval_analyse_prints_and_writes_and_refuses_to_overwrite(val_subset, tmp_path, capsys):
    ann, images = val_subset
    out = tmp_path / "analysis"
    argv = ["eval", "--checkpoint", "checkpoints/mask_rcnn.pt", "--ann", str(ann), "--images", str(images),
            "--analyse", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "box AP per category" in printed and "hexagon" in printed
    assert "error breakdown (TIDE" in printed and "mask dAP" in printed
    from fpnbook.analysis import analysis_files

    assert sorted(p.name for p in out.iterdir()) == sorted(analysis_files())
    record = json.loads((out / "analysis.json").read_text())
    assert record["command"].startswith("python -m fpnbook eval") and record["segm"]["errors"]["ap"] > 0.5
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # Refused before the model is even loaded: a missing checkpoint is not what it complains of.
    assert main([*argv[:2], str(tmp_path / "missing.pt"), *argv[3:]]) == 2
    err = capsys.readouterr().err
    assert "analysis.json exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(argv[:-2] + ["--overwrite"]) == 2
    assert "give --analyse too" in capsys.readouterr().err
    assert main(argv[:-1] + [str(out / "analysis.json"), "--overwrite"]) == 2
    assert "not a folder" in capsys.readouterr().err
