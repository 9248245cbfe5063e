"""Training and evaluating any fpnbook (or torchvision) detection model.

A model here is anything with torchvision's detection interface: in train mode
``model(images, targets)`` returns a dict of losses, in eval mode ``model(images)``
returns a list of dicts of boxes, labels, scores (and masks). :func:`train` runs SGD
with momentum, linear warmup then step decay, weight decay and gradient clipping; on
CUDA it adds mixed precision and pinned memory. Which images make up step ``s`` is a
pure function of ``(seed, s)``, and checkpoints carry the RNG state, so a resumed run
reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .data import collate
from .evaluate import coco_evaluate, to_coco_results


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings. ``milestones`` default to 2/3 and 8/9 of ``iterations`` (detectron2's 1x shape)."""

    iterations: int = 1000
    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 1e-3
    milestones: tuple[int, ...] | None = None
    lr_decay: float = 0.1
    clip_grad_norm: float | None = 10.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    num_workers: int = 0
    log_every: int = 20
    eval_every: int = 0  # 0: evaluate only at the end (when a validation set is given)
    checkpoint_every: int = 0  # 0: checkpoint only at the end (when out_dir is given)
    out_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_iters", "num_workers", "log_every", "eval_every", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.milestones is None:
            self.milestones = (self.iterations * 2 // 3, self.iterations * 8 // 9)
        self.milestones = tuple(int(m) for m in self.milestones)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"TrainConfig.milestones must be increasing, got {self.milestones}")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """The multiplier on ``config.lr`` at ``step``: linear warmup, then a step down at each milestone."""
    warmup = 1.0
    if step < config.warmup_iters:
        alpha = step / config.warmup_iters
        warmup = config.warmup_factor * (1 - alpha) + alpha
    return warmup * config.lr_decay ** sum(step >= m for m in config.milestones)


def batch_indices(step: int, batch_size: int, dataset_size: int, seed: int) -> list[int]:
    """The dataset indices of global batch ``step``: epoch ``e`` is a permutation seeded by ``(seed, e)``."""
    start = step * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), dataset_size)
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices += order[offset : offset + batch_size - len(indices)].tolist()
    return indices


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of the global batches for steps ``start..stop-1``.

    With ``world_size`` processes each rank takes every ``world_size``-th image of the
    global batch of ``batch_size * world_size`` images, so one DDP step sees the same
    images as one single-process step with the whole global batch.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if dataset_size == 0:
            raise ValueError("cannot train on an empty dataset")
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            global_batch = batch_indices(step, self.batch_size * self.world_size, self.dataset_size, self.seed)
            yield global_batch[self.rank :: self.world_size]


def move_to(images: Sequence[torch.Tensor], targets: Sequence[dict] | None, device: torch.device):
    """Images and the tensors of each target on ``device`` (non-blocking from pinned memory)."""
    images = [im.to(device, non_blocking=True) for im in images]
    if targets is None:
        return images, None
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


# ---------------------------------------------------------------- checkpoints


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer=None, scheduler=None, scaler=None,
                    step: int = 0, config: TrainConfig | None = None, model_config: dict | None = None) -> Path:
    """Write model, optimizer, scheduler, RNG state and step to ``path`` atomically."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    payload = {
        "format": "fpnbook-checkpoint-1",
        "fpnbook_version": __version__,
        "step": step,
        "model": model.state_dict(),
        "model_config": model_config,
        "train_config": dataclasses.asdict(config) if config else None,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    path = Path(path)
    _atomic_save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated or foreign file fails in many ways
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != "fpnbook-checkpoint-1" or "model" not in payload:
        raise ValueError(f"{path} is not an fpnbook checkpoint (no 'format': 'fpnbook-checkpoint-1')")
    return payload


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, **extra) -> Path:
    """Write a shippable copy of ``checkpoint``: weights, configs and step, no optimizer state.

    The result still loads with :func:`load_checkpoint` (and ``fpnbook eval``), but cannot
    be resumed. ``extra`` adds JSON-like fields (e.g. ``command=...``) to the file.
    """
    state = load_checkpoint(checkpoint)
    keep = ("format", "fpnbook_version", "step", "model", "model_config", "train_config")
    payload = {key: state.get(key) for key in keep}
    payload["model"] = {name: tensor.contiguous().clone() for name, tensor in state["model"].items()}
    payload.update(extra)
    out = Path(out)
    _atomic_save(payload, out)
    return out


# ---------------------------------------------------------------- the loop


def _tuple_lists(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def train(model: nn.Module, dataset, config: TrainConfig, val_dataset=None, resume: str | os.PathLike | None = None,
          model_config: dict | None = None) -> list[dict]:
    """Train ``model`` on ``dataset`` for ``config.iterations`` steps. Returns the logged records.

    With ``config.out_dir`` it writes ``metrics.jsonl`` and ``last.pt`` there (and a
    checkpoint every ``checkpoint_every`` steps). ``resume`` continues from a checkpoint.
    A non-finite loss stops training with FloatingPointError, leaving the last good
    checkpoint in place. Under ``torchrun`` the model is wrapped in DDP and each process
    takes its share of every global batch.
    """
    device = resolve_device(config.device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(config.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    start = 0
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["step"])
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.iterations, rank, world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(config.seed + start))
    out_dir = Path(config.out_dir) if config.out_dir and rank == 0 else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "metrics.jsonl", "a", encoding="utf-8") if out_dir else None
    records = []

    def record(entry: dict) -> None:
        records.append(entry)
        if log:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def checkpoint(step: int) -> None:
        if out_dir:
            save_checkpoint(out_dir / "last.pt", model, optimizer, scheduler, scaler, step, config, model_config)

    bar = tqdm(total=config.iterations, initial=start, disable=not config.progress or rank != 0, unit="step")
    train_model.train()
    tic, seen = time.perf_counter(), 0
    try:
        for step, (images, targets) in enumerate(loader, start=start):
            images, targets = move_to(images, targets, device)
            with torch.autocast(device.type, enabled=scaler.is_enabled()):
                losses = train_model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                detail = {k: v.item() for k, v in losses.items()}
                where = f"; the last good checkpoint is {out_dir / 'last.pt'}" if out_dir else ""
                raise FloatingPointError(f"non-finite loss at step {step}: {detail}{where}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(images) * world_size
            done = step + 1
            if config.log_every and (done % config.log_every == 0 or done == config.iterations):
                rate = seen / (time.perf_counter() - tic)
                entry = {"step": done, "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                         **{k: v.item() for k, v in losses.items()}, "images_per_s": rate}
                record(entry)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry['lr']:.2g}", img_s=f"{rate:.1f}")
                tic, seen = time.perf_counter(), 0
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                checkpoint(done)
            if val_dataset is not None and config.eval_every and done % config.eval_every == 0 and done < config.iterations:
                record({"step": done, "eval": evaluate_model(model, val_dataset, device=device)})
                train_model.train()
            bar.update(1)
        checkpoint(config.iterations)
        if val_dataset is not None and rank == 0:
            record({"step": config.iterations, "eval": evaluate_model(model, val_dataset, device=device)})
    finally:
        bar.close()
        if log:
            log.close()
    return records


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 4, device: str | torch.device = "auto",
            progress: bool = False) -> list[dict]:
    """Eval-mode outputs for every image of ``dataset``, on the CPU, in dataset order."""
    device = resolve_device(device) if isinstance(device, str) else device
    was_training = model.training
    model.eval().to(device)
    outputs = []
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, unit="batch"):
        images = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
        images, _ = move_to(images, None, device)
        outputs += [{k: v.cpu() for k, v in out.items()} for out in model(images)]
    model.train(was_training)
    return outputs


def evaluate_model(model: nn.Module, dataset, iou_types: Sequence[str] | None = None, batch_size: int = 4,
                   device: str | torch.device = "auto") -> dict[str, dict[str, float]]:
    """COCO AP of ``model`` on a :class:`~fpnbook.data.CocoDataset` (``segm`` too when it predicts masks)."""
    outputs = predict(model, dataset, batch_size, device)
    if iou_types is None:
        iou_types = ("bbox", "segm") if outputs and "masks" in outputs[0] else ("bbox",)
    results = to_coco_results(outputs, dataset.image_ids, dataset.label_to_cat_id)
    return coco_evaluate(dataset.coco, results, iou_types=iou_types)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` written by :func:`train`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hardware() -> str:
    """A one-line description of where this ran, for experiment records and checkpoint cards."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
