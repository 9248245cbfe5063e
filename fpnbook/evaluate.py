"""COCO evaluation through pycocotools, so our numbers mean what the papers' numbers mean.

Predictions are COCO result dicts: ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` plus ``"segmentation"`` (an RLE) for masks. :func:`to_coco_results` turns a
model's torchvision-style outputs into that list.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .boxes import check_box_shape, xyxy_to_xywh

IOU_TYPES = ("bbox", "segm")


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_bbox(box, name: str) -> None:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"{name} has bbox {box!r}; expected [x, y, w, h]")
    if not all(_is_real(v) for v in box):
        raise ValueError(f"{name} has bbox {box!r}; expected four finite numbers")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{name} has bbox {box!r} with negative width or height")


def coco_from_dict(dataset: Mapping, source: str = "the annotations") -> COCO:
    """A pycocotools ``COCO`` index over an annotations dict held in memory, checked first.

    Checks what pycocotools would otherwise trip over with a KeyError or TypeError:
    ``images`` and ``categories`` lists, every image with an ``id``, every annotation an
    object with ``image_id``, a known ``category_id`` and a ``bbox`` of four finite
    numbers with ``w, h >= 0``. ``source`` names the dict in errors (a file name).
    Annotations whose ``image_id`` is not among the images raise too: they would be
    dropped without a word.
    """
    if not isinstance(dataset, Mapping) or not isinstance(dataset.get("images"), list):
        raise ValueError(f"{source} is not a COCO annotation file: no 'images' list")
    if not isinstance(dataset.get("categories"), list):
        raise ValueError(f"{source} is not a COCO annotation file: no 'categories' list")
    dataset = dict(dataset)
    dataset.setdefault("annotations", [])
    if not isinstance(dataset["annotations"], list):
        raise ValueError(f"{source}: 'annotations' must be a list")
    for what in ("images", "categories"):
        for i, entry in enumerate(dataset[what]):
            if not isinstance(entry, Mapping) or "id" not in entry:
                raise ValueError(f"{source}: {what}[{i}] has no 'id' ({entry!r})")
            if not _is_id(entry["id"]):
                raise ValueError(f"{source}: {what}[{i}] has id {entry['id']!r}; COCO ids are integers")
    image_ids = {image["id"] for image in dataset["images"]}
    cat_ids = {c["id"] for c in dataset["categories"]}
    orphans = []
    for i, annotation in enumerate(dataset["annotations"]):
        if not isinstance(annotation, Mapping):
            raise ValueError(f"{source}: every annotation must be a JSON object, got {annotation!r}")
        name = f"annotation {annotation.get('id', i)!r} (image {annotation.get('image_id')!r}) in {source}"
        if "image_id" not in annotation:
            raise ValueError(f"{name} has no 'image_id'")
        for key in ("id", "image_id", "category_id"):
            if key in annotation and not _is_id(annotation[key]):
                raise ValueError(f"{name} has {key} {annotation[key]!r}; COCO ids are integers")
        if annotation["image_id"] not in image_ids:
            orphans.append(annotation["image_id"])
        if annotation.get("category_id") not in cat_ids:
            raise ValueError(f"{name} has category_id {annotation.get('category_id')!r}, which is not among "
                             f"the categories {sorted(cat_ids)}")
        _check_bbox(annotation.get("bbox"), name)
        annotation.setdefault("id", i + 1)
    if orphans:
        raise ValueError(f"{source}: {len(orphans)} annotation(s) refer to image ids {_some(set(orphans))}, "
                         "which are not among its images")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Load and check a COCO annotations JSON (see :func:`coco_from_dict`), quietly.

    FileNotFoundError for a missing file, ValueError naming the file for one that is
    not valid JSON or not COCO.
    """
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotations file not found: {ann_file}")
    try:
        with open(ann_file, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{ann_file} is not valid JSON: {error}") from None
    return coco_from_dict(dataset, str(ann_file))


def to_coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int] | None = None,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """Turn model outputs into COCO result dicts.

    ``outputs[i]`` holds ``boxes`` Tensor[N, 4] XYXY pixels, ``labels`` Tensor[N],
    ``scores`` Tensor[N] and optionally ``masks`` Tensor[N, 1, H, W] of probabilities,
    for the image whose COCO id is ``image_ids[i]``. Labels map to category ids
    through ``label_to_cat_id`` (identity when None).
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"outputs has {len(outputs)} entries but image_ids has {len(image_ids)}")
    results = []
    for i, (output, image_id) in enumerate(zip(outputs, image_ids)):
        check_output(output, f"outputs[{i}]", label_to_cat_id)
        boxes = xyxy_to_xywh(output["boxes"].detach().float().cpu()).tolist()
        labels = output["labels"].tolist()
        scores = output["scores"].tolist()
        rles = None
        if "masks" in output:
            binary = (output["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for j, (box, label, score) in enumerate(zip(boxes, labels, scores)):
            result = {
                "image_id": int(image_id),
                "category_id": int(label_to_cat_id[label] if label_to_cat_id else label),
                "bbox": [round(v, 2) for v in box],
                "score": float(score),
            }
            if rles is not None:
                rle = rles[j]
                result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(result)
    return results


def check_output(output: Mapping, name: str, label_to_cat_id: Mapping[int, int] | None = None) -> None:
    """Raise a ValueError/TypeError naming ``name`` unless ``output`` is one image's detections.

    ``boxes`` [N, 4], ``labels`` [N] and ``scores`` [N] (finite), and ``masks``
    [N, 1, H, W] when present; every label must be a key of ``label_to_cat_id``.
    """
    if not isinstance(output, Mapping):
        raise TypeError(f"{name} must be a dict of tensors, got {type(output).__name__}")
    missing = [k for k in ("boxes", "labels", "scores") if k not in output]
    if missing:
        raise ValueError(f"{name} lacks {missing}; a model's output has boxes, labels and scores")
    check_box_shape(output["boxes"], f"{name}['boxes']")
    n = len(output["boxes"])
    for key in ("labels", "scores"):
        value = output[key]
        if not isinstance(value, torch.Tensor) or value.shape != (n,):
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}['{key}'] must be a Tensor[{n}], one per box, got {shape}")
    for key in ("boxes", "scores"):
        if n and not torch.isfinite(output[key]).all():
            raise ValueError(f"{name}['{key}'] contains NaN or infinite values")
    if "masks" in output:
        masks = output["masks"]
        if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[:2] != (n, 1):
            shape = list(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(f"{name}['masks'] must be a Tensor[{n}, 1, H, W] of probabilities, got {shape}")
    if label_to_cat_id is not None and n:
        unknown = sorted(set(output["labels"].tolist()) - set(label_to_cat_id))
        if unknown:
            raise ValueError(f"{name} has labels {unknown} that label_to_cat_id does not map (it maps {sorted(label_to_cat_id)})")


def check_predictions(predictions: Sequence[Mapping], gt: COCO, iou_types: Sequence[str]) -> None:
    """Raise a ValueError naming the first bad COCO result dict, before pycocotools trips over it.

    Each needs ``image_id`` (one of ``gt``'s images), ``category_id`` (one of its
    categories: an unknown id is almost always a forgotten ``label_to_cat_id``, and
    pycocotools would silently score it as nothing), ``bbox`` [x, y, w, h] of finite
    numbers with w, h >= 0, a finite ``score``, and ``segmentation`` for ``"segm"``.
    """
    known_images, known_cats = set(gt.getImgIds()), set(gt.getCatIds())
    for i, p in enumerate(predictions):
        name = f"predictions[{i}]"
        if not isinstance(p, Mapping):
            raise TypeError(f"{name} must be a COCO result dict, got {type(p).__name__}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in p]
        if missing:
            raise ValueError(f"{name} lacks {missing}; a COCO result has image_id, category_id, bbox and score")
        if p["image_id"] not in known_images:
            raise ValueError(f"{name} refers to image id {p['image_id']!r}, not among the ground truth's image ids")
        if p["category_id"] not in known_cats:
            raise ValueError(f"{name} has category_id {p['category_id']!r}, not among the ground truth's "
                             f"{sorted(known_cats)} (map model labels with label_to_cat_id)")
        _check_bbox(p["bbox"], name)
        if not _is_real(p["score"]):
            raise ValueError(f"{name} has score {p['score']!r}; expected a finite number")
        if "segm" in iou_types and "segmentation" not in p:
            raise ValueError(f"iou_types includes 'segm' but {name} has no 'segmentation'")


def _some(ids, most: int = 10) -> str:
    """``[3, 7, 9]``, or the first ``most`` of many ids and how many more, for an error message."""
    ids = sorted(ids)
    return f"{ids[:most]}" + (f" (and {len(ids) - most} more)" if len(ids) > most else "")


def check_image_ids(gt: COCO, image_ids: Sequence[int] | None) -> None:
    """Raise a ValueError naming the ids in ``image_ids`` that are not ``gt``'s images (pycocotools scores them -1 silently)."""
    if image_ids is None:
        return
    unknown = set(image_ids) - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"image_ids {_some(unknown)} are not among the ground truth's image ids")


def run_cocoeval(gt: COCO, predictions: Sequence[Mapping], iou_type: str, max_dets: Sequence[int] = (1, 10, 100),
                 use_categories: bool = True, image_ids: Sequence[int] | None = None) -> COCOeval:
    """pycocotools' COCOeval of non-empty, checked predictions (:func:`check_predictions`), evaluated,
    accumulated and summarised, quietly: its ``eval["precision"]`` [T, R, K, A, M] and ``stats`` are ready."""
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes on bbox results would also invent a polygon per box; give it copies.
        dt = gt.loadRes([dict(p) for p in predictions])
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.maxDets = list(max_dets)
        evaluator.params.useCats = int(use_categories)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _no_object_stats(gt: COCO, names: Sequence[str], image_ids: Sequence[int] | None) -> dict[str, float]:
    """The stats with no predictions: 0, except -1 for an object size the ground truth lacks (as pycocotools)."""
    images = set(gt.getImgIds() if image_ids is None else image_ids)
    areas = [a.get("area", 0) for a in gt.dataset["annotations"] if a["image_id"] in images and not a.get("iscrowd", 0)]
    present = {"s": any(a <= 32 ** 2 for a in areas), "m": any(32 ** 2 <= a <= 96 ** 2 for a in areas),
               "l": any(a >= 96 ** 2 for a in areas)}
    stats = {}
    for name in names:
        size = name[-1] if name[-1] in "sml" and name[:-1] in ("AP", "AR") else None
        stats[name] = -1.0 if (not areas or (size and not present[size])) else 0.0
    return stats


def stat_names(max_dets: Sequence[int]) -> list[str]:
    # The order of COCOeval.stats, with AR keyed by its detection budget.
    return ["AP", "AP50", "AP75", "APs", "APm", "APl", *(f"AR{d}" for d in max_dets), "ARs", "ARm", "ARl"]


def checked_inputs(coco_gt: COCO | str | os.PathLike, predictions: Iterable[Mapping],
                   iou_types: Sequence[str]) -> tuple[COCO, list[Mapping]]:
    """The ground truth as a ``COCO`` (loaded and checked from a path) and the predictions as a
    list, both checked (:func:`check_predictions`); ``iou_types`` a non-empty subset of ``IOU_TYPES``."""
    gt = coco_gt if isinstance(coco_gt, COCO) else load_coco(coco_gt)
    predictions = list(predictions)
    unknown_types = set(iou_types) - set(IOU_TYPES)
    if isinstance(iou_types, str) or unknown_types or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types!r}")
    check_predictions(predictions, gt, iou_types)
    return gt, predictions


def coco_evaluate(
    coco_gt: COCO | str | os.PathLike,
    predictions: Iterable[Mapping],
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: Sequence[int] = (1, 10, 100),
    use_categories: bool = True,
    image_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Score COCO result dicts with pycocotools' COCOeval.

    Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
    "AR100", "ARs", "ARm", "ARl"}}``, with the AR keys named after ``max_dets``. The
    detection budget of each, as pycocotools' ``COCOeval.summarize`` fixes it: ``AP`` always
    at 100 detections per image, whatever ``max_dets`` says (so with predictions, ``AP`` is
    -1 when 100 is not among ``max_dets``); ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``
    and ``ARs``, ``ARm``, ``ARl`` at the largest budget, ``max_dets[2]``; ``AR{d}`` at ``d``.
    With ``max_dets=(10, 100, 1000)``, ``AP`` is thus scored on 100 detections per image and
    ``AP50`` on 1000. A value of -1 otherwise means the ground truth has no object of that
    size, as in pycocotools, with or without predictions; no predictions at all scores 0
    everywhere else.
    Bad predictions raise a ValueError naming the first (:func:`check_predictions`).

    ``use_categories=False`` scores class-agnostic recall, as for RPN proposals.
    ``image_ids`` restricts evaluation to some images (default: all of ``coco_gt``); an id
    that is not among the ground truth's images raises a ValueError naming it.
    """
    gt, predictions = checked_inputs(coco_gt, predictions, iou_types)
    check_image_ids(gt, image_ids)
    if len(max_dets) != 3 or sorted(max_dets) != list(max_dets):
        raise ValueError(f"max_dets must be three increasing detection budgets, got {tuple(max_dets)}")
    names = stat_names(max_dets)
    results = {}
    for iou_type in iou_types:
        if not predictions:
            results[iou_type] = _no_object_stats(gt, names, image_ids)
            continue
        evaluator = run_cocoeval(gt, predictions, iou_type, max_dets, use_categories, image_ids)
        results[iou_type] = {name: float(v) for name, v in zip(names, evaluator.stats)}
    return results


def format_table(results: Mapping[str, Mapping[str, float]], digits: int = 3) -> str:
    """The AP table as text, one row per IoU type, for the CLI and the chapters."""
    names = next(iter(results.values())).keys()
    header = f"{'':6}" + "".join(f"{n:>7}" for n in names)
    rows = [f"{t:6}" + "".join(f"{v:7.{digits}f}" for v in stats.values()) for t, stats in results.items()]
    return "\n".join([header, *rows])
