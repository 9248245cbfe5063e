import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fpnbook.evaluate import coco_evaluate, format_table, load_coco, to_coco_results


@pytest.fixture
def coco_gt(tmp_path):
    """Two 64x64 images; image 1 has a 20x20 square (class 1), image 2 a 40x30 box (class 2)."""
    masks = np.zeros((2, 64, 64), dtype=np.uint8)
    masks[0, 10:30, 10:30] = 1
    masks[1, 5:35, 20:60] = 1
    anns = []
    for i, (m, cat) in enumerate(zip(masks, [1, 2])):
        rle = mask_utils.encode(np.asfortranarray(m))
        anns.append({
            "id": i + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(m.sum()),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
        })
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": anns,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco(path), masks


def perfect_outputs(masks):
    outputs = []
    for m, label, box in zip(masks, [1, 2], [[10, 10, 30, 30], [20, 5, 60, 35]]):
        outputs.append({
            "boxes": torch.tensor([box], dtype=torch.float32),
            "labels": torch.tensor([label]),
            "scores": torch.tensor([0.9]),
            "masks": torch.from_numpy(m).float()[None, None],
        })
    return outputs


def test_perfect_predictions_score_one(coco_gt):
    gt, masks = coco_gt
    results = coco_evaluate(gt, to_coco_results(perfect_outputs(masks), [1, 2]))
    for iou_type in ("bbox", "segm"):
        assert results[iou_type]["AP"] == pytest.approx(1.0)
        assert results[iou_type]["AR100"] == pytest.approx(1.0)
        assert results[iou_type]["APl"] == -1  # no large objects: pycocotools' -1
    assert "AP50" in format_table(results)


def test_shifted_box_loses_high_iou_thresholds(coco_gt):
    gt, masks = coco_gt
    outputs = perfect_outputs(masks)
    outputs[0]["boxes"] = torch.tensor([[14.0, 10, 34, 30]])  # IoU 16*20 / (2*400 - 320) = 2/3
    results = coco_evaluate(gt, to_coco_results(outputs, [1, 2]), iou_types=("bbox",))
    assert results["bbox"]["AP50"] == pytest.approx(1.0)
    assert results["bbox"]["AP75"] == pytest.approx(0.5, abs=0.01)


def test_empty_predictions_give_zeros(coco_gt):
    """Zero everywhere, except -1 for an object size the ground truth lacks, as pycocotools says with predictions."""
    gt, masks = coco_gt
    results = coco_evaluate(gt, [])
    scored = coco_evaluate(gt, to_coco_results(perfect_outputs(masks), [1, 2]))
    for iou_type, stats in results.items():
        assert all(v == (-1.0 if scored[iou_type][k] == -1 else 0.0) for k, v in stats.items())


def test_unknown_image_id_raises(coco_gt):
    gt, masks = coco_gt
    with pytest.raises(ValueError, match="image ids"):
        coco_evaluate(gt, to_coco_results(perfect_outputs(masks), [1, 99]))


def test_bad_arguments(coco_gt, tmp_path):
    gt, masks = coco_gt
    boxes_only = to_coco_results([{k: v for k, v in o.items() if k != "masks"} for o in perfect_outputs(masks)], [1, 2])
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(gt, boxes_only, iou_types=("segm",))
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(gt, boxes_only, iou_types=("keypoints",))
    with pytest.raises(ValueError, match="max_dets"):
        coco_evaluate(gt, boxes_only, iou_types=("bbox",), max_dets=(100,))
    with pytest.raises(ValueError, match="image_ids"):
        to_coco_results(perfect_outputs(masks), [1])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco(tmp_path / "missing.json")


def test_class_agnostic_recall_at_custom_budgets(coco_gt):
    gt, masks = coco_gt
    outputs = perfect_outputs(masks)
    for o in outputs:
        o["labels"] = torch.tensor([1])  # wrong class for image 2, but recall ignores classes
    results = coco_evaluate(gt, to_coco_results(outputs, [1, 2]), iou_types=("bbox",), max_dets=(10, 100, 1000), use_categories=False)
    assert results["bbox"]["AR1000"] == pytest.approx(1.0)
