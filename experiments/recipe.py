"""The from-scratch training recipe, chosen by measurement: Mask R-CNN variants scored on a decision split.

    python -m experiments.recipe [--variants old new ...] [--seeds 0 1] [--iterations 400] [--threads 1]

Each variant trains the book's Mask R-CNN (``fpnbook.models.build``, tiny ResNet + FPN)
from the same seeded initialisation, on the same cached generated split (2000 images,
256 px, random flip, the CLI's data), for the same number of steps of batch 4, and is
scored with COCO box and mask AP on a *decision split*: 256 freshly generated images
of a seed used nowhere else (``--decision-seed``). The committed 48-image validation
split is for reporting only and never chooses anything here.

Since the figure of merit is AP per minute of training, each run also records its
training seconds (evaluation excluded). A variant changes one thing against ``new``
(the defaults of :class:`fpnbook.train.TrainConfig` and :class:`fpnbook.models.ModelConfig`)
or against ``old`` (the first edition's SGD recipe with COCO-sized proposal counts):

- ``old``: SGD lr 0.02, momentum 0.9, wd 1e-4 (norms too), warmup 100, x0.1 at 2/3 and 8/9;
  RPN 2000/2000 proposals, 512 RoIs per image;
- ``old-sized``: ``old`` with 600/300 proposals and 128 RoIs (what sizing does alone);
- ``adamw-no-ema``: ``new`` without the EMA (what the EMA adds);
- ``new``: AdamW lr 1e-3, wd 0.05 on weights only, warmup 100 then cosine, EMA 0.999, 600/300/128;
- ``new-lr2e-3``, ``new-lr5e-4``: the peak learning rate;
- ``new-coco-sized``: ``new`` with 2000/2000/512 (what sizing costs in AP per step);
- ``pretrained``: ``new``, started from the book's pretrained backbone
  (``checkpoints/backbone.pt``, made by ``python -m fpnbook pretrain``: body, FPN and the
  box head's fc layers); its pretraining seconds are recorded beside the run's, since they
  count in the budget;
- ``pretrained-pixels``: the same from ``checkpoints/backbone_pixels.pt``, pretrained with
  per-pixel labels only (``--no-objects``: body and FPN).

The record is rewritten after every run, and a run already in the record at ``--out``
is skipped, so a stopped sweep continues where it stopped (``--out`` the same file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

from experiments import common
from fpnbook import data
from fpnbook.checkpoint import load_backbone, read_backbone
from fpnbook.models import COCO_SIZING, ModelConfig, build
from fpnbook.train import DETECTRON_RECIPE, TrainConfig, evaluate_model, train

NAME = "recipe"
ROOT = Path(__file__).resolve().parents[1]
OLD_SIZING, OLD_RECIPE = COCO_SIZING, DETECTRON_RECIPE
# name -> (TrainConfig overrides, ModelConfig overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "old": (OLD_RECIPE, OLD_SIZING),
    "old-sized": (OLD_RECIPE, {}),
    "adamw-no-ema": (dict(ema_decay=None), {}),
    "new": ({}, {}),
    "new-lr2e-3": (dict(lr=2e-3), {}),
    "new-lr5e-4": (dict(lr=5e-4), {}),
    "new-coco-sized": ({}, OLD_SIZING),
    "pretrained": ({}, {}),
    "pretrained-pixels": ({}, {}),
}
# variants that start from a pretrained backbone, and its file
PRETRAINED = {"pretrained": "checkpoints/backbone.pt", "pretrained-pixels": "checkpoints/backbone_pixels.pt"}
DEFAULT_VARIANTS = ("old", "old-sized", "adamw-no-ema", "new")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(DEFAULT_VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (init and batch order)")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--decision-images", type=int, default=256)
    p.add_argument("--decision-seed", type=int, default=101, help="seed of the generated decision split")
    return p


def run_one(variant: str, seed: int, args: argparse.Namespace, train_set, decision_set) -> dict:
    """Train one variant with one seed; its box/mask AP on the decision split and its training time."""
    train_overrides, model_overrides = VARIANTS[variant]
    model_config = ModelConfig(kind="mask_rcnn", num_classes=train_set.num_classes, **model_overrides)
    config = TrainConfig(iterations=args.iterations, batch_size=4 if not args.smoke else 2, seed=seed,
                         warmup_iters=min(100, args.iterations), device="cpu", progress=False, log_every=0,
                         **train_overrides)
    torch.manual_seed(seed)
    model = build(model_config)
    extra = {}
    if variant in PRETRAINED:
        backbone = read_backbone(ROOT / PRETRAINED[variant])
        load_backbone(model, backbone, model_config)
        extra = {"init": PRETRAINED[variant], "init_train_seconds": backbone.get("train_seconds"),
                 "init_command": backbone.get("command")}
    start = time.perf_counter()
    train(model, train_set, config)
    seconds = time.perf_counter() - start
    ap = evaluate_model(model, decision_set, device="cpu")
    return {"variant": variant, "seed": seed, "train_seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / args.iterations, 3),
            "bbox": {k: round(v, 4) for k, v in ap["bbox"].items()},
            "segm": {k: round(v, 4) for k, v in ap["segm"].items()}, **extra}


def summarise(runs: list[dict]) -> dict:
    """Per variant: mean box/mask AP over seeds, mean seconds per step."""
    table = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        mean = lambda values: round(sum(values) / len(values), 4)  # noqa: E731
        table[variant] = {"seeds": [r["seed"] for r in mine], "bbox_AP": mean([r["bbox"]["AP"] for r in mine]),
                          "segm_AP": mean([r["segm"]["AP"] for r in mine]),
                          "seconds_per_step": mean([r["seconds_per_step"] for r in mine])}
    return table


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.iterations, args.train_images, args.decision_images, args.variants = 2, 4, 4, ["old", "new"]
    train_set = data.CocoDataset(*data.ensure_split("train", args.train_images, 256, seed=0, progress=False),
                                 transforms=v2.RandomHorizontalFlip(0.5))
    decision_set = data.CocoDataset(*data.ensure_split("val", args.decision_images, 256, seed=args.decision_seed,
                                                       progress=False))
    path = common.result_path(NAME, args)
    done, envelope = [], {}
    if path.exists() and not args.smoke:
        envelope = json.loads(path.read_text())  # its commands and note stay (common.main, cumulative)
        done = envelope["metrics"]["runs"]
    for seed in args.seeds:
        for variant in args.variants:
            if any(r["variant"] == variant and r["seed"] == seed and r.get("iterations") == args.iterations
                   for r in done):
                continue
            result = {**run_one(variant, seed, args, train_set, decision_set), "iterations": args.iterations}
            done.append(result)
            print(f"{variant:<16} seed {seed}: box AP {result['bbox']['AP']:.3f}, mask AP {result['segm']['AP']:.3f}, "
                  f"{result['seconds_per_step']:.2f} s/step", flush=True)
            if not args.smoke:  # keep what is done if the sweep stops
                common.write_record(path, {**envelope, "experiment": NAME, "partial": True, "smoke": False,
                                           "metrics": {**envelope.get("metrics", {}), "runs": done}})
    return {"decision_split": {"images": args.decision_images, "seed": args.decision_seed, "image_size": 256},
            "train_images": args.train_images, "runs": done, "summary": summarise([r for r in done if r["iterations"] == args.iterations])}


def main(argv: list[str] | None = None) -> dict:
    return common.main(NAME, run, build_parser, argv, cumulative=True)


if __name__ == "__main__":
    main()
