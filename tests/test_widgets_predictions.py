"""The prediction browser: its plain update function, its figure, and the widget driven by its controls."""

import pytest
import torch
from matplotlib.colors import to_rgba

from fpnbook.analysis import KIND_COLOURS, error_breakdown
from fpnbook.data import CocoDataset
from fpnbook.viz import figure_problems
from fpnbook.widgets.predictions import (
    PredictionBrowser,
    browser_figure,
    browser_state,
    prediction_browser,
)


@pytest.fixture(scope="module")
def dataset(small_split):
    return CocoDataset(*small_split)


@pytest.fixture(scope="module")
def predictions(dataset):
    """Every object found (score 0.9 down to 0.6), but on image 1: object 0 also gets a wrong-class box scored
    0.95, object 1 a same-class duplicate scored 0.3, and object 2 nothing (so it is missed)."""
    found = []
    for image_id in dataset.image_ids:
        annotations = dataset.coco.imgToAnns[image_id]
        for j, a in enumerate(annotations):
            if image_id == 1 and j == 2:
                continue
            found.append({"image_id": image_id, "category_id": a["category_id"], "bbox": a["bbox"],
                          "score": 0.9 - 0.05 * j, "segmentation": a["segmentation"]})
    first, second = dataset.coco.imgToAnns[1][:2]
    found.append({"image_id": 1, "category_id": first["category_id"] % 8 + 1, "bbox": first["bbox"], "score": 0.95,
                  "segmentation": first["segmentation"]})
    found.append({"image_id": 1, "category_id": second["category_id"], "bbox": second["bbox"], "score": 0.3,
                  "segmentation": second["segmentation"]})
    return found


@pytest.fixture(scope="module")
def breakdown(dataset, predictions):
    return error_breakdown(dataset.coco, predictions)


def test_state_colours_each_prediction_by_its_error(dataset, predictions, breakdown):
    state = browser_state(dataset, predictions, breakdown, index=0, score_threshold=0.0)
    objects, found = state["objects"], state["predictions"]
    assert state["image_id"] == 1 and state["image"].shape == (3, 64, 64)
    assert len(objects["status"]) == len(dataset.coco.imgToAnns[1]) == objects["boxes"].shape[0]
    assert objects["status"][2] == "missed" and state["status_counts"]["missed"] == 1
    assert found["kinds"][0] == "classification" and found["scores"][0] == pytest.approx(0.95)
    assert found["kinds"][-1] == "duplicate" and state["kind_counts"]["duplicate"] == 1
    assert found["scores"].tolist() == sorted(found["scores"].tolist(), reverse=True)
    # Boxes come back as (x1, y1, x2, y2) pixels, labels as the dataset's 1..K.
    first = dataset.coco.imgToAnns[1][0]
    x, y, w, h = first["bbox"]
    assert objects["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert objects["labels"][0] == dataset.cat_id_to_label[first["category_id"]]
    assert "1 missed" in state["text"] and "1 classification" in state["text"] and "score &ge; 0.00" in state["text"]


def test_threshold_and_class_filter(dataset, predictions, breakdown):
    everything = browser_state(dataset, predictions, breakdown, 0, 0.0)
    above = browser_state(dataset, predictions, breakdown, 0, 0.5)
    assert len(above["predictions"]["kinds"]) == len(everything["predictions"]["kinds"]) - 1  # the 0.3 duplicate
    assert (above["predictions"]["scores"] >= 0.5).all()
    label = int(everything["objects"]["labels"][1])
    one = browser_state(dataset, predictions, breakdown, 0, 0.0, label=label)
    assert set(one["objects"]["labels"].tolist()) == {label} == set(one["predictions"]["labels"].tolist())
    assert dataset.class_names[label] in one["text"]
    # The kinds come from all the predictions, whatever is shown.
    assert one["predictions"]["kinds"] == [breakdown["prediction_kinds"][i] for i in one["predictions"]["indices"]]


def test_mask_breakdown_draws_masks(dataset, predictions):
    masks = error_breakdown(dataset.coco, predictions, "segm")
    state = browser_state(dataset, predictions, masks, 0, 0.5)
    assert state["objects"]["masks"].shape == (len(state["objects"]["status"]), 64, 64)
    assert state["predictions"]["masks"].shape[0] == len(state["predictions"]["kinds"])
    assert state["predictions"]["masks"].dtype == torch.uint8 and state["predictions"]["masks"].any()


def test_figure_meets_the_standard_and_uses_the_kind_colours(dataset, predictions, breakdown):
    state = browser_state(dataset, predictions, breakdown, 0, 0.0)
    figure = browser_figure(state, dataset.class_names)
    assert figure_problems(figure) == []
    objects_ax, predictions_ax = figure.axes
    assert [p.get_edgecolor() for p in predictions_ax.patches] == [to_rgba(KIND_COLOURS[k]) for k in
                                                                    state["predictions"]["kinds"]]
    assert [p.get_edgecolor() for p in objects_ax.patches] == [to_rgba(KIND_COLOURS[s]) for s in
                                                                state["objects"]["status"]]
    names = [t.get_text() for t in predictions_ax.texts]
    assert names[0].startswith(dataset.class_names[int(state["predictions"]["labels"][0])]) and "0.95" in names[0]
    assert "0.00" in predictions_ax.get_title()


def test_bad_controls_are_refused(dataset, predictions, breakdown):
    for controls, message in (({"index": 12}, "index"), ({"index": -1}, "index"), ({"score_threshold": 1.5}, "score"),
                              ({"label": 9}, "label")):
        with pytest.raises(ValueError, match=message):
            browser_state(dataset, predictions, breakdown, **{"index": 0, **controls})
        with pytest.raises(ValueError, match=message):
            PredictionBrowser(dataset, predictions, **controls)
    with pytest.raises(ValueError, match="not made from these predictions"):
        browser_state(dataset, predictions[:-1], breakdown)
    with pytest.raises(TypeError, match="CocoDataset"):
        PredictionBrowser(dataset.coco, predictions)
    with pytest.raises(ValueError, match="predictions is empty"):
        PredictionBrowser(dataset, [])
    with pytest.raises(ValueError, match="image id 99"):
        PredictionBrowser(dataset, [dict(predictions[0], image_id=99)])


def test_widget_controls_redraw(dataset, predictions):
    w = prediction_browser(dataset, predictions, score_threshold=0.0)
    assert isinstance(w, PredictionBrowser)
    assert {c.description for c in (w.index, w.score, w.label)} == {"image", "score ≥", "class"}
    assert w.image.value[:8] == b"\x89PNG\r\n\x1a\n" and "image 1 of 12" in w.text.value
    assert "AP50" in w.summary.value and "classification" in w.summary.value
    png = w.image.value
    w.score.value = 0.5
    assert w.state["score_threshold"] == 0.5 and w.image.value != png and "duplicate" not in w.state["kind_counts"]
    w.index.value = 3
    assert w.state["image_id"] == dataset.image_ids[3] and "image 4 of 12" in w.text.value
    w.label.value = 2
    assert w.state["label"] == 2 and set(w.state["objects"]["labels"].tolist()) <= {2}
    w.label.value = 0
    assert w.state["label"] is None
    w.index.value = 99  # the slider clamps; only the constructor refuses
    assert w.state["index"] == 11
