"""Checkpoints: every file that holds weights, in one place, from the file to a model.

Three kinds of file, each with its ``"format"`` field:

* **A run's checkpoint** (``OUT/last.pt``, ``"fpnbook-checkpoint-1"``): what
  :func:`fpnbook.train.train` writes with :func:`save_checkpoint`: the raw weights, the
  EMA's, the optimizer, scheduler and RNG state, the step, and both configs, so that
  ``resume`` continues the run exactly (:func:`check_resumable` says whether it can).
* **Shipped weights** (``checkpoints/mask_rcnn.pt`` ...): the same format without the
  optimizer state, written by :func:`export_weights`. Any checkpoint that carries its
  ``model_config`` opens with :func:`load_model`, which builds the model it describes.
* **A pretrained backbone** (``checkpoints/backbone.pt``, ``"fpnbook-backbone-1"``): the
  body, FPN and box head that ``fpnbook pretrain`` learned (written by
  :func:`fpnbook.pretrain.export_backbone`). :func:`build_from_backbone` starts a detector
  from it; :func:`read_backbone` and :func:`load_backbone` are the two halves of that, for
  code that reads the file once and starts many detectors from it.

The run folder's rule lives here too: a folder that holds any of :data:`RUN_FILES` is
refused (:func:`check_run_folder`) unless the run is resumed or overwritten.

Every file is written atomically (:mod:`fpnbook.files`) and read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .files import atomic_save, load_torch_file
from .models import ModelConfig, build

CHECKPOINT_FORMAT = "fpnbook-checkpoint-1"
BACKBONE_FORMAT = "fpnbook-backbone-1"
# What a training run writes into its folder; one of them there means the folder holds a run.
RUN_FILES = ("last.pt", "metrics.jsonl", "summary.json")


# ---------------------------------------------------------------- a run's checkpoint and shipped weights


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer=None, scheduler=None, scaler=None,
                    step: int = 0, config=None, model_config: dict | None = None, ema=None,
                    train_seconds: float = 0.0) -> Path:
    """Write model, optimizer, scheduler, EMA, RNG state and step to ``path`` atomically.

    ``config``: the run's :class:`fpnbook.train.TrainConfig`; ``ema``: its
    :class:`fpnbook.train.ModelEMA` (or None). ``model`` holds the raw (trained) weights,
    which resuming needs; with ``ema`` the averaged weights go under ``"ema"`` and
    :func:`export_weights` ships those. ``train_seconds``: the training time so far, which a
    resumed run continues from.
    """
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fpnbook_version": __version__,
        "step": step,
        "train_seconds": float(train_seconds),
        "model": model.state_dict(),
        "model_config": model_config,
        "train_config": dataclasses.asdict(config) if config else None,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    path = Path(path)
    return atomic_save(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    payload = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "model" not in payload:
        raise ValueError(f"{path} is not an fpnbook checkpoint (no 'format': '{CHECKPOINT_FORMAT}')")
    return payload


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, **extra) -> Path:
    """Write a shippable copy of ``checkpoint``: weights, configs and step, no optimizer state.

    The weights are the EMA's when the run kept one (they are what it evaluated).
    The result still loads with :func:`load_checkpoint` and :func:`load_model` (and
    ``fpnbook eval``), but cannot be resumed. ``extra`` adds JSON-like fields (e.g.
    ``command=...``) to the file.
    """
    state = load_checkpoint(checkpoint)
    keep = ("format", "fpnbook_version", "step", "train_seconds", "model", "model_config", "train_config")
    payload = {key: state.get(key) for key in keep}
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    payload["model"] = {name: tensor.contiguous().clone() for name, tensor in weights.items()}
    payload.update(extra)
    out = Path(out)
    atomic_save(payload, out)
    return out


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(model, state)``: the model a checkpoint was trained as, with its weights, in eval mode.

    ``state`` is the whole file (:func:`load_checkpoint`): configs, step, and the card's
    fields of a shipped checkpoint. A run's ``last.pt`` gives its raw (not EMA) weights.
    ValueError when the file has no ``model_config`` or its weights do not fit that model.
    """
    state = load_checkpoint(path)
    if not state.get("model_config"):
        raise ValueError(f"{path} has no model_config; it was not written by `fpnbook train`")
    model = build(ModelConfig.from_dict(state["model_config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the model its config describes: {error}") from None
    return model.eval(), state


# ---------------------------------------------------------------- the run folder and resuming


def check_run_folder(out_dir: str | os.PathLike | None, resume: str | os.PathLike | None = None,
                     overwrite: bool = False) -> None:
    """FileExistsError, before anything is written, when ``out_dir`` already holds a run.

    A run is any of :data:`RUN_FILES`. It may stay only when ``resume`` continues it or
    ``overwrite`` starts it afresh. ``out_dir`` None (a run that writes nothing) passes.
    """
    if not out_dir:
        return
    taken = [name for name in RUN_FILES if (Path(out_dir) / name).exists()]
    if taken and resume is None and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a run ({', '.join(taken)}); pass --resume {out_dir}/last.pt "
                              "to continue it or --overwrite to start afresh (in Python: resume=..., overwrite=True)")


def check_resumable(state: dict, path, config, model_config: dict | None) -> None:
    """Raise ValueError unless ``state`` (from ``path``) can continue a run of ``config``/``model_config``.

    ``config``: the :class:`fpnbook.train.TrainConfig` of the run that would continue it.
    """
    if not state.get("optimizer") or not state.get("scheduler"):
        raise ValueError(f"{path} holds weights only (an exported file?); resume needs a run's last.pt, "
                         "which keeps the optimizer state")
    saved_model = state.get("model_config")
    if model_config is not None and saved_model and saved_model.get("kind") != model_config.get("kind"):
        raise ValueError(f"{path} is a {saved_model.get('kind')} checkpoint; cannot resume it as {model_config.get('kind')}")
    saved = state.get("train_config") or {}
    for name in ("optimizer", "schedule", "iterations", "batch_size"):
        if name in saved and saved[name] != getattr(config, name):
            raise ValueError(f"{path} was trained with {name}={saved[name]!r}; resuming with {name}="
                             f"{getattr(config, name)!r} would not continue the same run")
    if (config.ema_decay is None) != (not state.get("ema")):
        have = "keeps" if state.get("ema") else "has no"
        raise ValueError(f"{path} {have} an EMA of the weights but ema_decay is {config.ema_decay!r}")


# ---------------------------------------------------------------- a pretrained backbone


def read_backbone(path: str | os.PathLike) -> dict:
    """Load a pretrained-backbone file (``weights_only``), raising a clear error if it is not one."""
    state = load_torch_file(path, "pretrained backbone file")
    if not isinstance(state, dict) or state.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{path} is not a pretrained backbone (expected format {BACKBONE_FORMAT!r}, "
                         "e.g. checkpoints/backbone.pt)")
    return state


def load_backbone(model: nn.Module, state: Mapping, config: ModelConfig) -> list[str]:
    """Copy a pretrained body (and FPN, where it fits) into a detector's ``model.backbone``.

    ``state``: what :func:`read_backbone` returns. The body must match: ``config.backbone``
    and ``config.norm`` equal the file's, else ValueError. A Mask^X R-CNN needs a file
    pretrained with its own ``mask_classes`` (the shapes of its other classes must not
    reach it through the backbone), and any other model one pretrained on all classes. The
    FPN is copied when the detector's FPN has the same inputs and channels
    (Faster/Mask/Mask^X R-CNN on P2..P6), and then the box head's two fc layers too when the
    file has them and their sizes match; RetinaNet's FPN (C3..C5, P6/P7) keeps its fresh
    weights. Returns the parts copied, e.g. ``["body", "fpn", "box_head"]``.
    """
    for key in ("backbone", "norm"):
        if state[key] != getattr(config, key):
            raise ValueError(f"the pretrained backbone has {key}={state[key]!r} but the model has {getattr(config, key)!r}")
    wanted = list(config.mask_classes) if config.kind == "mask_x_rcnn" else None
    if state.get("mask_classes") != wanted:
        raise ValueError(f"the pretrained backbone saw the shapes of classes {state.get('mask_classes') or 'all'}, "
                         f"but a {config.kind} with mask_classes={wanted} needs one pretrained with "
                         f"mask_classes={wanted} (python -m fpnbook pretrain --mask-classes ...)")
    model.backbone.backbone.load_state_dict(state["body"])
    parts = ["body"]
    fpn = model.backbone.fpn
    fpn_fits = config.kind != "retinanet" and state["fpn_channels"] == config.fpn_channels
    if fpn_fits:
        fpn.load_state_dict(state["fpn"])
        parts.append("fpn")
        box_head = model.roi_heads.box_head
        shapes = {k: v.shape for k, v in box_head.state_dict().items()}
        if "box_head" in state and shapes == {k: v.shape for k, v in state["box_head"].items()}:
            box_head.load_state_dict(state["box_head"])
            parts.append("box_head")
    return parts


def build_from_backbone(config: ModelConfig, path: str | os.PathLike) -> tuple[nn.Module, list[str]]:
    """``(model, parts)``: a fresh detector for ``config`` that starts from the backbone file at ``path``.

    :func:`fpnbook.models.build` then :func:`load_backbone` with :func:`read_backbone`'s
    state: the model is in train mode, its parts that the file fits (``parts``, e.g.
    ``["body", "fpn", "box_head"]``) hold the pretrained weights and the rest is freshly
    initialised (from torch's global generator, as ``build`` alone would be). The file is
    checked first, so a bad ``path`` fails before the model is built. The sibling of
    :func:`load_model`, which opens a trained detector.
    """
    state = read_backbone(path)
    model = build(config)
    return model, load_backbone(model, state, config)
