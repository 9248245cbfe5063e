"""Box and mask AP against training minutes: fpnbook's old and new recipes and torchvision's Mask R-CNN.

    python benchmarks/time_to_ap.py [--minutes 30] [--eval-at 5,10,15,20,30]
                                    [--arms fpnbook-old,fpnbook-new,fpnbook-pretrained,torchvision]
                                    [--init checkpoints/backbone.pt] [--threads 2]
                                    [--device auto] [--train-images 2000] [--size 256] [--batch 4]
                                    [--val-images N] [--workers 0] [--target-ap 0.145]
                                    [--out PATH] [--overwrite] [--quick]

Four *arms* train one after the other in this process, each for the same wall-clock
budget of ``--minutes`` training minutes, and are scored with COCO box and mask AP on the
committed validation split (``fpnbook.data.val_paths``) at fixed minutes of training time:

- ``fpnbook-old``: fpnbook's Mask R-CNN with the recipe it shipped before: SGD (momentum
  0.9, lr 0.02, weight decay 1e-4 on every parameter, as the old loop did), 100 warm-up
  steps, x0.1 at 2/3 and 8/9 of the run, no EMA, and COCO's proposal counts (2000 per
  level before NMS and 2000 per image after it in training, 512 RoIs per image).
- ``fpnbook-new``: the same model with today's defaults, ``TrainConfig()`` and
  ``ModelConfig()`` (AdamW, cosine, EMA, 600 / 300 proposals, 128 RoIs), and the CLI's
  200 warm-up steps.
- ``fpnbook-pretrained``: ``fpnbook-new`` started from the book's pretrained backbone
  (``--init``, made by ``python -m fpnbook pretrain``: body, FPN and box-head fc layers).
  The pretraining's own minutes (from the file) are added to this arm's clock: every
  evaluation's ``total_minutes`` is its ``train_minutes`` plus them, and the minutes to a
  target AP and the figure use ``total_minutes``.
- ``torchvision``: torchvision's ``MaskRCNN`` around a copy of the same backbone and head
  weights (:func:`fpnbook.interop.to_torchvision`), with
  torchvision's default proposal counts (2000 / 2000, 512 RoIs) and the recipe of its
  reference script (``references/detection``): SGD momentum 0.9, lr 0.02 x batch / 16,
  weight decay 1e-4 on every parameter, no gradient clipping, linear warm-up from 0.001 x
  lr over min(1000, a tenth of the run) steps, x0.1 at 16/26 and 22/26 of the run, no EMA.

Everything else is shared: the initial weights (one seeded ``build``; the pretrained arm
then overwrites what its file holds), the cached generated
training split (``--train-images`` images, ``--size`` px, data seed 0) with the CLI's random
horizontal flip, the batch, the seed (so the same images in the same order; with
``--workers 0`` the flips draw from the process's random stream, which the models' samplers
also use, so they may differ between arms), the torch threads, and the training loop
(:func:`fpnbook.train.train`, which accepts any model with torchvision's detection
interface; on CUDA it adds mixed precision for every arm).

**The clock.** Training time is wall-clock time from the call to ``train`` minus the time
spent evaluating (measured with ``time.perf_counter`` in the loop's per-step callback; on
CUDA after a synchronisation). ``--clock cpu`` counts this process's CPU time instead
(``time.process_time``; one thread, data loaded in the process): on cores that other work
shares, wall time would charge an arm for whatever else ran while it trained, and CPU
time is what it actually got. On an idle core the two agree. When it passes one of the ``--eval-at`` minutes the model
that ``train`` evaluates (the EMA when there is one) is scored; when it passes the budget
the arm is scored a last time and stopped. The budget is always an evaluation point.

**The schedule fits the budget.** A learning-rate schedule that is cut off halfway would
handicap the arm, so each arm first times a short probe on a throwaway copy of its model
(warm-up steps, then timed steps, with the arm's own recipe) and plans
``iterations = budget / seconds per step``; its warm-up and decay are laid out over those
iterations. If the run is faster than the probe said and the schedule ends before the
budget, the finished model is scored at once and that score stands for the remaining
evaluation minutes (flagged ``schedule_ended`` in the record).

The report: a table of box / mask AP per evaluation minute and arm, and for each
``--target-ap`` (default 0.145, the box AP of the old shipped checkpoint) the training
minutes each arm needed to reach it (linearly interpolated between the two evaluations
around the crossing; "<= m" when the first evaluation is already above) and the ratio
fpnbook-old / fpnbook-new. Writes a JSON record (default ``benchmarks/results/time_to_ap.json``)
and a figure beside it (same name, ``.png``): box and mask AP against minutes, one line
per arm; :func:`plot` redraws that figure from a record.

``--merge A.json B.json --out C.json`` trains nothing: it combines the arms of separate runs
made with the same settings (checked) into one record and figure, so that arms can run side
by side, each timed on its own ``--clock cpu``.

``--quick`` is a smoke run: 8 training images at 128 px, 0.25 minutes per arm scored once
at the end (unless ``--eval-at`` says more), a 3-step probe, 4 validation images, and the
record in a fresh temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "time_to_ap.json"
ARMS = ("fpnbook-old", "fpnbook-new", "fpnbook-pretrained", "torchvision")
DEFAULT_INIT = ROOT / "checkpoints" / "backbone.pt"
DEFAULT_EVAL_AT = (5.0, 10.0, 15.0, 20.0, 30.0)
# The box AP of the checkpoint fpnbook shipped with the old recipe.
OLD_CHECKPOINT_BOX_AP = 0.145
QUICK = {"minutes": 0.25, "train_images": 8, "size": 128, "val_images": 4, "probe": (1, 2)}
PROBE = (2, 8)  # warm-up steps, timed steps
# "cpu" is this process's CPU time: on a machine whose cores other work shares, it is the
# compute the arm actually got, so arms timed at different moments stay comparable.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# ---------------------------------------------------------------- the arms


class Arm(NamedTuple):
    """One contender: its proposal counts in training and its optimisation recipe.

    ``recipe(iterations, batch_size)`` gives the ``TrainConfig`` fields that differ from
    the defaults for a run of ``iterations`` steps.
    """

    name: str
    description: str
    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    box_batch_size_per_image: int
    recipe: Callable[[int, int], dict]
    torchvision: bool = False
    init: bool = False  # start from the pretrained backbone (--init)


def old_recipe(iterations: int, batch_size: int) -> dict:
    from fpnbook.train import DETECTRON_RECIPE  # SGD lr 0.02, wd 1e-4 on every parameter, step decay, no EMA

    return dict(**DETECTRON_RECIPE, warmup_iters=min(100, iterations))


def new_recipe(iterations: int, batch_size: int) -> dict:
    return dict(warmup_iters=min(200, iterations))  # the CLI's warm-up; the rest are TrainConfig's defaults


def torchvision_recipe(iterations: int, batch_size: int) -> dict:
    # references/detection/train.py: lr 0.02 for 16 images a step (8 GPUs x 2), scaled linearly;
    # SGD over model.parameters() with one weight decay; 26 epochs, x0.1 after epochs 16 and 22;
    # linear warm-up from 1/1000 in the first epoch; no gradient clipping.
    return dict(optimizer="sgd", lr=0.02 * batch_size / 16, momentum=0.9, weight_decay=1e-4, decay_norm_and_bias=True,
                schedule="step", milestones=(iterations * 16 // 26, iterations * 22 // 26), lr_decay=0.1,
                warmup_iters=min(1000, iterations // 10), warmup_factor=1e-3, ema_decay=None, clip_grad_norm=None)


ARM_SPECS = {
    "fpnbook-old": Arm("fpnbook-old", "fpnbook Mask R-CNN, old recipe: SGD lr 0.02, step decay, no EMA, "
                       "2000/2000 proposals, 512 RoIs",
                       2000, 2000, 512, old_recipe),
    "fpnbook-new": Arm("fpnbook-new", "fpnbook Mask R-CNN, TrainConfig()/ModelConfig() defaults: AdamW, cosine, EMA, "
                       "600/300 proposals, 128 RoIs", 600, 300, 128, new_recipe),
    "fpnbook-pretrained": Arm("fpnbook-pretrained", "fpnbook-new started from the book's pretrained backbone "
                              "(its pretraining minutes count)", 600, 300, 128, new_recipe, init=True),
    "torchvision": Arm("torchvision", "torchvision MaskRCNN, same backbone and initial weights, reference-script recipe: "
                       "SGD lr 0.02*batch/16, multi-step, 2000/2000 proposals, 512 RoIs", 2000, 2000, 512,
                       torchvision_recipe, torchvision=True),
}


def proposal_counts(model) -> dict:
    """The training-time proposal counts and RoI batch a model really uses (fpnbook's or torchvision's).

    Both RPNs answer ``pre_nms_top_n()`` / ``post_nms_top_n()`` for their current mode.
    """
    sampler = getattr(model.roi_heads, "sampler", None) or model.roi_heads.fg_bg_sampler
    mode = model.rpn.training
    model.rpn.train()
    counts = {"rpn_pre_nms_top_n_train": int(model.rpn.pre_nms_top_n()),
              "rpn_post_nms_top_n_train": int(model.rpn.post_nms_top_n()),
              "box_batch_size_per_image": int(sampler.batch_size_per_image)}
    model.rpn.train(mode)
    return counts


def build_arm_model(arm: Arm, initial_state: dict, num_classes: int, image_size: int, seed: int,
                    init_state: dict | None = None):
    """The arm's model with the shared initial weights (and, for an ``init`` arm, the pretrained ones)."""
    import torch

    from fpnbook.models import ModelConfig, build
    from fpnbook.checkpoint import load_backbone

    torch.manual_seed(seed)
    config = ModelConfig(kind="mask_rcnn", num_classes=num_classes, rpn_pre_nms_top_n_train=arm.rpn_pre_nms_top_n_train,
                         rpn_post_nms_top_n_train=arm.rpn_post_nms_top_n_train,
                         box_batch_size_per_image=arm.box_batch_size_per_image)
    ours = build(config)
    ours.load_state_dict(initial_state)
    if arm.init:
        load_backbone(ours, init_state, config)
    if not arm.torchvision:
        return ours
    from fpnbook.interop import to_torchvision

    # The twin copies our counts, which for this arm are torchvision's own defaults.
    return to_torchvision(ours, image_size)


def backbone_fingerprint(model) -> float:
    """A checksum of the backbone's weights, recorded per arm to show that all arms start from the same ones."""
    import torch

    with torch.no_grad():
        return round(sum(float(p.double().mul(i + 1).sum()) for i, p in enumerate(model.backbone.parameters())), 6)


# ---------------------------------------------------------------- timing and evaluating


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_config(arm: Arm, iterations: int, batch_size: int, seed: int, device, workers: int, log_every: int):
    from fpnbook.train import TrainConfig

    return TrainConfig(iterations=iterations, batch_size=batch_size, seed=seed, device=str(device),
                       num_workers=workers, log_every=log_every, progress=False, **arm.recipe(iterations, batch_size))


def probe_step_seconds(arm: Arm, model, train_set, batch_size: int, seed: int, device, workers: int,
                       warmup: int, timed: int, now: Callable[[], float] | None = None) -> float:
    """Seconds per training step of ``arm``: ``warmup`` steps, then the mean of ``timed`` steps, on a copy."""
    from fpnbook.train import train

    stamps: list[float] = []
    now = now if now is not None else time.perf_counter

    def tick(done: int, _model) -> None:
        synchronize(device)
        stamps.append(now())

    config = train_config(arm, warmup + timed, batch_size, seed, device, workers, log_every=0)
    train(copy.deepcopy(model), train_set, config, callback=tick)
    return (stamps[-1] - stamps[warmup - 1]) / timed


def ap_summary(results: dict) -> dict:
    """The numbers the record keeps of an :func:`fpnbook.train.evaluate_model` result."""
    keep = ("AP", "AP50", "AP75")
    return {iou: {k: round(float(results[iou][k]), 4) for k in keep} for iou in ("bbox", "segm") if iou in results}


class BudgetClock:
    """The per-step callback of one arm's run: training seconds, evaluations at the marks, the stop.

    Training seconds are the time on ``now`` (wall clock, or this process's CPU time) since
    :meth:`start` minus the evaluations' time. ``evaluate(model) -> dict`` scores a model.
    Call :meth:`start` right before ``train``.
    """

    def __init__(self, marks_min: Sequence[float], budget_min: float, iterations: int,
                 evaluate: Callable, device, report: Callable[[str], None] = print,
                 now: Callable[[], float] | None = None) -> None:
        self.now = now if now is not None else time.perf_counter
        self.pending = sorted(marks_min)
        self.budget_s, self.iterations = budget_min * 60, iterations
        self.evaluate, self.device, self.report = evaluate, device, report
        self.started = self.eval_seconds = 0.0
        self.evals: list[dict] = []
        self.steps = 0
        self.train_seconds = 0.0
        self.stopped_by = None

    def start(self) -> None:
        synchronize(self.device)
        self.started = self.now()

    def __call__(self, done: int, model) -> bool:
        synchronize(self.device)
        trained = self.now() - self.started - self.eval_seconds
        self.steps, self.train_seconds = done, trained
        over, last = trained >= self.budget_s, done >= self.iterations
        due = list(self.pending) if over or last else [m for m in self.pending if m * 60 <= trained]
        if due:
            tic = self.now()
            scores = self.evaluate(model)
            seconds = self.now() - tic
            self.eval_seconds += seconds
            for mark in due:
                self.evals.append({"minute": mark, "train_minutes": round(trained / 60, 3), "step": done,
                                   "schedule_ended": mark * 60 > trained, **scores})
            self.pending = self.pending[len(due):]
            box, mask = scores.get("bbox", {}).get("AP", math.nan), scores.get("segm", {}).get("AP", math.nan)
            self.report(f"  {trained / 60:6.2f} min, step {done}: box AP {box:.3f}, mask AP {mask:.3f} "
                        f"(eval {seconds:.0f} s)")
        if over or last:
            self.stopped_by = "budget" if over else "schedule"
        return over


# ---------------------------------------------------------------- the summary


def minutes_to_reach(evals: Sequence[dict], target: float) -> dict | None:
    """Training minutes until box AP first reaches ``target``, or None when it never does.

    ``first_eval``: the first evaluation at or above it; ``interpolated``: the linear
    interpolation between that evaluation and the one before (None when there is none before).
    """
    previous = None
    for entry in evals:
        minutes, ap = entry.get("total_minutes", entry["train_minutes"]), entry.get("bbox", {}).get("AP", math.nan)
        if ap >= target:
            interpolated = None
            if previous is not None and ap > previous[1]:
                interpolated = previous[0] + (target - previous[1]) * (minutes - previous[0]) / (ap - previous[1])
                interpolated = round(interpolated, 3)
            return {"first_eval": minutes, "interpolated": interpolated}
        previous = (minutes, ap)
    return None


def time_to_target(arms: dict, target: float) -> dict:
    """For ``target``: each arm's :func:`minutes_to_reach`, and the old / new ratio when both got there."""
    reached = {name: minutes_to_reach(arm.get("evals", []), target) for name, arm in arms.items()}
    out = {"arms": reached, "ratio_old_over_new": None, "ratio_basis": None}
    old = reached.get("fpnbook-old")
    for name, key, basis_key in (("fpnbook-new", "ratio_old_over_new", "ratio_basis"),
                                 ("fpnbook-pretrained", "ratio_old_over_pretrained", "ratio_basis_pretrained")):
        new = reached.get(name)
        if old and new:
            basis = "interpolated" if old["interpolated"] and new["interpolated"] else "first_eval"
            if new[basis] > 0:
                out[key], out[basis_key] = round(old[basis] / new[basis], 3), basis
    return out


def format_reach(reach: dict | None, budget: float) -> str:
    if reach is None:
        return f"not within {budget:g} min"
    if reach["interpolated"] is None:
        return f"<= {reach['first_eval']:.1f} min"
    return f"{reach['interpolated']:.1f} min"


def print_table(record: dict) -> None:
    arms = record["arms"]
    width = 16
    print(f"\nCOCO AP on the committed val split ({record['data']['val_images']} images) against training minutes "
          f"(evaluation time not counted), {record['minutes']:g} min per arm")
    print(f"{'':<14}" + "".join(f"{name:>{width}}" for name in arms))

    def row(label: str, cell: Callable[[dict], str]) -> None:
        print(f"{label:<14}" + "".join(f"{cell(arm):>{width}}" for arm in arms.values()))

    row("probe s/step", lambda a: f"{a['probe']['step_seconds']:.3f}" if a.get("probe") else "-")
    row("steps done", lambda a: f"{a.get('iterations_done', 0)}/{a.get('iterations_planned', 0)}")
    row("train min", lambda a: f"{a.get('train_minutes', 0):.2f}")
    row("minute", lambda a: f"{'box':>7}{'mask':>7}")
    for mark in record["eval_at"]:
        def cell(arm: dict, mark=mark) -> str:
            if arm.get("error"):
                return "failed"
            entry = next((e for e in arm.get("evals", []) if e["minute"] == mark), None)
            if entry is None:
                return "-"
            star = "*" if entry["schedule_ended"] else " "
            return f"{entry['bbox']['AP']:>7.3f}{entry.get('segm', {}).get('AP', math.nan):>7.3f}{star}"
        row(f"{mark:g}", cell)
    if any(e["schedule_ended"] for a in arms.values() for e in a.get("evals", [])):
        print("* the schedule had ended: the finished model's AP")
    for target, result in record["time_to_box_ap"].items():
        parts = [f"{name} {format_reach(reach, record['minutes'])}" for name, reach in result["arms"].items()]
        line = f"minutes to box AP {target}: " + ", ".join(parts)
        if result["ratio_old_over_new"] is not None:
            line += f"; fpnbook-old / fpnbook-new {result['ratio_old_over_new']:.2f}x"
        if result.get("ratio_old_over_pretrained") is not None:
            line += f"; fpnbook-old / fpnbook-pretrained {result['ratio_old_over_pretrained']:.2f}x"
        print(line)


# ---------------------------------------------------------------- the figure


def plot(record: dict, path: str | os.PathLike | None = None):
    """Box AP and mask AP against training minutes, one line per arm, from a record of this script.

    Returns the matplotlib ``Figure``; with ``path`` also writes it there as PNG (atomically).
    Uses no pyplot, so it changes no backend or global state of the caller.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    for ax, (iou, title) in zip(axes, (("bbox", "box AP"), ("segm", "mask AP"))):
        for name, arm in record["arms"].items():
            points = [(e.get("total_minutes", e["train_minutes"]), e[iou]["AP"]) for e in arm.get("evals", []) if iou in e]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        if iou == "bbox":
            for target in record.get("time_to_box_ap", {}):
                ax.axhline(float(target), color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("training minutes, pretraining included (evaluation not counted)")
        ax.set_ylabel(f"COCO {title} (val)")
        ax.set_xlim(0, max([record["minutes"]] + [e.get("total_minutes", e["train_minutes"]) for a in record["arms"].values()
                                                   for e in a.get("evals", [])]) * 1.03)
        top = max([e[iou]["AP"] for a in record["arms"].values() for e in a.get("evals", []) if iou in e], default=0)
        ax.set_ylim(0, max(0.05, top * 1.1, *(float(t) * 1.1 for t in record.get("time_to_box_ap", {}))))
        ax.grid(alpha=0.3)
    axes[0].legend()
    where, data = str(record.get("hardware", "?")), record.get("data", {})
    if "threads" not in where:
        where += f", {record.get('threads', '?')} CPU threads"
    figure.suptitle(f"Mask R-CNN, time to AP: {where}, batch {record.get('batch_size', '?')}, "
                    f"{data.get('train_images', '?')} x {data.get('image_size', '?')} px",
                    fontsize=10)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
        try:
            figure.savefig(tmp, format="png", dpi=120)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return figure


def write_json(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
                                     encoding="utf-8") as f:
        tmp = Path(f.name)
        json.dump(record, f, indent=1)
        f.write("\n")
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- the command line


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def float_list(text: str) -> list[float]:
    return [positive_float(part) for part in text.split(",") if part.strip()] or positive_float("")


def arm_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown or [text]}; choose from {', '.join(ARMS)}")
    return list(dict.fromkeys(names))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="training minutes per arm (default 30; --quick 0.25)")
    p.add_argument("--eval-at", type=float_list, default=None,
                   help="comma-separated training minutes to evaluate at (default 5,10,15,20,30 below the budget, "
                        "and the budget; the budget is always added)")
    p.add_argument("--arms", type=arm_list, default=list(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--init", type=Path, default=DEFAULT_INIT, help="pretrained backbone of the fpnbook-pretrained arm "
                   "(default checkpoints/backbone.pt)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--train-images", type=positive_int, default=None,
                   help="generated training images (default 2000; --quick 8)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image side of the generated split (default 256; --quick 128)")
    p.add_argument("--batch", type=positive_int, default=4, help="images per step (default 4)")
    p.add_argument("--val-images", type=positive_int, default=None,
                   help="score on the first N images of the val split (default all; --quick 4)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (default 0: load in the main process)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batch order")
    p.add_argument("--target-ap", type=float_list, default=[OLD_CHECKPOINT_BOX_AP],
                   help="box AP level(s) to report the minutes to (default 0.145, the old shipped checkpoint)")
    p.add_argument("--out", type=Path, default=None, help=f"record JSON (default {DEFAULT_OUT.relative_to(ROOT)}; "
                   "the figure goes beside it as .png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its .png)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: wall-clock seconds (default); cpu: this process's CPU seconds, for a CPU run with "
                        "--threads 1 and --workers 0 on cores that other work shares (equal to wall time on an idle core)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RECORD",
                   help="train nothing: combine the arms of records made by separate runs with the same settings "
                        "(for example two arms run side by side with --clock cpu) into --out, and draw its figure")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 images at 128 px, 0.25 min per arm, 4 val images, "
                   "record in a temporary folder")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {"minutes": 30.0, "train_images": 2000, "size": 256, "val_images": None}
    for name in ("minutes", "train_images", "size", "val_images"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.size < 32:
        parser.error(f"--size must be at least 32 px, got {args.size}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.clock == "cpu" and (args.threads != 1 or args.workers != 0 or args.device not in ("cpu", "auto")):
        parser.error("--clock cpu measures one process on one core: use it with --threads 1, --workers 0 and the CPU")
    if args.eval_at is None:
        args.eval_at = [] if args.quick else [m for m in DEFAULT_EVAL_AT if m < args.minutes]
    beyond = [m for m in args.eval_at if m > args.minutes]
    if beyond:
        parser.error(f"--eval-at {','.join(f'{m:g}' for m in beyond)} lies beyond the budget of --minutes {args.minutes:g}")
    args.eval_at = sorted(set(args.eval_at) | {args.minutes})
    args.probe = QUICK["probe"] if args.quick else PROBE
    if args.merge:
        missing = [str(path) for path in args.merge if not Path(path).is_file()]
        if missing:
            parser.error(f"--merge: record(s) not found: {', '.join(missing)}")
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="fpnbook-time_to_ap-")) / "time_to_ap.json") if args.quick else DEFAULT_OUT
    elif not args.overwrite:
        taken = [p for p in (args.out, args.out.with_suffix(".png")) if p.exists()]
        if taken:
            parser.error(f"{', '.join(map(str, taken))} already exist(s); pass --overwrite to replace")
    return args


def open_val_set(limit: int | None, scratch: Path):
    """The committed val split, or its first ``limit`` images (a subset annotation file in ``scratch``)."""
    from fpnbook.data import CocoDataset, val_paths

    image_dir, ann_file = val_paths()
    if limit is None:
        return CocoDataset(image_dir, ann_file)
    full = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    keep = {im["id"] for im in sorted(full["images"], key=lambda im: im["id"])[:limit]}
    subset = {**full, "images": [im for im in full["images"] if im["id"] in keep],
              "annotations": [a for a in full["annotations"] if a["image_id"] in keep]}  # all categories stay
    path = scratch / "val_subset.json"
    path.write_text(json.dumps(subset), encoding="utf-8")
    return CocoDataset(image_dir, path)


def run_arm(arm: Arm, model, train_set, val_set, args, device, init_state: dict | None = None) -> dict:
    from fpnbook.train import evaluate_model, train

    offset = init_state["train_seconds"] / 60 if arm.init else 0.0
    entry = {"init": {"file": str(args.init), "command": init_state.get("command"),
                      "train_minutes": round(offset, 3)} if arm.init else None,"description": arm.description, "model": type(model).__module__ + "." + type(model).__name__,
             "proposals": proposal_counts(model), "initial_backbone_fingerprint": backbone_fingerprint(model)}
    warmup, timed = args.probe
    now = CLOCKS[args.clock]
    step_s = probe_step_seconds(arm, model, train_set, args.batch, args.seed, device, args.workers, warmup, timed, now)
    iterations = max(1, round(args.minutes * 60 / step_s))
    entry["probe"] = {"warmup_steps": warmup, "timed_steps": timed, "step_seconds": round(step_s, 4)}
    entry["iterations_planned"] = iterations
    config = train_config(arm, iterations, args.batch, args.seed, device, args.workers, log_every=5 if args.quick else 50)
    entry["train_config"] = dataclasses.asdict(config)
    print(f"[{arm.name}] probe {step_s:.3f} s/step -> {iterations} iterations for {args.minutes:g} min")
    clock = BudgetClock(args.eval_at, args.minutes, iterations,
                        lambda m: ap_summary(evaluate_model(m, val_set, device=device)), device, now=now)
    clock.start()
    try:
        records = train(model, train_set, config, callback=clock)
        entry["error"] = None
    except FloatingPointError as error:  # a diverged arm is a result, not a crash of the benchmark
        records, entry["error"] = [], str(error)
        print(f"[{arm.name}] stopped: {error}")
    entry.update(iterations_done=clock.steps, train_minutes=round(clock.train_seconds / 60, 3),
                 eval_seconds=round(clock.eval_seconds, 1), stopped_by=clock.stopped_by or "error", evals=clock.evals,
                 loss=[[r["step"], round(r["loss"], 4), float(f"{r['lr']:.4g}")] for r in records if "loss" in r])
    for e in entry["evals"]:
        e["total_minutes"] = round(e["train_minutes"] + offset, 3)
    return entry


# What separate runs must share for their arms to sit in one record.
SHARED = ("quick", "device", "threads", "amp", "torch", "torchvision", "data", "batch_size", "seed", "workers",
          "minutes", "eval_at", "clock")


def merge_records(records: Sequence[dict], targets: Sequence[float]) -> dict:
    """One record with the arms of ``records``, which must agree on :data:`SHARED` and not repeat an arm."""
    first = records[0]
    for other in records[1:]:
        differ = [k for k in SHARED if other.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"records differ in {differ}; only runs with the same settings can be merged")
    arms: dict = {}
    pending: set = set()
    for record in records:
        pending |= set(record.get("arms_pending", []))
        twice = sorted(set(arms) & set(record["arms"]))
        if twice:
            raise ValueError(f"arm(s) {twice} appear in more than one record")
        arms.update(record["arms"])
    missing = sorted(pending - set(arms))
    if missing:  # an interrupted run's record lists the arms it did not get to; another record must bring them
        raise ValueError(f"arm(s) {missing} of an interrupted run are in none of the records")
    ordered = {name: arms[name] for name in ARMS if name in arms}
    merged = {**{k: v for k, v in first.items() if k != "arms_pending"}, "command": [r["command"] for r in records], "date": [r["date"] for r in records],
              "hardware": "; ".join(sorted({r["hardware"] for r in records})), "arms": ordered}
    merged["time_to_box_ap"] = {f"{t:g}": time_to_target(ordered, t) for t in targets}
    return merged


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        records = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.merge]
        try:
            record = merge_records(records, args.target_ap)
        except ValueError as error:
            raise SystemExit(f"--merge: {error}") from None
        record["merge_command"] = "python benchmarks/time_to_ap.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        print_table(record)
        write_json(record, args.out)
        plot(record, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
        return record
    import torch
    from torchvision.transforms import v2

    from fpnbook import data
    from fpnbook.models import ModelConfig, build
    from fpnbook.checkpoint import read_backbone
    from fpnbook.train import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit(f"--clock cpu times the CPU; this run is on {device}")
    image_dir, ann_file = data.ensure_split("train", args.train_images, image_size=args.size, seed=0, progress=False)
    train_set = data.CocoDataset(image_dir, ann_file, transforms=v2.RandomHorizontalFlip(0.5))
    command = "python benchmarks/time_to_ap.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"time to AP: fpnbook vs torchvision Mask R-CNN, {args.train_images} x {args.size}px generated images, "
          f"batch {args.batch}, {device}, {torch.get_num_threads()} threads, {args.minutes:g} min per arm, "
          f"arms {', '.join(args.arms)}")
    with tempfile.TemporaryDirectory() as scratch:
        val_set = open_val_set(args.val_images, Path(scratch))
        if val_set.label_to_cat_id != train_set.label_to_cat_id:
            raise SystemExit(f"the training split's categories {train_set.label_to_cat_id} differ from the val split's")
        torch.manual_seed(args.seed)
        initial = build(ModelConfig(kind="mask_rcnn", num_classes=train_set.num_classes)).state_dict()
        init_state = read_backbone(args.init) if any(ARM_SPECS[n].init for n in args.arms) else None
        arms = {}
        for name in args.arms:
            arm = ARM_SPECS[name]
            model = build_arm_model(arm, initial, train_set.num_classes, args.size, args.seed, init_state)
            arms[name] = run_arm(arm, model, train_set, val_set, args, device, init_state)
            del model
            # A long run keeps what it has measured: the record is rewritten after every arm,
            # with the arms still to run listed, so an interrupted run loses one arm at most.
            record = make_record(args, command, device, ann_file, val_set, arms)
            record["arms_pending"] = [n for n in args.arms if n not in arms]
            write_json(record, args.out)
    record = make_record(args, command, device, ann_file, val_set, arms)
    print_table(record)
    write_json(record, args.out)
    figure_path = args.out.with_suffix(".png")
    plot(record, figure_path)
    print(f"wrote {args.out} and {figure_path}")
    return record


def make_record(args, command: str, device, ann_file, val_set, arms: dict) -> dict:
    """The JSON record of a run: its settings, environment and the arms measured so far."""
    import torch
    import torchvision

    from fpnbook import __version__
    from fpnbook.train import hardware

    return {
        "benchmark": "time_to_ap", "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "device": str(device), "hardware": hardware(), "threads": torch.get_num_threads(),
        "amp": device.type == "cuda", "torch": torch.__version__, "torchvision": torchvision.__version__,
        "fpnbook": __version__, "python": platform.python_version(),
        "data": {"train": str(ann_file), "train_images": args.train_images, "image_size": args.size, "data_seed": 0,
                 "transforms": "RandomHorizontalFlip(0.5)", "val": str(val_set.ann_file) if args.val_images is None
                 else "committed val split, first images", "val_images": len(val_set)},
        "batch_size": args.batch, "seed": args.seed, "workers": args.workers, "minutes": args.minutes,
        "clock": args.clock,
        "eval_at": args.eval_at, "arms": arms,
        "time_to_box_ap": {f"{t:g}": time_to_target(arms, t) for t in args.target_ap},
    }


if __name__ == "__main__":
    main()
