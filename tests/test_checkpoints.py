"""fpnbook.checkpoint, and the shipped checkpoints.

The module: run checkpoints and shipped weights (save, load, export, ``load_model``), the
run-folder rule and resuming, pretrained backbone files (read, apply, ``build_from_backbone``).
The shipped files: each loads, scores what its card says, and its command still trains.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from test_train import ToyDataset, ToyDetector
from test_train import config as toy_config

from fpnbook import cli, data, pretrain
from fpnbook import train as T
from fpnbook.checkpoint import (RUN_FILES, build_from_backbone, check_run_folder, export_weights, load_backbone,
                                load_checkpoint, load_model, read_backbone, save_checkpoint)
from fpnbook.files import atomic_save
from fpnbook.models import ModelConfig, build
from fpnbook.pretrain import SemanticPretrainer, ShapesSemantic, backbone_state, pretrainer_from_state, segmentation_scores
from fpnbook.train import evaluate_model, read_metrics

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
CARDS = json.loads((CHECKPOINTS / "cards.json").read_text()) if (CHECKPOINTS / "cards.json").exists() else {}
NAMES = sorted(n for n, c in CARDS.items() if c.get("kind") != "pretrained_backbone") or ["none"]
BACKBONE_NAMES = sorted(n for n, c in CARDS.items() if c.get("kind") == "pretrained_backbone") or ["none"]
FRESH_SEED = 20261201  # checkpoints/make_cards.py's fresh split
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ---------------------------------------------------------------- the module


def test_one_home_for_checkpoints():
    """Each job lives in fpnbook.checkpoint only: no alias is left where it used to be."""
    moved = {cli: ("load_model", "open_dataset"),
             T: ("save_checkpoint", "load_checkpoint", "export_weights", "check_resumable", "RUN_FILES"),
             pretrain: ("read_backbone", "load_backbone", "BACKBONE_FORMAT")}
    for module, names in moved.items():
        left = [name for name in names if hasattr(module, name)]
        assert not left, f"{module.__name__} still offers {left}"


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not an fpnbook checkpoint"):
        load_checkpoint(foreign)


def test_load_model_builds_what_the_file_describes(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(kind="retinanet")
    model = build(config)
    save_checkpoint(tmp_path / "last.pt", model, step=3, model_config=config.to_dict())
    loaded, state = load_model(tmp_path / "last.pt")
    assert not loaded.training and state["step"] == 3 and state["model_config"] == config.to_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    shipped, _ = load_model(export_weights(tmp_path / "last.pt", tmp_path / "shipped.pt", command="x"))
    assert shipped.state_dict().keys() == model.state_dict().keys()
    save_checkpoint(tmp_path / "bare.pt", model)
    with pytest.raises(ValueError, match="no model_config"):
        load_model(tmp_path / "bare.pt")
    save_checkpoint(tmp_path / "other.pt", model, model_config=ModelConfig(kind="mask_rcnn").to_dict())
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / "other.pt")


def test_run_folder_rule(tmp_path):
    check_run_folder(tmp_path)  # an empty folder, or none at all, holds no run
    check_run_folder(tmp_path / "new")
    check_run_folder(None)
    for name in RUN_FILES:
        (tmp_path / name).write_text("")
        with pytest.raises(FileExistsError, match=f"already holds a run \\({name}\\).*--overwrite"):
            check_run_folder(tmp_path)
        check_run_folder(tmp_path, resume=tmp_path / "last.pt")
        check_run_folder(tmp_path, overwrite=True)
        (tmp_path / name).unlink()


def test_resume_refuses_what_cannot_continue(tmp_path):
    torch.manual_seed(0)
    T.train(ToyDetector(), ToyDataset(), toy_config(tmp_path / "run"))
    last = tmp_path / "run" / "last.pt"
    exported = export_weights(last, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="weights only"):
        T.train(ToyDetector(), ToyDataset(), toy_config(tmp_path / "x"), resume=exported)
    with pytest.raises(ValueError, match="optimizer='adamw'"):
        T.train(ToyDetector(), ToyDataset(), toy_config(tmp_path / "x", optimizer="sgd"), resume=last)
    with pytest.raises(ValueError, match="EMA"):
        T.train(ToyDetector(), ToyDataset(), toy_config(tmp_path / "x", ema_decay=None), resume=last)
    state = torch.load(last, weights_only=True)
    state["model_config"] = {"kind": "retinanet"}
    torch.save(state, tmp_path / "retina.pt")
    with pytest.raises(ValueError, match="retinanet checkpoint"):
        T.train(ToyDetector(), ToyDataset(), toy_config(tmp_path / "x"), resume=tmp_path / "retina.pt",
                model_config={"kind": "mask_rcnn"})


@pytest.mark.parametrize("kind, parts", [("mask_rcnn", ["body", "fpn", "box_head"]), ("faster_rcnn", ["body", "fpn", "box_head"]),
                                         ("retinanet", ["body"])])
def test_load_backbone_copies_what_fits(kind, parts):
    torch.manual_seed(1)
    pretrainer = SemanticPretrainer()
    state = backbone_state(pretrainer)
    config = ModelConfig(kind=kind)
    model = build(config)
    assert load_backbone(model, state, config) == parts
    for name, tensor in pretrainer.backbone.backbone.state_dict().items():
        assert torch.equal(model.backbone.backbone.state_dict()[name], tensor)
    fpn_equal = all(torch.equal(model.backbone.fpn.state_dict()[k], v)
                    for k, v in pretrainer.backbone.fpn.state_dict().items() if k in model.backbone.fpn.state_dict())
    assert fpn_equal == ("fpn" in parts)


def test_load_backbone_refuses_mismatches():
    state = backbone_state(SemanticPretrainer())
    with pytest.raises(ValueError, match="norm"):
        config = ModelConfig(kind="mask_rcnn", norm="bn")
        load_backbone(build(config), state, config)
    mask_x = ModelConfig(kind="mask_x_rcnn", mask_classes=(1, 3))
    with pytest.raises(ValueError, match="mask_classes"):
        load_backbone(build(mask_x), state, mask_x)  # it saw every class's shapes
    own = backbone_state(SemanticPretrainer(), mask_classes=[1, 3])
    assert load_backbone(build(mask_x), own, mask_x) == ["body", "fpn", "box_head"]
    with pytest.raises(ValueError, match="mask_classes"):
        config = ModelConfig(kind="mask_rcnn")
        load_backbone(build(config), own, config)


def test_read_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_backbone(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pretrained backbone"):
        read_backbone(tmp_path / "other.pt")


def test_build_from_backbone_is_build_then_load_backbone(tmp_path):
    torch.manual_seed(2)
    path = atomic_save(backbone_state(SemanticPretrainer()), tmp_path / "backbone.pt")
    config = ModelConfig(kind="mask_rcnn")
    torch.manual_seed(0)
    model, parts = build_from_backbone(config, path)
    torch.manual_seed(0)
    expected = build(config)
    assert parts == load_backbone(expected, read_backbone(path), config) == ["body", "fpn", "box_head"]
    assert model.training and isinstance(model, type(expected))
    for name, tensor in expected.state_dict().items():  # the same weights, pretrained and fresh alike
        assert torch.equal(model.state_dict()[name], tensor)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_from_backbone(config, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="mask_classes"):
        build_from_backbone(ModelConfig(kind="mask_x_rcnn", mask_classes=(1, 3)), path)


# ---------------------------------------------------------------- the shipped checkpoints


def same_config(a: dict, b: dict) -> bool:
    """Equal model configs (JSON turns the tuple mask_classes into a list)."""
    return ModelConfig.from_dict(a) == ModelConfig.from_dict(b)


def card_and_file(name: str) -> tuple[dict, Path]:
    if name not in CARDS:
        pytest.skip("checkpoints/cards.json lists no checkpoints")
    path = CHECKPOINTS / CARDS[name]["file"]
    if not path.is_file():
        pytest.skip(f"{path} is missing (not shipped in this checkout)")
    return CARDS[name], path


@pytest.mark.parametrize("name", NAMES)
def test_card_is_complete_and_file_is_small(name):
    card, path = card_and_file(name)
    assert {"command", "seed", "data", "train_seconds", "hardware", "val", "steps"} <= card.keys()
    assert card["command"].startswith("python -m fpnbook train ")
    assert path.stat().st_size <= 8 * 2**20, "a shipped checkpoint must stay under 8 MiB"
    assert (CHECKPOINTS / f"{name}.md").is_file()
    metrics = read_metrics(CHECKPOINTS / card["metrics_file"])
    assert metrics[-1]["step"] == card["steps"]
    state = load_checkpoint(path)
    assert state.get("optimizer") is None, "shipped checkpoints carry no optimizer state"
    assert same_config(state["model_config"], card["model_config"]) and state["step"] == card["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_scores_what_its_card_says(name):
    card, path = card_and_file(name)
    model, _ = load_model(path)
    results = evaluate_model(model, data.open_dataset(None, None), device="cpu")
    assert set(results) == set(card["val"])
    for iou_type, expected in card["val"].items():
        for key in KEYS:
            assert results[iou_type][key] == pytest.approx(expected[key], abs=0.005), (iou_type, key)


def tiny_command(command: str, out: Path, val_images: Path, val_ann: Path) -> list[str]:
    """The card's `fpnbook train` arguments, shrunk to 2 steps on 4 generated 64 px images."""
    args = shlex.split(command)[3:]  # drop "python -m fpnbook"
    # A pretrained backbone named by the card is the shipped file, wherever the tests run from.
    args = [str(ROOT / a) if a.startswith("checkpoints/") else a for a in args]
    shrink = {"--iterations": "2", "--out": str(out), "--synthetic": "4", "--size": "64", "--workers": "0",
              "--log-every": "1", "--checkpoint-every": "0", "--val-ann": str(val_ann), "--val-images": str(val_images)}
    kept, i = [], 0
    while i < len(args):
        if args[i] in shrink or args[i] == "--resume":
            i += 2
            continue
        kept.append(args[i])
        i += 1
    return kept + [item for pair in shrink.items() for item in pair]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_card_command_still_trains(name, tmp_path, capsys):
    card, _ = card_and_file(name)
    val_images, val_ann = data.ensure_split("train", 4, 64, seed=0, progress=False)
    out = tmp_path / "run"
    assert cli.main(tiny_command(card["command"], out, val_images, val_ann)) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and same_config(state["model_config"], card["model_config"])
    assert json.loads((out / "summary.json").read_text())["val"]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_card_matches_its_file(name):
    card, path = card_and_file(name)
    state = read_backbone(path)
    assert card["command"].startswith("python -m fpnbook pretrain ")
    assert path.stat().st_size <= 8 * 2**20
    assert (state["steps"], state.get("mask_classes")) == (card["steps"], card["mask_classes"])
    assert read_metrics(CHECKPOINTS / card["metrics_file"])[-1]["step"] == card["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_segments_as_its_card_says(name):
    card, path = card_and_file(name)
    state = read_backbone(path)
    fresh = ShapesSemantic(int(card["fresh_split"].split()[0]), seed=FRESH_SEED, mask_classes=state.get("mask_classes"))
    scores = segmentation_scores(pretrainer_from_state(state), fresh)
    assert scores["mean_iou"] == pytest.approx(card["fresh"]["mean_iou"], abs=0.005)


@pytest.mark.parametrize("name", NAMES)
def test_detector_init_is_shipped(name):
    card, _ = card_and_file(name)
    init = re.search(r"--init (\S+)", card["command"])
    if init:
        assert (ROOT / init.group(1)).is_file(), f"{name} starts from {init.group(1)}, which is not shipped"
