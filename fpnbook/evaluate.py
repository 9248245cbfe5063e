"""COCO evaluation through pycocotools, so our numbers mean what the papers' numbers mean.

Predictions are COCO result dicts: ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` plus ``"segmentation"`` (an RLE) for masks. :func:`to_coco_results` turns a
model's torchvision-style outputs into that list.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .boxes import xyxy_to_xywh

IOU_TYPES = ("bbox", "segm")


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Load a COCO annotations JSON quietly, with a clear error for a missing file."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotations file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


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
    for output, image_id in zip(outputs, image_ids):
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


def _stat_names(max_dets: Sequence[int]) -> list[str]:
    # The order of COCOeval.stats, with AR keyed by its detection budget.
    return ["AP", "AP50", "AP75", "APs", "APm", "APl", *(f"AR{d}" for d in max_dets), "ARs", "ARm", "ARl"]


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
    "AR100", "ARs", "ARm", "ARl"}}`` (AR keys follow ``max_dets``; APs/ARs and friends use
    the largest budget). A value of -1 means the ground truth has no object of that size,
    as in pycocotools. No predictions at all scores 0 everywhere else.

    ``use_categories=False`` scores class-agnostic recall, as for RPN proposals.
    ``image_ids`` restricts evaluation to some images (default: all of ``coco_gt``).
    """
    gt = coco_gt if isinstance(coco_gt, COCO) else load_coco(coco_gt)
    predictions = list(predictions)
    unknown_types = set(iou_types) - set(IOU_TYPES)
    if unknown_types or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {tuple(iou_types)}")
    known_ids = set(gt.getImgIds())
    unknown_ids = {p["image_id"] for p in predictions} - known_ids
    if unknown_ids:
        raise ValueError(f"predictions refer to image ids not in the ground truth: {sorted(unknown_ids)[:10]}")
    if "segm" in iou_types and any("segmentation" not in p for p in predictions):
        raise ValueError("iou_types includes 'segm' but some predictions have no 'segmentation'")
    if len(max_dets) != 3 or sorted(max_dets) != list(max_dets):
        raise ValueError(f"max_dets must be three increasing detection budgets, got {tuple(max_dets)}")
    names = _stat_names(max_dets)
    results = {}
    for iou_type in iou_types:
        if not predictions:
            results[iou_type] = {name: 0.0 for name in names}
            continue
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
        results[iou_type] = {name: float(v) for name, v in zip(names, evaluator.stats)}
    return results


def format_table(results: Mapping[str, Mapping[str, float]], digits: int = 3) -> str:
    """The AP table as text, one row per IoU type, for the CLI and the chapters."""
    names = next(iter(results.values())).keys()
    header = f"{'':6}" + "".join(f"{n:>7}" for n in names)
    rows = [f"{t:6}" + "".join(f"{v:7.{digits}f}" for v in stats.values()) for t, stats in results.items()]
    return "\n".join([header, *rows])
