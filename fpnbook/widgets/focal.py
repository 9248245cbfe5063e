"""The γ/α explorer of chapter 2: the focal loss curve, and who contributes the total loss.

A detector's classification loss is a sum over (anchor, class) pairs: a few positives
and very many negatives. Give it the probabilities ``p_t`` the model assigns to the
true side of each pair and, for a focusing parameter ``γ`` and class weight ``α``,
:func:`focal_explorer_state` says how the total loss splits into positives, hard
negatives and *easy negatives*: negatives with ``p_t > easy_pt`` (default 0.9, i.e.
the model already says "background" with over 90% confidence). Under cross entropy
(γ = 0) the easy negatives carry most of the loss; under γ = 2 they hardly count.

:func:`focal_explorer` wires two sliders, ``γ (gamma)`` and ``α (alpha)``, to that
function: the share of easy negatives is shown as text, the curves and shares as a
PNG image. Both are plain functions of the slider values, so tests call them directly.
"""

from __future__ import annotations

import io

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..losses import cross_entropy_from_pt, focal_loss_from_pt

EASY_PT = 0.9
# Points on the p_t axis of the curves, 0.001 .. 0.999.
CURVE_POINTS = 200


def as_probabilities(values: Tensor | np.ndarray | list[float], name: str) -> Tensor:
    """1-D float64 tensor of probabilities in (0, 1]; raises ValueError naming ``name`` otherwise."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(t) and not (t.gt(0).all() and t.le(1).all()):
        raise ValueError(f"{name} must hold probabilities p_t in (0, 1], got values from {t.min():.3g} to {t.max():.3g}")
    return t


def as_weights(weights, like: Tensor, name: str) -> Tensor:
    """How many examples each value of ``like`` stands for (1 each when ``weights`` is None)."""
    if weights is None:
        return torch.ones_like(like)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.shape != like.shape or (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"{name} must be {len(like)} finite non-negative counts (one per p_t), "
                         f"got shape {list(w.shape)}")
    return w


def focal_explorer_state(
    gamma: float,
    alpha: float,
    pos_pt: Tensor | np.ndarray | list[float],
    neg_pt: Tensor | np.ndarray | list[float],
    pos_weight: Tensor | np.ndarray | list[float] | None = None,
    neg_weight: Tensor | np.ndarray | list[float] | None = None,
    easy_pt: float = EASY_PT,
) -> dict:
    """What the explorer draws for focusing parameter ``gamma`` >= 0 and class weight ``alpha`` in [0, 1].

    ``pos_pt``, ``neg_pt``: Tensor[P], Tensor[M] of ``p_t`` (the probability of the true side:
    ``p`` for a positive pair, ``1 - p`` for a negative) in (0, 1]; optional ``pos_weight`` /
    ``neg_weight`` count how many pairs each value stands for (for histograms). Positives
    are weighted by ``alpha``, negatives by ``1 - alpha``, as in ``sigmoid_focal_loss``.

    Returns a dict of numpy arrays and floats:
    ``p_t`` [CURVE_POINTS], ``ce`` (-log p_t), ``fl`` ((1 - p_t)**γ CE), ``fl_pos`` (α FL),
    ``fl_neg`` ((1 - α) FL); the total loss ``total`` and its shares ``positive_share``,
    ``hard_negative_share``, ``easy_negative_share`` (summing to 1); ``ce_easy_negative_share``
    (the same share under plain CE, for reference); ``gamma``, ``alpha``, ``easy_pt``.
    """
    # Written as "not (inside)" so that NaN, which fails every comparison, is refused too.
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0 <= gamma < float("inf"):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    if not 0 < easy_pt < 1:
        raise ValueError(f"easy_pt must be in (0, 1), got {easy_pt}")
    pos, neg = as_probabilities(pos_pt, "pos_pt"), as_probabilities(neg_pt, "neg_pt")
    pos_w, neg_w = as_weights(pos_weight, pos, "pos_weight"), as_weights(neg_weight, neg, "neg_weight")
    grid = torch.linspace(0.001, 0.999, CURVE_POINTS, dtype=torch.float64)
    fl = focal_loss_from_pt(grid, gamma)
    state = {"p_t": grid.numpy(), "ce": cross_entropy_from_pt(grid).numpy(), "fl": fl.numpy(),
             "fl_pos": (alpha * fl).numpy(), "fl_neg": ((1 - alpha) * fl).numpy(),
             "gamma": float(gamma), "alpha": float(alpha), "easy_pt": float(easy_pt)}
    state.update(loss_shares(gamma, alpha, pos, neg, pos_w, neg_w, easy_pt))
    state["ce_easy_negative_share"] = loss_shares(0.0, 0.5, pos, neg, pos_w, neg_w, easy_pt)["easy_negative_share"]
    return state


def loss_shares(gamma: float, alpha: float, pos: Tensor, neg: Tensor, pos_w: Tensor, neg_w: Tensor,
                easy_pt: float) -> dict[str, float]:
    """Total α-weighted focal loss of the pairs and the shares of positives, hard and easy negatives."""
    pos_loss = alpha * (pos_w * focal_loss_from_pt(pos, gamma)).sum()
    neg_loss = (1 - alpha) * neg_w * focal_loss_from_pt(neg, gamma)
    easy = neg > easy_pt
    parts = {"positive_share": pos_loss, "hard_negative_share": neg_loss[~easy].sum(),
             "easy_negative_share": neg_loss[easy].sum()}
    total = float(sum(parts.values()))
    # No loss at all (α = 1 without positives, or every p_t = 1): nobody's share.
    return {"total": total, **{k: float(v) / total if total > 0 else 0.0 for k, v in parts.items()}}


def share_text(state: dict) -> str:
    """The HTML line under the sliders: the easy negatives' share of the loss, FL vs CE."""
    return (f"<b>easy negatives (p<sub>t</sub> &gt; {state['easy_pt']:g}) carry "
            f"{100 * state['easy_negative_share']:.1f}% of the loss</b> at γ = {state['gamma']:g}, "
            f"α = {state['alpha']:g} (cross entropy: {100 * state['ce_easy_negative_share']:.1f}%)")


def focal_explorer_figure(state: dict, figsize: tuple[float, float] = (8.0, 3.0), dpi: int = 72) -> Figure:
    """Left: CE and the α-weighted focal loss against p_t. Right: the shares of the total loss."""
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    curves, shares = fig.subplots(1, 2, width_ratios=(3, 2))
    curves.plot(state["p_t"], state["ce"], "k--", lw=1, label="CE")
    curves.plot(state["p_t"], state["fl_pos"], "C0", label=f"positive: α FL (α = {state['alpha']:g})")
    curves.plot(state["p_t"], state["fl_neg"], "C3", label="negative: (1 − α) FL")
    curves.axvspan(state["easy_pt"], 1, color="C2", alpha=0.15, label=f"easy: p_t > {state['easy_pt']:g}")
    curves.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of ground truth class p_t", ylabel="loss",
               title=f"γ = {state['gamma']:g}")
    curves.legend(fontsize=9)
    names = ("positives", "hard neg.", "easy neg.")
    values = [100 * state[k] for k in ("positive_share", "hard_negative_share", "easy_negative_share")]
    bars = shares.bar(names, values, color=("C0", "C3", "C2"))
    shares.bar_label(bars, fmt="%.1f%%", fontsize=9)
    shares.set(ylim=(0, 110), ylabel="share of total loss (%)", title="who the loss listens to")
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, for an ipywidgets Image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class FocalExplorer(widgets.VBox):
    """Sliders ``γ (gamma)`` and ``α (alpha)``, the easy-negative share as HTML, and the figure as an Image.

    Attributes ``gamma``, ``alpha`` (FloatSliders), ``share`` (HTML), ``image`` (Image, PNG)
    and ``state`` (the last :func:`focal_explorer_state`). Moving a slider redraws both.
    """

    def __init__(self, pos_pt, neg_pt, pos_weight=None, neg_weight=None, gamma: float = 2.0, alpha: float = 0.25,
                 easy_pt: float = EASY_PT) -> None:
        self.examples = dict(pos_pt=as_probabilities(pos_pt, "pos_pt"), neg_pt=as_probabilities(neg_pt, "neg_pt"),
                         pos_weight=pos_weight, neg_weight=neg_weight, easy_pt=easy_pt)
        style = {"description_width": "80px"}
        self.gamma = widgets.FloatSlider(value=gamma, min=0.0, max=5.0, step=0.1, description="γ (gamma)",
                                         continuous_update=False, style=style)
        self.alpha = widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="α (alpha)",
                                         continuous_update=False, style=style)
        self.share = widgets.HTML()
        self.image = widgets.Image(format="png")
        super().__init__([self.gamma, self.alpha, self.share, self.image])
        for slider in (self.gamma, self.alpha):
            slider.observe(self.update, "value")
        self.update()

    def update(self, *_) -> None:
        self.state = focal_explorer_state(self.gamma.value, self.alpha.value, **self.examples)
        self.share.value = share_text(self.state)
        self.image.value = figure_png(focal_explorer_figure(self.state))


def focal_explorer(pos_pt, neg_pt, pos_weight=None, neg_weight=None, gamma: float = 2.0, alpha: float = 0.25,
                   easy_pt: float = EASY_PT) -> FocalExplorer:
    """The γ/α explorer widget for the given ``p_t`` of positive and negative pairs (see :func:`focal_explorer_state`)."""
    return FocalExplorer(pos_pt, neg_pt, pos_weight, neg_weight, gamma, alpha, easy_pt)
