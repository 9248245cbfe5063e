"""The shipped checkpoints: each loads, scores what its card says, and its command still trains."""

import json
import re
import shlex
from pathlib import Path

import pytest

from fpnbook import cli, data
from fpnbook.models import ModelConfig
from fpnbook.pretrain import ShapesSemantic, pretrainer_from_state, read_backbone, segmentation_scores
from fpnbook.train import evaluate_model, load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
CARDS = json.loads((CHECKPOINTS / "cards.json").read_text()) if (CHECKPOINTS / "cards.json").exists() else {}
NAMES = sorted(n for n, c in CARDS.items() if c.get("kind") != "pretrained_backbone") or ["none"]
BACKBONE_NAMES = sorted(n for n, c in CARDS.items() if c.get("kind") == "pretrained_backbone") or ["none"]
FRESH_SEED = 20261201  # checkpoints/make_cards.py's fresh split
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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
    model, _ = cli.load_model(path)
    results = evaluate_model(model, cli.open_dataset(None, None), device="cpu")
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
