"""Chapter 8 in the browser: run it, then drive the prediction browser (fpnbook.widgets.predictions).

Each move of a control must redraw the figure and report the counts that the widget's plain
function, `browser_state`, gives for the same controls on the same predictions (made here,
in the test process, from the same checkpoint and validation split as the chapter).
"""

import functools
import html
import re

import pytest
from conftest import REPO

pytestmark = pytest.mark.browser

CHAPTER = "08_where_the_ap_goes.ipynb"
# The per-image line: "image 23 of 48 (id 23), every class: 6 objects (6 detected); 11 predictions with score ≥ 0.50: ..."
LINE = re.compile(r"^image \d+ of \d+")


@functools.cache
def shipped():
    """(dataset, predictions, box breakdown) of checkpoints/mask_rcnn.pt on the validation split, as the chapter makes them."""
    import torch

    from fpnbook.analysis import error_breakdown
    from fpnbook.checkpoint import load_model
    from fpnbook.data import CocoDataset, val_paths
    from fpnbook.evaluate import to_coco_results
    from fpnbook.train import predict

    torch.set_num_threads(2)  # as the chapter
    dataset = CocoDataset(*val_paths())
    model, _ = load_model(REPO / "checkpoints" / "mask_rcnn.pt")
    predictions = to_coco_results(predict(model, dataset, device="cpu"), dataset.image_ids, dataset.label_to_cat_id)
    return dataset, predictions, error_breakdown(dataset.coco, predictions)


def expected(index: int, score_threshold: float, label: int | None = None) -> dict:
    """The plain function's state for these controls, and its line as the page shows it."""
    from fpnbook.widgets.predictions import browser_state

    dataset, predictions, breakdown = shipped()
    state = browser_state(dataset, predictions, breakdown, index, score_threshold, label)
    return {**state, "shown": html.unescape(re.sub(r"<[^>]+>", "", state["text"]))}


def counts(line: str) -> dict:
    """The numbers in a line: objects, predictions and each kind's count ("6 correct, 5 classification")."""
    objects = re.search(r"(\d+) objects?", line)
    predictions = re.search(r"; (\d+) predictions? with score ≥ ([\d.]+)", line)
    assert objects and predictions, f"browser line not understood: {line!r}"
    kinds = dict((k, int(n)) for n, k in re.findall(r"(\d+) (correct|classification|localisation|both|duplicate|background)", line))
    return {"objects": int(objects.group(1)), "predictions": int(predictions.group(1)),
            "threshold": float(predictions.group(2)), **kinds}


def assert_matches(line: str, state: dict) -> None:
    assert line == state["shown"], f"the page says {line!r}, browser_state says {state['shown']!r}"
    shown = counts(line)
    assert shown["objects"] == len(state["objects"]["status"])
    assert shown["predictions"] == len(state["predictions"]["kinds"]) == sum(state["kind_counts"].values())
    assert shown["threshold"] == pytest.approx(state["score_threshold"])
    assert all(shown.get(kind, 0) == n for kind, n in state["kind_counts"].items())


def test_prediction_browser(notebook):
    chapter = notebook(CHAPTER)
    chapter.run_all()
    chapter.assert_ran_cleanly()

    browser = chapter.output_holding("slider", "score ≥")
    browser.scroll_into_view_if_needed()
    image = browser.locator("img").first
    line = browser.locator(".widget-html-content").filter(has_text=LINE).first
    read = lambda: line.inner_text().strip()  # noqa: E731

    # It opens on the chapter's image (index 22) at score 0.5: every object detected, five classification errors.
    start = read()
    index = int(chapter.slider_value("image"))
    assert index == 22 and float(chapter.slider_value("score ≥")) == 0.5
    opening = expected(index, 0.5)
    assert_matches(start, opening)
    assert opening["kind_counts"]["classification"] == 5 and set(opening["objects"]["status"]) == {"detected"}
    summary = browser.locator(".widget-html-content").filter(has_text="AP50").first.inner_text()
    assert "classification" in summary and f"{shipped()[2]['ap']:.3f}" in summary
    picture = image.screenshot()
    chapter.screenshot("08_where_the_ap_goes-browser-start", browser)

    # A lower threshold, typed into the slider's readout: more boxes, the objects unchanged.
    chapter.set_slider("score ≥", 0.3)
    lower = chapter.wait_for_change(read, start)
    assert chapter.slider_value("score ≥") == "0.30"
    state = expected(index, 0.3)
    assert_matches(lower, state)
    assert len(state["predictions"]["kinds"]) > len(opening["predictions"]["kinds"])
    new_picture = chapter.wait_for_change(image.screenshot, picture)
    assert new_picture != picture, "the figure did not change with the threshold"
    picture = new_picture
    chapter.screenshot("08_where_the_ap_goes-browser-score-0.3", browser)

    # The next image, one arrow-key step of the image slider.
    chapter.nudge_slider("image", "ArrowRight")
    following = chapter.wait_for_change(read, lower)
    assert int(chapter.slider_value("image")) == index + 1
    assert_matches(following, expected(index + 1, 0.3))
    new_picture = chapter.wait_for_change(image.screenshot, picture)
    assert new_picture != picture, "the figure did not change with the image"
    picture = new_picture

    # And back, then one class: only hexagons and hexagon boxes remain.
    chapter.set_slider("image", index)
    back = chapter.wait_for_change(read, following)
    assert_matches(back, state)
    picture = chapter.wait_for_change(image.screenshot, picture)
    chapter.choose("class", "hexagon")
    hexagons = chapter.wait_for_change(read, back)
    dataset = shipped()[0]
    one = expected(index, 0.3, dataset.class_names.index("hexagon"))
    assert_matches(hexagons, one)
    assert "hexagon:" in hexagons and set(one["predictions"]["labels"].tolist()) == {dataset.class_names.index("hexagon")}
    assert chapter.wait_for_change(image.screenshot, picture) != picture, "the figure did not change with the class"
    chapter.screenshot("08_where_the_ap_goes-browser-hexagon", browser)
