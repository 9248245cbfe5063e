"""Where the AP goes: per-category AP, precision-recall curves, TIDE's error breakdown, a confusion matrix.

Every function takes what :func:`fpnbook.evaluate.coco_evaluate` takes: COCO ground truth
(a ``COCO`` or a JSON path) and COCO result dicts (``image_id``, ``category_id``, ``bbox``
``[x, y, w, h]``, ``score``, and ``segmentation`` for masks), checked the same way, and
refuses an empty list (there is nothing to analyse). :func:`analyse` runs all four for each
IoU type (``"bbox"``, ``"segm"``):

- **Per-category AP** (AP, AP50, AP75, APs, APm, APl) and **precision-recall curves** at
  IoU 0.5 and 0.75, per category and object size, read from pycocotools' own
  ``COCOeval.eval["precision"]`` array, so they are the numbers ``coco_evaluate`` averages.
- **The error breakdown** of TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying
  Object Detection Errors", ECCV 2020). At the foreground IoU ``t_f = 0.5`` each prediction
  that is not a true positive gets one type, tested in this order against the image's
  objects: *localisation* (its own class, ``t_b <= IoU <= t_f``), *classification* (another
  class, IoU >= ``t_f``), *duplicate* (its own class, IoU >= ``t_f``, but the object is taken
  by a higher-scored prediction), *background* (IoU <= ``t_b = 0.1`` with every object),
  else *both* (wrong class and poorly placed); an object that no prediction finds, not even a
  mistaken one, is *missed*. The dAP of a type is the AP at ``t_f`` gained by fixing that type
  alone: a classification or localisation error becomes a true positive (only the
  highest-scored one per object; the others are dropped), a duplicate, background or "both"
  prediction is dropped, and a missed object leaves the count of objects. AP here is TIDE's
  mean over the categories that have objects or predictions of the 101-point interpolated AP
  (COCO's AP50 when every category has objects). This follows the ``tidecv`` package
  (its test oracle, in ``tests/test_analysis.py``) decision for decision, so the numbers
  agree; only a prediction over a crowd region of its class is left out here (COCO ignores
  it), where ``tidecv`` also gives it an error type.
- **A confusion matrix** at IoU >= 0.5 of the predictions with ``score >= score_threshold``:
  row = the class of the object a prediction covers (its own class when it covers an object
  of that class, else the class of the object it overlaps most; *background* when it covers
  none), column = its predicted class; an object that no prediction of its class covers adds
  one to (its class, *background*). So the diagonal counts right answers (duplicates
  included), the rest of a row the wrong-class boxes on that class's objects, the background
  row boxes on nothing and the background column objects without a right answer.

:func:`write_analysis` writes the figures (PNG) and a JSON; the ``plot_*`` functions return
matplotlib Figures made without pyplot, and :func:`format_category_table` and
:func:`format_errors` the text ``python -m fpnbook eval --analyse DIR`` prints.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .evaluate import IOU_TYPES, checked_inputs, run_cocoeval, stat_names
from .files import _atomic_write, atomic_write_text
from .viz import PALETTE

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
# What error_breakdown says of each prediction: a true positive, one of the five error types a
# prediction can have, over a crowd region of its class (left out, as COCO does), or beyond
# the first max_dets of its image (not scored).
PREDICTION_KINDS = ("correct", *ERROR_TYPES[:-1], "ignored", "unranked")
# ... and of each object (a non-crowd annotation): found by a true positive, found only by a
# classification or localisation error (fixing that error would find it), or missed.
OBJECT_STATUSES = ("detected", "mistaken", "missed")
# One colour each, from viz.PALETTE so it matches the detection pictures.
KIND_COLOURS = {"correct": PALETTE[4], "classification": PALETTE[2], "localisation": PALETTE[1],
                "both": PALETTE[6], "duplicate": PALETTE[0], "background": PALETTE[8], "missed": PALETTE[3],
                "ignored": PALETTE[9], "unranked": PALETTE[9], "detected": PALETTE[4], "mistaken": PALETTE[5]}
SHORT_NAMES = {"classification": "cls", "localisation": "loc", "both": "both", "duplicate": "dupe",
               "background": "bkg", "missed": "miss"}
FOREGROUND_IOU, BACKGROUND_IOU = 0.5, 0.1
PR_IOUS = (0.5, 0.75)
AREAS = ("all", "small", "medium", "large")
MAX_DETS = 100
# TIDE's and COCO's 101 recall points, written as TIDE writes them so that ties round alike.
RECALLS = np.array([r / 100 for r in range(101)])
IOU_NAMES = {"bbox": "box", "segm": "mask"}


# ---------------------------------------------------------------- inputs


def checked_analysis_inputs(coco_gt: COCO | str | os.PathLike, predictions: Iterable[Mapping],
                            iou_types: Sequence[str]) -> tuple[COCO, list[Mapping]]:
    """``coco_evaluate``'s checks (:func:`fpnbook.evaluate.checked_inputs`), and more that an analysis needs.

    ValueError for empty predictions; for ``"segm"``, for an annotation without a
    ``segmentation``, an image without ``height`` and ``width``, and a prediction whose RLE
    has no ``counts`` or a ``size`` other than its image's ``[height, width]``.
    """
    gt, predictions = checked_inputs(coco_gt, predictions, iou_types)
    if not predictions:
        raise ValueError("predictions is empty: there is nothing to analyse (coco_evaluate scores a model "
                         "that detects nothing as AP 0)")
    if "segm" in iou_types:
        for image in gt.dataset["images"]:
            if not all(isinstance(image.get(k), int) for k in ("height", "width")):
                raise ValueError(f"image {image['id']!r} has no integer 'height' and 'width'; mask analysis "
                                 "('segm' in iou_types) needs them")
        for annotation in gt.dataset["annotations"]:
            if not annotation.get("segmentation"):
                raise ValueError(f"annotation {annotation['id']!r} (image {annotation['image_id']!r}) has no "
                                 "segmentation; mask analysis ('segm' in iou_types) needs one for every annotation")
        for i, p in enumerate(predictions):
            info, segmentation = gt.imgs[p["image_id"]], p["segmentation"]
            size = [info["height"], info["width"]]
            if isinstance(segmentation, Mapping) and ("counts" not in segmentation or segmentation.get("size") != size):
                raise ValueError(f"predictions[{i}] has a segmentation of size {segmentation.get('size')!r}, but "
                                 f"image {p['image_id']!r} is {size[0]}x{size[1]} (an RLE needs 'size' [height, "
                                 "width] and 'counts')")
            if not isinstance(segmentation, (Mapping, list)):
                raise ValueError(f"predictions[{i}]['segmentation'] must be an RLE dict or a list of polygons, "
                                 f"got {type(segmentation).__name__}")
    return gt, predictions


def rle_of(item: Mapping, height: int, width: int) -> dict:
    """The compressed RLE of an annotation's or a prediction's ``segmentation`` (polygons, RLE or uncompressed RLE)."""
    segmentation = item["segmentation"]
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _geometry(item: Mapping, iou_type: str, height: int | None, width: int | None):
    """What pycocotools' ``mask.iou`` compares: the box ``[x, y, w, h]`` or an RLE of the mask."""
    return item["bbox"] if iou_type == "bbox" else rle_of(item, height, width)


def _iou(dts: list, gts: list, iou_type: str, crowd: bool) -> np.ndarray:
    """IoU [len(dts), len(gts)] (for a crowd region: the share of each prediction inside it)."""
    if not dts or not gts:
        return np.zeros((len(dts), len(gts)))
    if iou_type == "bbox":
        dts, gts = np.asarray(dts, dtype=np.float64), np.asarray(gts, dtype=np.float64)
    return np.asarray(mask_utils.iou(dts, gts, [int(crowd)] * len(gts)), dtype=np.float64).reshape(len(dts), -1)


@dataclass
class _Image:
    """One image's predictions, highest score first, and its annotations, with their IoUs."""

    order: list[int]  # indices into the predictions
    objects: list[dict]  # non-crowd annotations
    crowds: list[dict]
    iou: np.ndarray  # [len(order), len(objects)]
    crowd_iou: np.ndarray  # [len(order), len(crowds)]


def _images(gt: COCO, predictions: Sequence[Mapping], iou_type: str) -> dict[int, _Image]:
    by_image = defaultdict(list)
    for i, p in enumerate(predictions):
        by_image[p["image_id"]].append(i)
    images = {}
    for image_id in gt.getImgIds():  # the order of the file's images, as TIDE walks them
        info = gt.imgs[image_id]
        order = sorted(by_image[image_id], key=lambda i: -predictions[i]["score"])  # stable, as TIDE
        annotations = gt.imgToAnns.get(image_id, [])
        objects = [a for a in annotations if not a.get("iscrowd", 0)]
        crowds = [a for a in annotations if a.get("iscrowd", 0)]
        size = info.get("height"), info.get("width")
        dts = [_geometry(predictions[i], iou_type, *size) for i in order]
        images[image_id] = _Image(order, objects, crowds,
                                  _iou(dts, [_geometry(a, iou_type, *size) for a in objects], iou_type, False),
                                  _iou(dts, [_geometry(a, iou_type, *size) for a in crowds], iou_type, True))
    return images


# ---------------------------------------------------------------- TIDE's error breakdown


def _error_type(iou: np.ndarray, same: np.ndarray, taken: np.ndarray, fg: float, bg: float) -> tuple[str, int | None]:
    """The type of a false positive with IoUs ``iou`` [G] to the objects (``same``: of its class;
    ``taken``: matched already), and the object a fix would make it find (localisation, classification)."""
    if not len(iou):
        return "background", None
    own = np.where(same, iou, 0.0)
    j = int(own.argmax())
    if bg <= own[j] <= fg:
        return "localisation", j
    other = np.where(same, 0.0, iou)
    j = int(other.argmax())
    if other[j] >= fg:
        return "classification", j
    if np.where(taken, own, 0.0).max() >= fg:
        return "duplicate", None
    if iou.max() <= bg:
        return "background", None
    return "both", None


def _class_ap(points: list[tuple[float, bool]], positives: int) -> float:
    """101-point interpolated AP of one category from (score, is true positive) in push order."""
    if positives <= 0 or not points:
        return 0.0
    points = sorted(points, key=lambda p: -p[0])  # stable: ties keep their order, as in TIDE
    true = np.cumsum([t for _, t in points])
    precision = true / np.arange(1, len(points) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCO's envelope
    at = np.searchsorted(true / positives, RECALLS, side="left")
    return float(np.where(at < len(points), precision[np.minimum(at, len(points) - 1)], 0.0).mean())


def _mean_ap(points: list[tuple[int, float, bool]], positives: Mapping[int, int]) -> float:
    """Mean over the categories with objects or predictions of :func:`_class_ap`; points are (category, score, true)."""
    by_class = defaultdict(list)
    for category, score, true in points:
        by_class[category].append((score, true))
    classes = [c for c in sorted(set(by_class) | set(positives)) if by_class.get(c) or positives.get(c, 0)]
    return float(np.mean([_class_ap(by_class[c], positives.get(c, 0)) for c in classes])) if classes else 0.0


def _fixed_ap(errors: list[dict], true_points: list, positives: Counter, fix: str | None = None) -> float:
    """AP with the errors of type ``fix`` fixed (see the module docstring); the errors come first, as TIDE pushes them."""
    points, positives = [], Counter(positives)
    for error in errors:
        if error["type"] == "missed":
            positives[error["category_id"]] -= error["type"] == fix
        elif error["type"] != fix:
            points.append((error["category_id"], error["score"], False))
        elif error.get("fixes"):
            category = error["object_category_id"] if fix == "classification" else error["category_id"]
            points.append((category, error["score"], True))
    return _mean_ap(points + true_points, positives)


def _breakdown(predictions: Sequence[Mapping], images: Mapping[int, _Image], iou_type: str, fg: float, bg: float,
               max_dets: int) -> dict:
    kinds = ["unranked"] * len(predictions)
    status: dict[int, str] = {}
    true_points, errors, all_points = [], [], []
    positives = Counter()
    best: dict[int, tuple[float, int]] = {}  # object id -> (score, prediction) of the error whose fix finds it
    for image in images.values():
        objects, ranked = image.objects, image.order[:max_dets]
        object_cls = np.array([a["category_id"] for a in objects], dtype=np.int64)
        positives.update(object_cls.tolist())
        iou = image.iou[: len(ranked)]
        same = np.array([predictions[i]["category_id"] for i in ranked], dtype=np.int64)[:, None] == object_cls[None]
        taken = np.zeros(len(objects), dtype=bool)
        matched = np.zeros(len(ranked), dtype=bool)
        for p in range(len(ranked)):  # greedily, highest score first, as COCOeval
            free = np.where(same[p] & ~taken, iou[p], 0.0)
            if len(objects) and free.max() >= fg:
                taken[free.argmax()] = matched[p] = True
        for p, i in enumerate(ranked):
            score, category = float(predictions[i]["score"]), int(predictions[i]["category_id"])
            if matched[p]:
                kinds[i] = "correct"
                true_points.append((category, score, True))
                all_points.append(true_points[-1])
                continue
            if any(a["category_id"] == category and image.crowd_iou[p, c] >= fg for c, a in enumerate(image.crowds)):
                kinds[i] = "ignored"
                continue
            kinds[i], target = _error_type(iou[p], same[p], taken, fg, bg)
            error = {"type": kinds[i], "category_id": category, "score": score, "prediction": i}
            if target is not None and not taken[target]:
                object_id = objects[target]["id"]
                error.update(object_id=object_id, object_category_id=int(object_cls[target]))
                if object_id not in best or best[object_id][0] < score:
                    best[object_id] = (score, i)
            errors.append(error)
            all_points.append((category, score, False))
        for j, annotation in enumerate(objects):
            status[annotation["id"]] = "detected" if taken[j] else "mistaken" if annotation["id"] in best else "missed"
            if status[annotation["id"]] == "missed":
                errors.append({"type": "missed", "category_id": int(object_cls[j]), "object_id": annotation["id"]})
    for error in errors:  # of the errors that would find an object, only the highest-scored one is fixed
        error["fixes"] = "prediction" in error and best.get(error.get("object_id"), (0, None))[1] == error["prediction"]
    ap = _mean_ap(all_points, positives)
    # TIDE clips a negative dAP (a ranking tie moved by the fix) to 0.
    dap = {t: max(_fixed_ap(errors, true_points, positives, t) - ap, 0.0) for t in ERROR_TYPES}
    # TIDE's two "special" errors: every false positive scored 0, and every unmatched object forgiven.
    false_positive = _mean_ap([(e["category_id"], 0.0, False) for e in errors if e["type"] != "missed"]
                              + [(c, 1.0, True) for c, _, _ in true_points], positives)
    false_negative = _fixed_ap(errors, true_points, Counter(c for c, _, _ in true_points))
    counts = Counter(e["type"] for e in errors)
    return {"iou_type": iou_type, "foreground_iou": fg, "background_iou": bg, "ap": ap, "dap": dap,
            "counts": {t: counts[t] for t in ERROR_TYPES},
            "special": {"false_positive": false_positive - ap, "false_negative": false_negative - ap},
            "prediction_kinds": kinds, "object_status": status}


def error_breakdown(
    coco_gt: COCO | str | os.PathLike,
    predictions: Iterable[Mapping],
    iou_type: str = "bbox",
    foreground_iou: float = FOREGROUND_IOU,
    background_iou: float = BACKGROUND_IOU,
    max_dets: int = MAX_DETS,
) -> dict:
    """TIDE's error breakdown of ``predictions`` for one ``iou_type`` (see the module docstring).

    Returns a dict: ``ap`` (AP at ``foreground_iou``, 0..1); ``dap`` and ``counts`` keyed by
    :data:`ERROR_TYPES` (the AP gained by fixing that type alone, and how many predictions, or
    for ``missed`` objects, have it); ``special`` (``false_positive``: the AP gained by scoring
    every false positive 0, ``false_negative``: by forgiving every unmatched object);
    ``prediction_kinds`` (one of :data:`PREDICTION_KINDS` per prediction, in the given order;
    only the ``max_dets`` highest-scored of an image are scored); ``object_status`` (annotation
    id -> one of :data:`OBJECT_STATUSES`, for every non-crowd annotation); and the arguments.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not 0 <= background_iou < foreground_iou <= 1:
        raise ValueError(f"need 0 <= background_iou < foreground_iou <= 1, got {background_iou!r} and {foreground_iou!r}")
    if not isinstance(max_dets, int) or isinstance(max_dets, bool) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
    gt, predictions = checked_analysis_inputs(coco_gt, predictions, (iou_type,))
    return _breakdown(predictions, _images(gt, predictions, iou_type), iou_type, foreground_iou, background_iou,
                      max_dets)


# ---------------------------------------------------------------- confusion matrix


def _confusion(gt: COCO, predictions: Sequence[Mapping], images: Mapping[int, _Image], score_threshold: float,
               iou_threshold: float) -> np.ndarray:
    index = {c: k for k, c in enumerate(sorted(gt.getCatIds()))}
    background = len(index)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    for image in images.values():
        object_cls = np.array([index[a["category_id"]] for a in image.objects], dtype=np.int64)
        found = np.zeros(len(image.objects), dtype=bool)
        for p, i in enumerate(image.order):
            if predictions[i]["score"] < score_threshold:
                break  # highest score first
            column = index[predictions[i]["category_id"]]
            covers = image.iou[p] >= iou_threshold
            own = covers & (object_cls == column)
            if own.any():
                row, found = column, found | own
            elif covers.any():
                row = int(object_cls[image.iou[p].argmax()])
            elif any(index[a["category_id"]] == column and image.crowd_iou[p, c] >= iou_threshold
                     for c, a in enumerate(image.crowds)):
                continue  # on a crowd region of its class: neither right nor wrong, as in COCO
            else:
                row = background
            matrix[row, column] += 1
        np.add.at(matrix, (object_cls[~found], background), 1)
    return matrix


def confusion_matrix(
    coco_gt: COCO | str | os.PathLike,
    predictions: Iterable[Mapping],
    iou_type: str = "bbox",
    score_threshold: float = 0.5,
    iou_threshold: float = FOREGROUND_IOU,
) -> np.ndarray:
    """int64 [K + 1, K + 1]: rows the ground truth's class, columns the predicted class, in category id order,
    background last (see the module docstring for what is counted where)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    _check_unit("score_threshold", score_threshold)
    _check_unit("iou_threshold", iou_threshold)
    gt, predictions = checked_analysis_inputs(coco_gt, predictions, (iou_type,))
    return _confusion(gt, predictions, _images(gt, predictions, iou_type), score_threshold, iou_threshold)


def _check_unit(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


# ---------------------------------------------------------------- the whole analysis


@dataclass
class Analysis:
    """:func:`analyse`'s result for one IoU type.

    ``categories``: (id, name) in id order (K of them). ``stats``: ``coco_evaluate``'s numbers.
    ``per_category``: one dict per category: ``category_id``, ``name``, ``objects`` and
    ``predictions`` (counts), ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (-1 where
    the category has no object of that size, as pycocotools says). ``recall`` [R] and
    ``precision`` [len(PR_IOUS), R, K, len(AREAS)]: pycocotools' interpolated precision at 100
    detections per image (-1 where undefined). ``errors``: :func:`error_breakdown`'s dict.
    ``confusion``: :func:`confusion_matrix` at ``score_threshold``.
    """

    iou_type: str
    categories: list[tuple[int, str]]
    stats: dict[str, float]
    per_category: list[dict]
    recall: np.ndarray
    precision: np.ndarray
    errors: dict
    confusion: np.ndarray
    score_threshold: float

    @property
    def name(self) -> str:
        """"box" or "mask"."""
        return IOU_NAMES[self.iou_type]

    def to_dict(self) -> dict:
        """Everything but the per-prediction kinds, as JSON-ready lists and numbers."""
        errors = {k: v for k, v in self.errors.items() if k not in ("prediction_kinds", "object_status")}
        return {"iou_type": self.iou_type, "stats": self.stats, "per_category": self.per_category, "errors": errors,
                "pr_curves": {"iou_thresholds": list(PR_IOUS), "areas": list(AREAS),
                              "categories": [name for _, name in self.categories],
                              "recall": self.recall.round(4).tolist(),
                              "precision [iou, recall, category, area]": self.precision.round(4).tolist()},
                "confusion": {"score_threshold": self.score_threshold, "iou_threshold": FOREGROUND_IOU,
                              "rows (ground truth) and columns (prediction)":
                                  [name for _, name in self.categories] + ["background"],
                              "matrix": self.confusion.tolist()}}


def _per_category(gt: COCO, predictions: Sequence[Mapping], evaluator) -> tuple[list[dict], np.ndarray]:
    params, precision = evaluator.params, evaluator.eval["precision"]  # [T, R, K, A, M]
    m = list(params.maxDets).index(MAX_DETS)
    at = {iou: int(np.argmin(np.abs(params.iouThrs - iou))) for iou in PR_IOUS}

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    objects = Counter(a["category_id"] for a in gt.dataset["annotations"] if not a.get("iscrowd", 0))
    predicted = Counter(p["category_id"] for p in predictions)
    rows = []
    for k, category in enumerate(map(int, params.catIds)):  # numpy ints after loadRes
        rows.append({"category_id": category, "name": gt.cats[category].get("name", str(category)),
                     "objects": objects[category], "predictions": predicted[category],
                     "AP": mean(precision[:, :, k, 0, m]), "AP50": mean(precision[at[0.5], :, k, 0, m]),
                     "AP75": mean(precision[at[0.75], :, k, 0, m]),
                     **{f"AP{s}": mean(precision[:, :, k, a, m]) for a, s in ((1, "s"), (2, "m"), (3, "l"))}})
    return rows, precision[[at[iou] for iou in PR_IOUS], :, :, :, m]


def analyse(
    coco_gt: COCO | str | os.PathLike,
    predictions: Iterable[Mapping],
    iou_types: Sequence[str] = IOU_TYPES,
    score_threshold: float = 0.5,
) -> dict[str, Analysis]:
    """Per-category AP, PR curves, TIDE's error breakdown and the confusion matrix, per IoU type.

    Same inputs as :func:`fpnbook.evaluate.coco_evaluate` (boxes ``[x, y, w, h]`` in pixels),
    checked the same way (ValueError naming the first prediction with an unknown image or
    category, or without a ``segmentation`` when ``"segm"`` is asked for), and refused when
    empty. ``score_threshold`` applies to the confusion matrix only. Returns ``{iou_type: Analysis}``.
    """
    _check_unit("score_threshold", score_threshold)
    gt, predictions = checked_analysis_inputs(coco_gt, predictions, iou_types)
    max_dets = (1, 10, MAX_DETS)
    analyses = {}
    for iou_type in iou_types:
        evaluator = run_cocoeval(gt, predictions, iou_type, max_dets)
        rows, precision = _per_category(gt, predictions, evaluator)
        images = _images(gt, predictions, iou_type)
        analyses[iou_type] = Analysis(
            iou_type=iou_type, categories=[(row["category_id"], row["name"]) for row in rows],
            stats={name: float(v) for name, v in zip(stat_names(max_dets), evaluator.stats)}, per_category=rows,
            recall=np.asarray(evaluator.params.recThrs), precision=precision,
            errors=_breakdown(predictions, images, iou_type, FOREGROUND_IOU, BACKGROUND_IOU, MAX_DETS),
            confusion=_confusion(gt, predictions, images, score_threshold, FOREGROUND_IOU),
            score_threshold=score_threshold)
    return analyses


# ---------------------------------------------------------------- text


def format_category_table(analyses: Mapping[str, Analysis], digits: int = 3) -> str:
    """AP per category, one block per IoU type (-1: no object of that size)."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines = []
    for analysis in analyses.values():
        width = max(len("category"), *(len(row["name"]) for row in analysis.per_category))
        lines += [""] if lines else []
        lines.append(f"{analysis.name} AP per category")
        lines.append(f"{'category':{width}} {'objects':>7} {'preds':>6}" + "".join(f"{k:>7}" for k in keys))
        lines += [f"{row['name']:{width}} {row['objects']:7d} {row['predictions']:6d}"
                  + "".join(f"{row[k]:7.{digits}f}" for k in keys) for row in analysis.per_category]
    return "\n".join(lines)


def format_errors(analyses: Mapping[str, Analysis], digits: int = 4) -> str:
    """TIDE's breakdown: AP at IoU 0.5, each type's dAP and count, and the two special dAPs."""
    header = f"{'':11}{'AP50':>7}" + "".join(f"{SHORT_NAMES[t]:>7}" for t in ERROR_TYPES) + f"{'FP':>7}{'FN':>7}"
    lines = ["error breakdown (TIDE, IoU 0.5, background 0.1): dAP = AP50 gained by fixing that type alone",
             header]
    for analysis in analyses.values():
        errors = analysis.errors
        lines.append(f"{analysis.name + ' dAP':11}{errors['ap']:7.{digits}f}"
                     + "".join(f"{errors['dap'][t]:7.{digits}f}" for t in ERROR_TYPES)
                     + "".join(f"{v:7.{digits}f}" for v in errors["special"].values()))
        lines.append(f"{analysis.name + ' count':11}{'':7}" + "".join(f"{errors['counts'][t]:7d}" for t in ERROR_TYPES))
    lines.append("FP: all false positives scored 0; FN: every unmatched object forgiven "
                 "(count: predictions, or objects for miss)")
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _legend_outside(ax, **kwargs) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, borderaxespad=0, **kwargs)


def plot_category_ap(analyses: Mapping[str, Analysis], key: str = "AP") -> Figure:
    """Horizontal bars of one per-category number (``key``: AP, AP50, ...), box and mask side by side."""
    first = next(iter(analyses.values()))
    if key not in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        raise ValueError(f"key must be AP, AP50, AP75, APs, APm or APl, got {key!r}")
    names = [row["name"] for row in first.per_category]
    fig = Figure(figsize=(9, 0.35 * len(names) + 1.6), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(analyses)
    y = np.arange(len(names))
    for n, analysis in enumerate(analyses.values()):
        values = [max(row[key], 0) for row in analysis.per_category]
        bars = ax.barh(y + (n - (len(analyses) - 1) / 2) * height, values, height, color=f"C{n}",
                       label=f"{analysis.name} (mean {analysis.stats[key]:.3f})")
        ax.bar_label(bars, fmt="%.2f", fontsize=9, padding=2)
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.tick_params(labelsize=9)
    ax.set_xlabel(key, fontsize=9)
    ax.set_title(f"{key} per category" + (" (IoU 0.50:0.95)" if key == "AP" else ""), fontsize=10)
    _legend_outside(ax)
    return fig


def plot_pr_curves(analysis: Analysis, area: str = "all") -> Figure:
    """Precision against recall per category at IoU 0.5 (left) and 0.75 (right), for objects of size ``area``."""
    if area not in AREAS:
        raise ValueError(f"area must be one of {AREAS}, got {area!r}")
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    axes = fig.subplots(1, len(PR_IOUS), sharey=True)
    a = AREAS.index(area)
    for t, (ax, iou) in enumerate(zip(axes, PR_IOUS)):
        for k, (_, name) in enumerate(analysis.categories):
            precision = analysis.precision[t, :, k, a]
            if (precision > -1).any():
                ax.plot(analysis.recall, np.clip(precision, 0, None), color=PALETTE[(k + 1) % len(PALETTE)],
                        lw=1.5, label=name)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.set_xlabel("recall", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.set_title(f"{analysis.name} at IoU {iou:.2f}, {area} objects", fontsize=10)
    axes[0].set_ylabel("precision", fontsize=9)
    _legend_outside(axes[-1])
    return fig


def plot_errors(analyses: Mapping[str, Analysis]) -> Figure:
    """TIDE's dAP per error type, one panel per IoU type on one scale."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(analyses), sharex=True))
    top = max(max(a.errors["dap"].values()) for a in analyses.values())
    for ax, analysis in zip(axes, analyses.values()):
        values = [analysis.errors["dap"][t] for t in ERROR_TYPES]
        bars = ax.barh(ERROR_TYPES, values, color=[KIND_COLOURS[t] for t in ERROR_TYPES])
        ax.bar_label(bars, fmt="%.3f", fontsize=9, padding=2)
        ax.invert_yaxis()
        ax.set_xlim(0, max(top * 1.3, 0.01))
        ax.tick_params(labelsize=9)
        ax.set_xlabel("dAP (AP50 gained by fixing it alone)", fontsize=9)
        ax.set_title(f"{analysis.name}: AP50 {analysis.errors['ap']:.3f}, lost by error type", fontsize=10)
    return fig


def plot_confusion(analysis: Analysis) -> Figure:
    """The confusion matrix as a heat map (log colour scale) with each count written in its cell."""
    labels = [name for _, name in analysis.categories] + ["background"]
    n = len(labels)
    fig = Figure(figsize=(min(9, 2.5 + 0.6 * n), min(8, 1.8 + 0.5 * n)), layout="constrained")
    ax = fig.subplots()
    matrix = analysis.confusion
    shown = np.ma.masked_equal(matrix, 0).astype(float)
    top = max(int(matrix.max()), 2)
    # vmin below 1 so that a count of 1 is tinted, not the white of an empty cell.
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=0.6, vmax=top))
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= top]
    bar = fig.colorbar(image, ax=ax, ticks=ticks, format="%d")
    bar.set_label("count (log scale)", fontsize=9)
    bar.ax.tick_params(labelsize=9)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            dark = np.log(count) > 0.6 * np.log(max(matrix.max(), 2))
            ax.text(column, row, str(count), ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.set_xlabel("predicted class", fontsize=9)
    ax.set_ylabel("object's class", fontsize=9)
    ax.set_title(f"{analysis.name}: predictions with score >= {analysis.score_threshold:.2f} "
                 f"by the object they cover (IoU >= {FOREGROUND_IOU})", fontsize=10)
    return fig


def legend_handles(kinds: Sequence[str] = (*PREDICTION_KINDS[:-2], *OBJECT_STATUSES)) -> list[Patch]:
    """Legend entries naming the colour (:data:`KIND_COLOURS`) of each prediction kind and object status."""
    labels = {"correct": "prediction: correct", "detected": "object: detected",
              "mistaken": "object: found only by an error", "missed": "object: missed"}
    return [Patch(facecolor="none", edgecolor=KIND_COLOURS[k], linewidth=2, label=labels.get(k, k)) for k in kinds]


# ---------------------------------------------------------------- files


def analysis_files(iou_types: Sequence[str] = IOU_TYPES) -> list[str]:
    """The names :func:`write_analysis` writes for these IoU types."""
    return ["analysis.json", "category_ap.png", "errors.png",
            *(f"{kind}_{t}.png" for t in iou_types for kind in ("pr_curves", "confusion"))]


def check_out_dir(out_dir: str | os.PathLike, iou_types: Sequence[str] = IOU_TYPES, overwrite: bool = False) -> Path:
    """Refuse, before any work, an ``out_dir`` that is a file or (unless ``overwrite``) holds any of our files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; the analysis needs a folder")
    taken = [out_dir / name for name in analysis_files(iou_types) if (out_dir / name).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} exists ({len(taken)} of the analysis files do); pass overwrite=True "
                              "(the CLI's --overwrite) to replace them")
    return out_dir


def write_analysis(analyses: Mapping[str, Analysis], out_dir: str | os.PathLike, overwrite: bool = False,
                   command: str | None = None) -> list[Path]:
    """Write the figures (PNG) and ``analysis.json`` into ``out_dir``, each atomically; returns their paths.

    FileExistsError, before anything is written, when ``out_dir`` already holds one of them and
    ``overwrite`` is False.
    """
    out_dir = check_out_dir(out_dir, list(analyses), overwrite)
    figures = {"category_ap.png": plot_category_ap(analyses), "errors.png": plot_errors(analyses)}
    for iou_type, analysis in analyses.items():
        figures[f"pr_curves_{iou_type}.png"] = plot_pr_curves(analysis)
        figures[f"confusion_{iou_type}.png"] = plot_confusion(analysis)
    record = {"command": command, "foreground_iou": FOREGROUND_IOU, "background_iou": BACKGROUND_IOU,
              **{t: a.to_dict() for t, a in analyses.items()}}
    text = json.dumps(record) + "\n"  # made before any file is written; one line, as the PR arrays are long
    written = [_atomic_write(out_dir / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
               for name, fig in figures.items()]
    return [*written, atomic_write_text(text, out_dir / "analysis.json")]
