"""Turn `python -m fpnbook train` run folders into the shipped checkpoints and their cards.

    python checkpoints/make_cards.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--hardware TEXT] [--evaluate]

A run folder of ``python -m fpnbook pretrain`` (it holds ``backbone.pt``) becomes
``checkpoints/NAME.pt`` as it is, with a card giving its command, cost and how well it
segments fresh generated images (:func:`backbone_card`). For each detector run: ``checkpoints/NAME.pt`` (weights, model config, train config and the
command; no optimizer state, see :func:`fpnbook.checkpoint.export_weights`),
``checkpoints/NAME.metrics.jsonl`` (the run's log, for learning curves),
``checkpoints/NAME.md`` (the card) and its entry in ``checkpoints/cards.json``.
The COCO AP comes from the run's ``summary.json`` (the final evaluation on the committed
validation split, the same as ``python -m fpnbook eval --checkpoint checkpoints/NAME.pt``);
``--evaluate`` recomputes it from the exported file instead. ``tests/test_checkpoints.py``
checks that the two agree.

Each card also scores the file on a *fresh* generated split (256 images of a seed the
project uses nowhere else, :data:`FRESH_SEED`), so the numbers are not those of one small
split, and states how far each AP is from its target and how many more training steps
a log-linear fit of the run's own evaluations says would close that gap (a rough
extrapolation: AP grows more slowly than that fit near its ceiling).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import torch

import fpnbook
from fpnbook import data
from fpnbook.checkpoint import export_weights, load_checkpoint, load_model, read_backbone
from fpnbook.pretrain import ShapesSemantic, object_accuracy, pretrainer_from_state, segmentation_scores
from fpnbook.train import evaluate_model, hardware, read_metrics

HERE = Path(__file__).resolve().parent
CARDS = HERE / "cards.json"
TARGETS = {"mask_rcnn": {"bbox": 0.85, "segm": 0.80}, "retinanet": {"bbox": 0.85}}  # the book's goals, COCO AP@[.5:.95]
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
FRESH_SEED, FRESH_IMAGES = 20261201, 256  # a generated split no experiment or run uses


def log_linear_fit(evals: list[tuple[int, float]]) -> tuple[float, float] | None:
    """``(a, b)`` of ``AP = a + b log(step)``, least-squares fitted to ``evals``; None below two points."""
    points = [(math.log(step), ap) for step, ap in evals if step > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    b = sum((x - mx) * (y - my) for x, y in points) / max(sum((x - mx) ** 2 for x, _ in points), 1e-12)
    return my - b * mx, b


def gap_note(c: dict, evals: dict[str, list[tuple[int, float]]]) -> str:
    """How far each AP is from its target, and what the run's own curve says would close the gap."""
    lines = []
    for iou_type, goal in c["targets"].items():
        reached = min(c["val"][iou_type]["AP"], c["fresh"][iou_type]["AP"])
        if reached >= goal:
            lines.append(f"{iou_type} AP {reached:.3f} meets the target {goal:.2f}.")
            continue
        fit = log_linear_fit(evals.get(iou_type, []))
        seconds = c["train_seconds"] / max(c["steps"], 1)
        if fit and fit[1] > 0:
            steps = math.exp((goal - fit[0]) / fit[1])
            budget = (f"its evaluations rose {fit[1] * math.log(2):.3f} AP per doubling of the steps, and at that rate "
                      f"{goal:.2f} needs about {steps:.2g} steps (about {steps * seconds / 3600:.2g} h at this run's pace)")
        else:
            budget = "its evaluations do not support an extrapolation"
        lines.append(f"{iou_type} AP {reached:.3f} is {goal - reached:.3f} short of the target {goal:.2f}; {budget}.")
    return " ".join(lines)


def option(command: str, name: str, default: str) -> str:
    found = re.search(rf"--{name}[ =](\S+)", command)
    return found.group(1) if found else default


def card(name: str, run: Path, hardware_text: str, recompute: bool) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    command = summary["command"].replace(f"--out {option(summary['command'], 'out', '')}", f"--out runs/{name}")
    # Resuming is exact (same batches, RNG and schedule), so the command without --resume remakes the file.
    command = re.sub(r" --resume \S+", "", command)
    out = export_weights(run / "last.pt", HERE / f"{name}.pt", command=command)
    shutil.copyfile(run / "metrics.jsonl", HERE / f"{name}.metrics.jsonl")
    state = load_checkpoint(out)
    val = summary["val"]
    model, _ = load_model(out)
    if recompute:
        val = evaluate_model(model, data.open_dataset(None, None))
    fresh_images, fresh_ann = data.ensure_split("val", FRESH_IMAGES, 256, seed=FRESH_SEED, progress=False)
    fresh = evaluate_model(model, data.CocoDataset(fresh_images, fresh_ann))
    evals = {}
    logged = [r["train_seconds"] for r in read_metrics(run / "metrics.jsonl") if "train_seconds" in r]
    for entry in read_metrics(run / "metrics.jsonl"):
        for iou_type, stats in entry.get("eval", {}).items():
            evals.setdefault(iou_type, []).append((entry["step"], stats["AP"]))
    size, seed = int(option(command, "size", "256")), int(option(command, "data-seed", "0"))
    count = int(option(command, "synthetic", "2000"))
    return {
        "name": name,
        "file": out.name,
        "size_mib": round(out.stat().st_size / 2**20, 2),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "model_config": state["model_config"],
        "command": command,
        "seed": int(option(command, "seed", "0")),
        "steps": state["step"],
        "data": {"generator": "fpnbook.data.generate_split", "generator_version": data.GENERATOR_VERSION,
                 "split": "train", "images": count, "image_size": size, "seed": seed,
                 "cache_folder": f"shapes-v{data.GENERATOR_VERSION}-train{count}-{size}px-seed{seed}"},
        "train_seconds": summary["train_seconds"],
        "step_seconds": logged[-1] if logged else None,
        "hardware": hardware_text,
        "fpnbook_version": fpnbook.__version__,
        "torch_version": torch.__version__,
        "eval_command": f"python -m fpnbook eval --checkpoint checkpoints/{name}.pt",
        "val_split": "data/val.json (48 images, 256 px)",
        "val": {t: {k: round(v[k], 4) for k in KEYS} for t, v in val.items()},
        "fresh_split": f"generated val split, {FRESH_IMAGES} images of 256 px, seed {FRESH_SEED}",
        "fresh": {t: {k: round(v[k], 4) for k in KEYS} for t, v in fresh.items()},
        "targets": TARGETS.get(name, {}),
        "metrics_file": f"{name}.metrics.jsonl",
        "note": summary.get("note", ""),
        "evals": evals,
    }


def backbone_card(name: str, run: Path, hardware_text: str) -> dict:
    """Ship ``run/backbone.pt`` as ``checkpoints/NAME.pt``; its card, scored on fresh generated images."""
    out = HERE / f"{name}.pt"
    shutil.copyfile(run / "backbone.pt", out)
    shutil.copyfile(run / "metrics.jsonl", HERE / f"{name}.metrics.jsonl")
    state = read_backbone(out)
    command = state["command"].replace(f"--out {option(state['command'], 'out', '')}", f"--out runs/{name}")
    fresh = ShapesSemantic(FRESH_IMAGES // 4, seed=FRESH_SEED, mask_classes=state.get("mask_classes"))
    model = pretrainer_from_state(state)
    scores = segmentation_scores(model, fresh)
    if model.objects:
        scores["object_accuracy"] = object_accuracy(model, fresh)
    return {
        "name": name, "kind": "pretrained_backbone", "file": out.name,
        "size_mib": round(out.stat().st_size / 2**20, 2), "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "backbone": state["backbone"], "norm": state["norm"], "fpn_channels": state["fpn_channels"],
        "mask_classes": state.get("mask_classes"), "command": command, "steps": state["steps"],
        "images_seen": state["images_seen"], "train_seconds": round(state["train_seconds"], 2), "hardware": hardware_text,
        "fpnbook_version": fpnbook.__version__, "torch_version": torch.__version__,
        "fresh_split": f"{len(fresh)} generated pretraining images of 256 px, seed {FRESH_SEED}",
        "fresh": {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()},
        "metrics_file": f"{name}.metrics.jsonl",
    }


def backbone_markdown(c: dict) -> str:
    shapes = "every class" if c["mask_classes"] is None else f"classes {c['mask_classes']} only (the others are ignored over their boxes)"
    ious = " | ".join(f"{v:.2f}" for v in c["fresh"]["iou"].values())
    objects = (f"; the per-object branch names the shape of {c['fresh']['object_accuracy']:.1%} of the objects from "
               "their boxes (chance: 12.5%)" if "object_accuracy" in c["fresh"] else "; no per-object branch")
    return f"""# `{c['file']}`: pretrained backbone ({c['backbone']} ResNet + FPN, {c['norm']})

{c['size_mib']} MiB, sha256 `{c['sha256'][:16]}...`. The body, FPN and segmentation head of
`fpnbook.pretrain.SemanticPretrainer`, trained to label every pixel of freshly generated
images with its shape class. Detectors start from it with `python -m fpnbook train --init checkpoints/{c['file']}`.

| | |
|---|---|
| command | `{c['command']}` |
| steps | {c['steps']} ({c['images_seen']} generated images, each seen once) |
| labels | the shapes of {shapes} |
| training time | {c['train_seconds']} s wall |
| hardware | {c['hardware']} |
| versions | fpnbook {c['fpnbook_version']}, torch {c['torch_version']} |

## Segmentation of fresh images ({c['fresh_split']})

Pixel accuracy {c['fresh']['pixel_accuracy']:.3f}, mean IoU {c['fresh']['mean_iou']:.3f}{objects}.

| {' | '.join(c['fresh']['iou'])} |
|{'---|' * len(c['fresh']['iou'])}
| {ious} |

Learning curve: `{c['metrics_file']}`.
"""


def markdown(c: dict) -> str:
    def table_rows(results: dict) -> str:
        return "\n".join(f"| {t} | " + " | ".join(f"{v[k]:.3f}" for k in KEYS) + " |" for t, v in results.items())

    rows, fresh_rows = table_rows(c["val"]), table_rows(c["fresh"])
    targets = ", ".join(f"{t} AP >= {v}" for t, v in c["targets"].items()) or "none set"
    steps_time = (f"; {c['step_seconds']:.0f} s in training steps (evaluations excluded, every session of a "
                  "resumed run counted)" if c.get("step_seconds") else "")
    d = c["data"]
    return f"""# `{c['file']}`: {c['model_config']['kind']}

{c['size_mib']} MiB, sha256 `{c['sha256'][:16]}...`. Weights, model config and train config;
no optimizer state (it cannot be resumed, retrain with the command below).

| | |
|---|---|
| model | `{json.dumps(c['model_config'])}` |
| command | `{c['command']}` |
| seed | {c['seed']} |
| steps | {c['steps']} |
| data | generated shapes, generator v{d['generator_version']}, {d['images']} images of {d['image_size']} px, seed {d['seed']} (`~/.cache/fpnbook/{d['cache_folder']}`) |
| training time | {c['train_seconds']} s wall, final evaluation included{steps_time} |
| hardware | {c['hardware']} |
| versions | fpnbook {c['fpnbook_version']}, torch {c['torch_version']} |

## COCO AP on the committed validation split ({c['val_split']})

`{c['eval_command']}`

| | {' | '.join(KEYS)} |
|---|{'---|' * len(KEYS)}
{rows}

## COCO AP on a fresh split ({c['fresh_split']})

| | {' | '.join(KEYS)} |
|---|{'---|' * len(KEYS)}
{fresh_rows}

Targets: {targets}. {c['gap']}
Learning curve: `{c['metrics_file']}`.
{c['note']}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    p.add_argument("--hardware", default=None, help="where the runs trained (default: this machine)")
    p.add_argument("--evaluate", action="store_true", help="recompute the AP from the exported file")
    args = p.parse_args(argv)
    cards = json.loads(CARDS.read_text()) if CARDS.exists() else {}
    for spec in args.runs:
        name, _, run = spec.partition("=")
        if (Path(run) / "backbone.pt").is_file():
            c = backbone_card(name, Path(run), args.hardware or hardware())
            (HERE / f"{name}.md").write_text(backbone_markdown(c))
            print(f"{name}: {c['size_mib']} MiB, mean IoU {c['fresh']['mean_iou']:.3f}")
        else:
            c = card(name, Path(run), args.hardware or hardware(), args.evaluate)
            c["gap"] = gap_note(c, c["evals"])
            (HERE / f"{name}.md").write_text(markdown(c))
            print(f"{name}: {c['size_mib']} MiB, " + ", ".join(f"{t} AP {v['AP']:.3f}" for t, v in c["val"].items()))
        cards[name] = c
    CARDS.write_text(json.dumps(dict(sorted(cards.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
