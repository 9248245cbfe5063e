"""Focal loss (Lin et al. 2017): cross entropy that stops listening to easy examples.

A dense detector scores ~100k anchors per image and almost all are easy background.
Each one's cross entropy is small, but summed they drown the few hard examples.
With ``p_t`` the probability the model gives the true class (``p`` for a positive,
``1 - p`` for a negative), the paper's losses are

    CE(p_t)   = -log(p_t)
    α-CE(p_t) = -α_t log(p_t)
    FL(p_t)   = -α_t (1 - p_t)**γ log(p_t)

``α_t = α`` for positives and ``1 - α`` for negatives; the modulating factor
``(1 - p_t)**γ`` is ~0 for well-classified examples (``p_t`` near 1), so easy
negatives stop adding up. The paper uses ``γ = 2``, ``α = 0.25``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Focal loss on logits, elementwise: ``-α_t (1 - p_t)**γ log(p_t)`` with ``p = sigmoid(inputs)``.

    ``inputs``: logits, any shape. ``targets``: same shape, 1 for positive and 0 for
    negative (soft values in between work too). ``alpha < 0`` turns the α_t weighting off;
    ``gamma = 0`` gives (α-balanced) binary cross entropy. ``reduction``: ``"none"``
    (same shape as ``inputs``), ``"mean"`` or ``"sum"`` (a scalar).
    Equals ``torchvision.ops.sigmoid_focal_loss``; finite for any finite logits. Stricter
    than torchvision on invalid input: NaN ``alpha`` or ``gamma`` and ``targets`` outside
    [0, 1] (which would make a negative "loss") raise a ValueError.
    """
    check_focal_args(inputs, targets, alpha, gamma, reduction)
    # log(p_t) comes from the logits directly, never from log(sigmoid(x)), which is -inf for x << 0.
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    # 1 - p_t = p (1 - t) + (1 - p) t, with 1 - p as sigmoid(-x): exact even where p rounds to 1.
    one_minus_pt = torch.sigmoid(inputs) * (1 - targets) + torch.sigmoid(-inputs) * targets
    # The clamp only bites where 1 - p_t underflows; it keeps d/dx (1 - p_t)**γ finite for γ < 1.
    tiny = torch.finfo(one_minus_pt.dtype).tiny
    loss = ce * one_minus_pt.clamp(min=tiny) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_focal_args(inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str) -> None:
    """Raise a TypeError/ValueError naming the bad argument of :func:`sigmoid_focal_loss`."""
    for name, x in (("inputs", inputs), ("targets", targets)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{name} must be a float Tensor, got {kind}")
    if inputs.shape != targets.shape:
        raise ValueError(f"targets must have the shape of inputs {list(inputs.shape)}, got {list(targets.shape)}")
    if not _is_real(alpha) or alpha > 1:
        raise ValueError(f"alpha must be a number in [0, 1] (or negative to turn weighting off), got {alpha!r}")
    if not _is_real(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    # Stricter than torchvision, which returns a negative "loss" for targets outside [0, 1].
    if targets.numel() and bool(((targets < 0) | (targets > 1) | targets.isnan()).any()):
        raise ValueError("targets must lie in [0, 1] (1 positive, 0 negative), got values outside it")


def _is_real(x) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def cross_entropy_from_pt(p_t: Tensor | float) -> Tensor:
    """CE(p_t) = -log(p_t) for probabilities ``p_t`` in (0, 1] of the true class (the paper's Figure 1)."""
    return -torch.log(torch.as_tensor(p_t))


def focal_loss_from_pt(p_t: Tensor | float, gamma: float, alpha: float | None = None) -> Tensor:
    """FL(p_t) = -α_t (1 - p_t)**γ log(p_t) for probabilities ``p_t`` of the true class, for plotting.

    ``alpha`` is the weight α_t of the example's class; None means no weighting
    (Figure 1 of the paper plots that). ``gamma = 0`` gives the cross entropy.
    """
    if not _is_real(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    p_t = torch.as_tensor(p_t)
    loss = (1 - p_t) ** gamma * cross_entropy_from_pt(p_t)
    return loss if alpha is None else alpha * loss


def prior_bias(pi: float = 0.01) -> float:
    """The classifier bias ``b = -log((1 - π) / π)`` that makes ``sigmoid(b) = π`` at the start of training.

    With π = 0.01 every anchor starts out as confident background, so the loss of the
    many easy negatives does not swamp the first iterations (the paper's Sec. 4.1).
    """
    if not 0 < pi < 1:
        raise ValueError(f"pi must be a probability strictly between 0 and 1, got {pi}")
    return -math.log((1 - pi) / pi)
