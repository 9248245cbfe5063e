"""Chapter 2 in the browser: run it, then drag the γ/α explorer (fpnbook.widgets.focal)."""

import re

import pytest

pytestmark = pytest.mark.browser

CHAPTER = "03_focal_loss.ipynb"
# The explorer's HTML line: "easy negatives (p_t > 0.9) carry 3.2% of the loss at γ = 2, α = 0.25 (cross entropy: 97.1%)"
SHARE = re.compile(r"carry ([\d.]+)% of the loss at γ = ([\d.]+), α = ([\d.]+) \(cross entropy: ([\d.]+)%\)")


def read_share(explorer) -> tuple[float, float, float, float]:
    """(easy-negative share %, γ, α, CE share %) as the explorer prints them."""
    text = explorer.locator(".widget-html-content").first.inner_text()
    match = SHARE.search(text)
    assert match, f"explorer text not understood: {text!r}"
    return tuple(float(g) for g in match.groups())


def test_focal_explorer(notebook):
    chapter = notebook(CHAPTER)
    chapter.run_all()
    chapter.assert_ran_cleanly()

    explorer = chapter.output_holding("slider", "γ (gamma)")
    explorer.scroll_into_view_if_needed()
    image = explorer.locator("img").first
    chapter.screenshot("03_focal_loss-explorer-start", explorer)
    start = read_share(explorer)
    share, gamma, alpha, ce_share = start
    assert float(chapter.slider_value("γ (gamma)")) == gamma
    assert float(chapter.slider_value("α (alpha)")) == alpha
    assert gamma > 0, "the explorer is expected to open on a focusing γ > 0"
    # The chapter's point: under focal loss the easy negatives carry far less than under CE.
    assert share < ce_share
    picture = image.screenshot()

    # γ = 0 is cross entropy (α-weighted): the easy negatives take back their share.
    chapter.set_slider("γ (gamma)", 0)
    at_zero = chapter.wait_for_change(lambda: read_share(explorer), start)
    assert at_zero[1] == 0 and at_zero[2] == alpha
    assert at_zero[0] > share
    assert at_zero[3] == ce_share  # the reference line does not move
    picture_at_zero = chapter.wait_for_change(image.screenshot, picture)
    assert picture_at_zero != picture, "the figure did not change when γ moved"
    chapter.screenshot("03_focal_loss-explorer-gamma-0", explorer)

    # One arrow-key step (0.1) to the right focuses a little: the share drops a little.
    chapter.nudge_slider("γ (gamma)", "ArrowRight")
    nudged = chapter.wait_for_change(lambda: read_share(explorer), at_zero)
    assert nudged[1] == pytest.approx(0.1) and nudged[0] < at_zero[0]

    # More weight on positives (α up) leaves less of the loss to the negatives.
    chapter.set_slider("α (alpha)", 0.75)
    heavier = chapter.wait_for_change(lambda: read_share(explorer), nudged)
    assert heavier[2] == 0.75 and heavier[0] < nudged[0]
    assert chapter.wait_for_change(image.screenshot, picture_at_zero) != picture_at_zero
    chapter.screenshot("03_focal_loss-explorer-moved", explorer)
