"""The γ/α explorer: its plain update function, its figure, and the widget driven by its sliders."""

import math

import ipywidgets as widgets
import numpy as np
import pytest
import torch

from fpnbook.losses import sigmoid_focal_loss
from fpnbook.widgets.focal import (
    CURVE_POINTS,
    FocalExplorer,
    focal_explorer,
    focal_explorer_figure,
    focal_explorer_state,
    share_text,
)

# A detector-like population: a few positives, many negatives, most of them easy.
POS_PT = [0.2, 0.5, 0.7, 0.9]
NEG_PT = [0.3, 0.6, 0.8, 0.95, 0.99, 0.999]
NEG_COUNT = [1, 2, 5, 100, 1000, 10000]


def state(gamma=2.0, alpha=0.25, **kwargs):
    return focal_explorer_state(gamma, alpha, POS_PT, NEG_PT, neg_weight=NEG_COUNT, **kwargs)


def test_curves_are_the_papers_losses():
    s = state(gamma=2.0, alpha=0.25)
    p = s["p_t"]
    assert p.shape == (CURVE_POINTS,) and 0 < p[0] < p[-1] < 1 and np.all(np.diff(p) > 0)
    np.testing.assert_allclose(s["ce"], -np.log(p))
    np.testing.assert_allclose(s["fl"], (1 - p) ** 2 * -np.log(p))
    np.testing.assert_allclose(s["fl_pos"], 0.25 * s["fl"])
    np.testing.assert_allclose(s["fl_neg"], 0.75 * s["fl"])
    np.testing.assert_allclose(state(gamma=0.0)["fl"], s["ce"])  # γ = 0 is cross entropy


def test_shares_match_sigmoid_focal_loss_summed_by_hand():
    """The total equals torchvision-style sigmoid_focal_loss over the expanded pairs; shares sum to 1."""
    gamma, alpha = 1.5, 0.4
    s = state(gamma=gamma, alpha=alpha)
    neg_p = np.repeat(1 - np.array(NEG_PT), NEG_COUNT)  # negative: p_t = 1 - p
    p = torch.tensor(np.concatenate([POS_PT, neg_p]), dtype=torch.float64)
    targets = torch.cat([torch.ones(len(POS_PT)), torch.zeros(len(neg_p))]).double()
    total = sigmoid_focal_loss(torch.logit(p), targets, alpha=alpha, gamma=gamma, reduction="sum")
    assert s["total"] == pytest.approx(float(total), rel=1e-9)
    shares = s["positive_share"] + s["hard_negative_share"] + s["easy_negative_share"]
    assert shares == pytest.approx(1.0)
    easy_neg = [(pt, n) for pt, n in zip(NEG_PT, NEG_COUNT) if pt > 0.9]
    easy = sum(n * (1 - alpha) * (1 - pt) ** gamma * -math.log(pt) for pt, n in easy_neg)
    assert s["easy_negative_share"] == pytest.approx(easy / float(total))


def test_focusing_moves_the_loss_off_easy_negatives():
    shares = [state(gamma=g)["easy_negative_share"] for g in (0.0, 0.5, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in zip(shares, shares[1:])), shares
    assert shares[0] > 0.5 > shares[3]
    s = state(gamma=2.0)
    # The reference is plain CE (γ = 0, equal weights), whatever the sliders say.
    assert s["ce_easy_negative_share"] == pytest.approx(state(gamma=0.0, alpha=0.5)["easy_negative_share"])
    # α weights positives: more α, more of the loss on the positives.
    assert state(alpha=0.75)["positive_share"] > state(alpha=0.25)["positive_share"]
    # A stricter "easy" leaves fewer easy negatives.
    assert state(easy_pt=0.995)["easy_negative_share"] < state(easy_pt=0.9)["easy_negative_share"]


def test_bad_controls_raise_naming_the_argument():
    with pytest.raises(ValueError, match="alpha"):
        state(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        state(gamma=-1.0)
    with pytest.raises(ValueError, match="easy_pt"):
        state(easy_pt=1.0)
    with pytest.raises(ValueError, match="neg_pt"):
        focal_explorer_state(2.0, 0.25, POS_PT, [0.5, 1.5])
    with pytest.raises(ValueError, match="neg_weight"):
        focal_explorer_state(2.0, 0.25, POS_PT, NEG_PT, neg_weight=[1, 2])


def test_no_loss_at_all_gives_zero_shares():
    s = focal_explorer_state(2.0, 1.0, [], NEG_PT)  # α = 1 silences the negatives, and there are no positives
    assert s["total"] == 0 and s["easy_negative_share"] == 0


def test_figure_draws_the_state():
    fig = focal_explorer_figure(state(gamma=2.0))
    curves, shares = fig.axes
    assert curves.get_title() == "γ = 2"
    np.testing.assert_allclose(curves.lines[1].get_ydata(), state(gamma=2.0)["fl_pos"])
    heights = [bar.get_height() for bar in shares.patches]
    assert heights[2] == pytest.approx(100 * state(gamma=2.0)["easy_negative_share"])
    w, h = fig.get_size_inches()
    assert w <= 9 and h <= 4 and fig.dpi <= 80


def test_widget_sliders_redraw_share_and_image():
    explorer = focal_explorer(POS_PT, NEG_PT, neg_weight=NEG_COUNT, gamma=0.0, alpha=0.25)
    assert isinstance(explorer, FocalExplorer) and isinstance(explorer, widgets.VBox)
    assert explorer.children == (explorer.gamma, explorer.alpha, explorer.share, explorer.image)
    assert isinstance(explorer.gamma, widgets.FloatSlider) and explorer.gamma.description == "γ (gamma)"
    assert isinstance(explorer.alpha, widgets.FloatSlider) and explorer.alpha.description == "α (alpha)"
    assert isinstance(explorer.share, widgets.HTML) and explorer.image.format == "png"
    assert bytes(explorer.image.value).startswith(b"\x89PNG")

    text, png = explorer.share.value, bytes(explorer.image.value)
    assert text == share_text(state(gamma=0.0))
    explorer.gamma.value = 2.0  # what a reader's drag does
    assert explorer.state["gamma"] == 2.0
    assert explorer.share.value == share_text(state(gamma=2.0)) and explorer.share.value != text
    assert bytes(explorer.image.value) != png

    text, png = explorer.share.value, bytes(explorer.image.value)
    explorer.alpha.value = 0.75
    assert explorer.state["alpha"] == 0.75
    assert explorer.share.value == share_text(state(gamma=2.0, alpha=0.75)) and explorer.share.value != text
    assert bytes(explorer.image.value) != png
