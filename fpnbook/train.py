"""Training and evaluating any fpnbook (or torchvision) detection model.

A model here is anything with torchvision's detection interface: in train mode
``model(images, targets)`` returns a dict of losses, in eval mode ``model(images)``
returns a list of dicts of boxes, labels, scores (and masks). :func:`train` runs
AdamW (or SGD with momentum), linear warmup then a cosine (or step) decay, weight
decay on weights only (not on norms and biases), gradient clipping, and keeps an
exponential moving average (EMA) of the weights, which is what it evaluates and
exports; on CUDA it adds mixed precision and pinned memory.

The defaults are the book's from-scratch recipe, chosen by measurement on generated
decision splits (``experiments/recipe.py``); ``optimizer="sgd", schedule="step",
ema_decay=None`` gives the classic Detectron recipe. Which images make up step ``s`` is a
pure function of ``(seed, s)``, and checkpoints carry the RNG state, so a resumed run
reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint
from .data import collate
from .evaluate import coco_evaluate, to_coco_results


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")
# The classic Detectron recipe, which the book's first edition trained with: SGD with
# momentum, weight decay on every parameter, step decay, no EMA. ``TrainConfig(**DETECTRON_RECIPE)``;
# the experiments whose committed records predate the current defaults still use it.
DETECTRON_RECIPE = dict(optimizer="sgd", schedule="step", ema_decay=None, decay_norm_and_bias=True)
# Peak learning rates for fine-tuning published weights (`train --init-torchvision`): a tenth of the book's.
FINETUNE_LR = {"adamw": 1e-4, "sgd": 0.005}
# Per-optimiser defaults for lr and weight_decay: AdamW's from the recipe search,
# SGD's from Detectron (lr 0.02 for a batch of 16; weight decay 1e-4).
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.02}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 1e-4}


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings.

    ``optimizer``: ``"adamw"`` (default) or ``"sgd"`` (with ``momentum``). ``lr`` and
    ``weight_decay`` default per optimiser (:data:`DEFAULT_LR`, :data:`DEFAULT_WEIGHT_DECAY`).
    ``decay_norm_and_bias``: also weight-decay norm scales/shifts and biases (off by default,
    as in detectron2's and timm's recipes). ``schedule``: linear warmup for ``warmup_iters``
    steps from ``warmup_factor * lr``, then ``"cosine"`` to ``min_lr_factor * lr`` at the last
    step, or ``"step"``: times ``lr_decay`` at each of ``milestones`` (default 2/3 and 8/9 of
    ``iterations``, detectron2's 1x shape). ``ema_decay``: keep an EMA of the weights with this
    decay (None: none); the EMA is what is evaluated, checkpointed as the model's weights for
    export, and left in the model when training ends.
    """

    iterations: int = 1000
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    decay_norm_and_bias: bool = False
    schedule: str = "cosine"
    warmup_iters: int = 200
    warmup_factor: float = 1e-3
    min_lr_factor: float = 0.0
    milestones: tuple[int, ...] | None = None
    lr_decay: float = 0.1
    ema_decay: float | None = 0.999
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
            if not _is_int(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_iters", "num_workers", "log_every", "eval_every", "checkpoint_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]
        _check_number("lr", self.lr, low=0, low_open=True)
        _check_number("weight_decay", self.weight_decay, low=0)
        _check_number("momentum", self.momentum, low=0, high=1, high_open=True)
        _check_number("warmup_factor", self.warmup_factor, low=0, high=1)
        _check_number("min_lr_factor", self.min_lr_factor, low=0, high=1)
        _check_number("lr_decay", self.lr_decay, low=0, high=1)
        if self.clip_grad_norm is not None:
            _check_number("clip_grad_norm", self.clip_grad_norm, low=0, low_open=True)
        if self.ema_decay is not None:
            _check_number("ema_decay", self.ema_decay, low=0, high=1, low_open=True, high_open=True)
        if self.milestones is None:
            self.milestones = (self.iterations * 2 // 3, self.iterations * 8 // 9)
        if isinstance(self.milestones, (str, bytes)) or not all(_is_int(m) for m in self.milestones):
            raise ValueError(f"TrainConfig.milestones must be a sequence of int steps, got {self.milestones!r}")
        self.milestones = tuple(self.milestones)
        if any(not 0 <= m <= self.iterations for m in self.milestones):
            raise ValueError(f"TrainConfig.milestones must lie in 0..iterations={self.iterations}, got {self.milestones}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"TrainConfig.milestones must be increasing, got {self.milestones}")
        try:
            resolve_device(self.device)
        except (TypeError, ValueError) as error:
            raise ValueError(f"TrainConfig.device: {error}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(name: str, value, low: float, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError naming ``TrainConfig.name`` unless ``value`` is a finite number in the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        if high is None:
            interval = f"{'>' if low_open else '>='} {low}"
        else:
            interval = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"TrainConfig.{name} must be a finite number {interval}, got {value!r}")


def setup_distributed() -> tuple[int, str]:
    """Under ``torchrun``: join the process group (NCCL on GPUs, gloo on CPUs). Returns (rank, device).

    Outside torchrun (``WORLD_SIZE`` unset or 1) it does nothing and returns ``(0, "auto")``;
    :func:`train` then sees no process group and trains on one device.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, "auto"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return dist.get_rank(), "cpu"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` name one.

    Raises a ValueError for a name torch does not know, or a CUDA device this machine lacks.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'auto', 'cpu' or 'cuda', got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ValueError(f"device {device!r} is not available: this machine has {count} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """The multiplier on ``config.lr`` at ``step``: linear warmup, then cosine or step decay."""
    warmup = 1.0
    if step < config.warmup_iters:
        alpha = step / config.warmup_iters
        warmup = config.warmup_factor * (1 - alpha) + alpha
    if config.schedule == "step":
        return warmup * config.lr_decay ** sum(step >= m for m in config.milestones)
    # Cosine from 1 at the end of warmup to min_lr_factor at the last step (Loshchilov & Hutter 2017).
    span = max(config.iterations - 1 - config.warmup_iters, 1)
    progress = min(max(step - config.warmup_iters, 0) / span, 1.0)
    low = config.min_lr_factor
    return warmup * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """The trainable parameters, split so that norm layers and biases get no weight decay.

    Decaying a norm's scale or a bias only pulls it towards zero without regularising
    anything (the layers are scale-invariant or shift the output), detectron2's
    ``WEIGHT_DECAY_NORM = 0`` and timm's ``no_weight_decay``; 1-D parameters are exactly these.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if decay_norm_and_bias or parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over :func:`parameter_groups`."""
    groups = parameter_groups(model, config.weight_decay, config.decay_norm_and_bias)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    # fused: one kernel for every parameter (measured 21 -> 5 ms per Mask R-CNN step on the CPU).
    return torch.optim.AdamW(groups, lr=config.lr, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step learning-rate schedule of ``config`` (:func:`learning_rate_factor`); call ``step()`` after each step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))


class ModelEMA:
    """An exponential moving average of a model's weights (Polyak averaging).

    After each optimiser step, ``ema = d * ema + (1 - d) * weights`` with
    ``d = min(decay, (1 + updates) / (10 + updates))``: the warm-up of the decay lets the
    average follow the fast early changes instead of remembering the random init (as in
    timm and YOLOv5). Buffers (e.g. BatchNorm statistics) are copied, not averaged.
    ``module`` is a deep copy of the model in eval mode holding the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self._averaged = [p for p in self.module.parameters() if p.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s weights (the model it was made from)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(self._averaged, current, 1 - d)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], int(state["updates"])
        self.module.load_state_dict(state["module"])


def batch_indices(step: int, batch_size: int, dataset_size: int, seed: int) -> list[int]:
    """The dataset indices of global batch ``step``: epoch ``e`` is a permutation seeded by ``(seed, e)``."""
    if dataset_size < 1:
        raise ValueError("the dataset is empty: there is nothing to train on")
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


# ---------------------------------------------------------------- the loop


def _tuple_lists(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def train(model: nn.Module, dataset, config: TrainConfig, val_dataset=None, resume: str | os.PathLike | None = None,
          model_config: dict | None = None,
          callback: Callable[[int, nn.Module], bool | None] | None = None, overwrite: bool = False) -> list[dict]:
    """Train ``model`` on ``dataset`` for ``config.iterations`` steps. Returns the logged records.

    With ``config.out_dir`` it writes ``metrics.jsonl`` and ``last.pt`` there (and a
    checkpoint every ``checkpoint_every`` steps). ``resume`` continues from a checkpoint.
    Each log record has ``train_seconds``, the run's training time so far (evaluations
    excluded; a resumed run continues the count its checkpoint saved). ``callback(step, evaluated_model)`` runs after every step (``step`` counts the steps
    done; the model is the EMA when there is one); when it returns True training stops
    there, checkpointed, as if ``iterations`` had been reached (``benchmarks/time_to_ap.py``
    uses it to evaluate at fixed minutes).
    A folder that already holds a run is refused (FileExistsError) unless ``resume`` continues
    it or ``overwrite=True`` starts it afresh (its old ``metrics.jsonl`` is then replaced).
    A non-finite loss stops training with FloatingPointError, leaving the last good
    checkpoint in place. Under ``torchrun`` the model is wrapped in DDP and each process
    takes its share of every global batch.
    """
    device = resolve_device(config.device)
    checkpoint.check_run_folder(config.out_dir, resume, overwrite)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(config.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, config)
    ema = ModelEMA(model, config.ema_decay) if config.ema_decay is not None else None
    scheduler = make_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    start, resumed_seconds = 0, 0.0
    if resume is not None:
        state = checkpoint.load_checkpoint(resume)
        checkpoint.check_resumable(state, resume, config, model_config)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:  # another kind or size of model
            first = str(error).splitlines()[0]
            raise ValueError(f"{resume} does not fit this model ({first}); was it trained with other settings?") from None
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["step"])
        resumed_seconds = float(state.get("train_seconds", 0.0))
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.iterations, rank, world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(config.seed + start))
    out_dir = Path(config.out_dir) if config.out_dir and rank == 0 else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    # A resumed run appends to its log; a fresh (or overwritten) run starts a new one.
    log = open(out_dir / "metrics.jsonl", "a" if resume is not None else "w", encoding="utf-8") if out_dir else None
    records = []

    def record(entry: dict) -> None:
        records.append(entry)
        if log:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def save(step: int) -> None:
        if out_dir:
            so_far = train_seconds + time.perf_counter() - tic  # what the next log line would say
            checkpoint.save_checkpoint(out_dir / "last.pt", model, optimizer, scheduler, scaler, step, config,
                                       model_config, ema, train_seconds=so_far)

    def evaluated() -> nn.Module:
        return ema.module if ema is not None else model

    bar = tqdm(total=config.iterations, initial=start, disable=not config.progress or rank != 0, unit="step")
    train_model.train()
    # A resumed run's clock continues from its checkpoint's, so logs and cards count every session.
    tic, seen, train_seconds = time.perf_counter(), 0, resumed_seconds
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
            if ema is not None:
                ema.update(model)
            seen += len(images) * world_size
            done = step + 1
            if config.log_every and (done % config.log_every == 0 or done == config.iterations):
                elapsed = time.perf_counter() - tic
                train_seconds += elapsed
                rate = seen / elapsed
                entry = {"step": done, "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                         **{k: v.item() for k, v in losses.items()}, "images_per_s": rate,
                         "train_seconds": train_seconds}
                record(entry)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry['lr']:.2g}", img_s=f"{rate:.1f}")
                tic, seen = time.perf_counter(), 0
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save(done)
            if val_dataset is not None and config.eval_every and done % config.eval_every == 0 and done < config.iterations:
                record({"step": done, "eval": evaluate_model(evaluated(), val_dataset, device=device)})
                train_model.train()
                tic = time.perf_counter()  # evaluation is not training time
            bar.update(1)
            if callback is not None and callback(done, evaluated()):
                break
        else:
            done = config.iterations
        save(done)
        if ema is not None:  # the caller gets the weights that were evaluated and are exported
            model.load_state_dict(ema.module.state_dict())
        if val_dataset is not None and rank == 0:
            record({"step": done, "eval": evaluate_model(model, val_dataset, device=device)})
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
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()
