"""The prediction browser: a dataset's images, ground truth beside predictions, each coloured by its error.

Give it a :class:`~fpnbook.data.CocoDataset` and a model's predictions on it as COCO result
dicts (:func:`fpnbook.evaluate.to_coco_results` with the dataset's ``label_to_cat_id``). It
runs TIDE's error breakdown once (:func:`fpnbook.analysis.error_breakdown`, over all the
predictions, whatever the threshold shown) and then draws one image at a time: on the left
the objects, coloured by what became of them (detected; found only by a classification or
localisation error; missed), on the right the predictions with ``score >= score_threshold``,
coloured by their kind (correct, or TIDE's error type). A class filter keeps the objects and
predictions of one class.

:func:`browser_state` is the plain function of the controls that says what is drawn, and
:func:`browser_figure` draws it with :func:`fpnbook.viz.plot_detections`; tests call both
directly. :class:`PredictionBrowser` only wires an image slider, a score slider and a class
menu to them.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from pycocotools import mask as mask_utils

from ..analysis import (
    ERROR_TYPES,
    KIND_COLOURS,
    OBJECT_STATUSES,
    PREDICTION_KINDS,
    error_breakdown,
    legend_handles,
    rle_of,
)
from ..boxes import xywh_to_xyxy
from ..data import CocoDataset
from ..viz import PALETTE, plot_detections, separate_labels

STATUS_TEXT = {"detected": "detected", "mistaken": "found only by an error", "missed": "missed"}


def check_controls(dataset: CocoDataset, index, score_threshold, label) -> None:
    """Raise a ValueError naming the control unless each is in range (the widget's sliders only clamp)."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < len(dataset):
        raise ValueError(f"index must be an image index in 0..{len(dataset) - 1}, got {index!r}")
    if not isinstance(score_threshold, (int, float)) or isinstance(score_threshold, bool) or not 0 <= score_threshold <= 1:
        raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    if label is not None and label not in dataset.label_to_cat_id:
        raise ValueError(f"label must be None (every class) or a label in 1..{dataset.num_classes}, got {label!r}")


def _detections(items: Sequence[Mapping], dataset: CocoDataset, masks: bool, height: int, width: int) -> dict:
    boxes = torch.tensor([item["bbox"] for item in items], dtype=torch.float32).reshape(-1, 4)
    found = {"boxes": xywh_to_xyxy(boxes),
             "labels": torch.tensor([dataset.cat_id_to_label[item["category_id"]] for item in items], dtype=torch.int64)}
    if masks:
        found["masks"] = torch.from_numpy(np.stack([mask_utils.decode(rle_of(item, height, width)) for item in items])
                                          if items else np.zeros((0, height, width), dtype=np.uint8))
    return found


def browser_state(
    dataset: CocoDataset,
    predictions: Sequence[Mapping],
    breakdown: Mapping,
    index: int = 0,
    score_threshold: float = 0.5,
    label: int | None = None,
) -> dict:
    """What the browser shows of image ``index`` of ``dataset``, at ``score_threshold``, for class ``label`` (None: all).

    ``breakdown`` is :func:`fpnbook.analysis.error_breakdown` of these ``predictions`` on
    ``dataset.coco``. Returns a dict: ``image`` (float [3, H, W] in 0..1), ``image_id``;
    ``objects``: the image's non-crowd annotations of the class as ``boxes`` [M, 4] (x1, y1,
    x2, y2 pixels), ``labels`` [M] (1..K), ``status`` (M of :data:`~fpnbook.analysis.OBJECT_STATUSES`)
    and, for a ``"segm"`` breakdown, ``masks`` uint8 [M, H, W]; ``predictions``: those with
    ``score >= score_threshold``, highest first, as ``boxes``, ``labels``, ``scores`` [N],
    ``kinds`` (N of :data:`~fpnbook.analysis.PREDICTION_KINDS`), ``indices`` (into
    ``predictions``) and ``masks``; ``kind_counts`` and ``status_counts`` (Counters);
    ``text`` (an HTML line); and the controls.
    """
    check_controls(dataset, index, score_threshold, label)
    if len(breakdown.get("prediction_kinds", ())) != len(predictions):
        raise ValueError("breakdown was not made from these predictions: it has "
                         f"{len(breakdown.get('prediction_kinds', ()))} prediction kinds for {len(predictions)} predictions")
    image_id = dataset.image_ids[index]
    image = dataset.load_image(index)
    height, width = image.shape[-2:]
    category = None if label is None else dataset.label_to_cat_id[label]
    masks = breakdown["iou_type"] == "segm"
    annotations = [a for a in dataset.coco.imgToAnns.get(image_id, [])
                   if not a.get("iscrowd", 0) and category in (None, a["category_id"])]
    objects = _detections(annotations, dataset, masks, height, width)
    objects["status"] = [breakdown["object_status"][a["id"]] for a in annotations]
    shown = sorted((i for i, p in enumerate(predictions) if p["image_id"] == image_id and p["score"] >= score_threshold
                    and category in (None, p["category_id"])), key=lambda i: -predictions[i]["score"])
    found = _detections([predictions[i] for i in shown], dataset, masks, height, width)
    found.update(scores=torch.tensor([float(predictions[i]["score"]) for i in shown]).reshape(-1),
                 kinds=[breakdown["prediction_kinds"][i] for i in shown], indices=shown)
    state = {"image": image, "image_id": image_id, "objects": objects, "predictions": found,
             "kind_counts": Counter(found["kinds"]), "status_counts": Counter(objects["status"]),
             "index": index, "score_threshold": float(score_threshold), "label": label,
             "class_name": "every class" if label is None else dataset.class_names[label]}
    state["text"] = state_text(state, len(dataset))
    return state


def state_text(state: Mapping, images: int) -> str:
    """The HTML line above the picture: what the image holds and what became of it."""
    statuses = ", ".join(f"{state['status_counts'][s]} {STATUS_TEXT[s]}" for s in OBJECT_STATUSES
                         if state["status_counts"][s])
    kinds = ", ".join(f"{state['kind_counts'][k]} {k}" for k in PREDICTION_KINDS if state["kind_counts"][k])
    objects, predictions = len(state["objects"]["status"]), len(state["predictions"]["kinds"])
    return (f"<b>image {state['index'] + 1} of {images}</b> (id {state['image_id']}), {state['class_name']}: "
            f"{objects} object{'s' * (objects != 1)}{f' ({statuses})' if statuses else ''}; "
            f"{predictions} prediction{'s' * (predictions != 1)} with score &ge; {state['score_threshold']:.2f}"
            f"{f': {kinds}' if kinds else ''}")


def _coloured(found: Mapping, keys: Sequence[str], class_names: Sequence[str]) -> tuple[dict, list[str]]:
    """``found`` relabelled for :func:`plot_detections`, which colours box j by ``PALETTE[label % 10]`` and names it
    ``class_names[label]``: label ``10 j + c`` gives it the colour ``c`` of its key and its own class name."""
    labels = found["labels"].tolist()
    codes = [10 * j + PALETTE.index(KIND_COLOURS[key]) for j, key in enumerate(keys)]
    names = [""] * (10 * len(labels))
    for code, label in zip(codes, labels):
        names[code] = class_names[label]
    drawn = {k: v for k, v in found.items() if k in ("boxes", "scores", "masks")}
    return {**drawn, "labels": torch.tensor(codes, dtype=torch.int64)}, names


def browser_figure(state: Mapping, class_names: Sequence[str], figsize: tuple[float, float] = (9.0, 5.2),
                   dpi: int = 72) -> Figure:
    """Left: the objects coloured by status; right: the predictions coloured by kind; the legend below both."""
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    left, right = fig.subplots(1, 2)
    objects, found = state["objects"], state["predictions"]
    plot_detections(left, state["image"], *_coloured(objects, objects["status"], class_names),
                    title=f"ground truth: {len(objects['status'])} objects")
    plot_detections(right, state["image"], *_coloured(found, found["kinds"], class_names),
                    score_threshold=state["score_threshold"],
                    title=f"predictions, score >= {state['score_threshold']:.2f}: {len(found['kinds'])}")
    fig.legend(handles=legend_handles(), loc="outside lower center", ncol=5, fontsize=9)
    return separate_labels(fig)  # a second opinion's label moves off the first's


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def summary_text(breakdown: Mapping) -> str:
    """One HTML line: AP at IoU 0.5 and each error type's dAP, largest first."""
    name = {"bbox": "box", "segm": "mask"}[breakdown["iou_type"]]
    costs = ", ".join(f"{t} {breakdown['dap'][t]:.3f}" for t in sorted(ERROR_TYPES, key=lambda t: -breakdown["dap"][t]))
    return (f"{name} AP50 {breakdown['ap']:.3f} over every image; AP50 lost by error type (TIDE's dAP): {costs}. "
            "Each object's status and each prediction's kind come from all the predictions, whatever the threshold.")


class PredictionBrowser(widgets.VBox):
    """Controls ``image`` (IntSlider), ``score ≥`` (FloatSlider) and ``class`` (Dropdown, "every class" or one),
    a ``summary`` (HTML, the breakdown), a ``text`` (HTML, this image) and the ``image`` (PNG).

    Attributes ``breakdown`` (:func:`~fpnbook.analysis.error_breakdown`) and ``state``
    (the last :func:`browser_state`). The constructor refuses out-of-range arguments;
    the controls then keep every value in range.
    """

    def __init__(self, dataset: CocoDataset, predictions: Iterable[Mapping], iou_type: str = "bbox", index: int = 0,
                 score_threshold: float = 0.5, label: int | None = None) -> None:
        if not isinstance(dataset, CocoDataset):
            raise TypeError(f"dataset must be a fpnbook.data.CocoDataset, got {type(dataset).__name__}")
        check_controls(dataset, index, score_threshold, label)
        self.dataset, self.predictions = dataset, list(predictions)
        self.breakdown = error_breakdown(dataset.coco, self.predictions, iou_type)
        style = {"description_width": "60px"}
        self.index = widgets.IntSlider(value=index, min=0, max=len(dataset) - 1, description="image",
                                       continuous_update=False, style=style)
        self.score = widgets.FloatSlider(value=score_threshold, min=0.0, max=1.0, step=0.05, description="score ≥",
                                         readout_format=".2f", continuous_update=False, style=style)
        options = [("every class", 0), *((name, k) for k, name in enumerate(dataset.class_names[1:], start=1))]
        self.label = widgets.Dropdown(options=options, value=label or 0, description="class", style=style)
        self.summary = widgets.HTML(f"<small>{summary_text(self.breakdown)}</small>")
        self.text = widgets.HTML()
        self.image = widgets.Image(format="png")
        super().__init__([widgets.HBox([self.index, self.score, self.label]), self.summary, self.text, self.image])
        for control in (self.index, self.score, self.label):
            control.observe(self.update, "value")
        self.update()

    def update(self, *_) -> None:
        self.state = browser_state(self.dataset, self.predictions, self.breakdown, self.index.value, self.score.value,
                                   self.label.value or None)
        self.text.value = self.state["text"]
        self.image.value = figure_png(browser_figure(self.state, self.dataset.class_names))


def prediction_browser(dataset: CocoDataset, predictions: Iterable[Mapping], **controls) -> PredictionBrowser:
    """The prediction browser of ``predictions`` (COCO result dicts) on ``dataset`` (see :class:`PredictionBrowser`)."""
    return PredictionBrowser(dataset, predictions, **controls)
