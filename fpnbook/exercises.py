"""Exercises with checked answers: ``check("ch4.bilinear", your_function)`` says pass, or shows the first case that fails.

Every chapter ends with exercises of three kinds:

- **derive**: a number to work out by hand; ``check(name, 0.1429)`` compares it with a tolerance;
- **implement**: a function to write; ``check(name, fn)`` runs it against the library on
  random and edge cases and prints the first failing case with both answers;
- **predict-then-run**: say what will happen, change a setting, look. These need no checker.

``check`` returns True or False and prints one line (or a few, for a failing case). A
stub (``None``, or a function that raises NotImplementedError) gets "not yet", so the
chapters can run their exercise cells before the reader has written anything. The
solutions live in :mod:`fpnbook.solutions`, one place, away from the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from . import boxes, evaluate, losses, poolers, reference
from .weight_transfer import WeightTransfer


@dataclass(frozen=True)
class Exercise:
    """One exercise: its kind, its prompt, and how to check an answer.

    ``answer`` is the number a derive-exercise expects (within ``tolerance``); for an
    implement-exercise ``reference`` is the library function the reader's must equal on
    ``cases()`` (tuples of arguments), compared by ``close``.
    """

    name: str
    kind: str
    prompt: str
    answer: float | None = None
    tolerance: float = 1e-3
    reference: Callable | None = None
    cases: Callable[[], Iterator[tuple]] | None = None
    close: Callable[[object, object], bool] | None = None


def _close(atol: float = 1e-5) -> Callable[[object, object], bool]:
    def close(yours, expected) -> bool:
        if isinstance(expected, Tensor):
            return (isinstance(yours, Tensor) and yours.shape == expected.shape
                    and torch.allclose(yours.double(), expected.double(), atol=atol, rtol=1e-4, equal_nan=True))
        if isinstance(expected, (list, tuple)):
            return isinstance(yours, (list, tuple)) and len(yours) == len(expected) and all(
                close(a, b) for a, b in zip(yours, expected))
        if isinstance(expected, dict):
            return isinstance(yours, dict) and yours.keys() == expected.keys() and all(
                close(yours[k], expected[k]) for k in expected)
        if isinstance(expected, float):
            return isinstance(yours, (int, float)) and math.isclose(yours, expected, rel_tol=1e-4, abs_tol=atol)
        return yours == expected
    return close


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the cases each implement-exercise is run on


def _box_cases() -> Iterator[tuple]:
    g = _generator(1)
    yield (torch.tensor([[0.0, 0.0, 10.0, 10.0]]),)
    yield (torch.zeros(0, 4),)  # no boxes at all
    yield (torch.tensor([[3.0, 4.0, 3.0, 9.0]]),)  # zero width
    for n in (1, 5, 40):
        corner = torch.rand(n, 2, generator=g) * 200
        yield (torch.cat([corner, corner + torch.rand(n, 2, generator=g) * 100], 1),)


def _xywh_cases() -> Iterator[tuple]:
    g = _generator(2)
    yield (torch.tensor([[0.0, 0.0, 10.0, 10.0]]),)
    yield (torch.zeros(0, 4),)
    for n in (1, 7):
        yield (torch.rand(n, 4, generator=g) * 100,)


def _random_boxes(g: torch.Generator, n: int, min_side: float = 2.0) -> Tensor:
    corner = torch.rand(n, 2, generator=g) * 200
    return torch.cat([corner, corner + min_side + torch.rand(n, 2, generator=g) * 80], 1)


def _encode_cases() -> Iterator[tuple]:
    g = _generator(10)
    box = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    yield box, box, (1.0, 1.0, 1.0, 1.0)  # a box against itself: all zeros
    yield torch.tensor([[0.0, 0.0, 40.0, 10.0]]), torch.tensor([[5.0, 0.0, 25.0, 20.0]]), (1.0, 1.0, 1.0, 1.0)
    yield torch.zeros(0, 4), torch.zeros(0, 4), (10.0, 10.0, 5.0, 5.0)  # no boxes
    yield torch.tensor([[3.0, 4.0, 3.0, 9.0]]), box, (1.0, 1.0, 1.0, 1.0)  # zero width: dw = -inf
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 0.5)):
        yield _random_boxes(g, 20), _random_boxes(g, 20), weights


def _decode_cases() -> Iterator[tuple]:
    g = _generator(11)
    box = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    yield torch.zeros(1, 4), box, (1.0, 1.0, 1.0, 1.0)  # zero deltas: the reference itself
    yield torch.tensor([[0.5, -0.25, math.log(2.0), 0.0]]), box, (1.0, 1.0, 1.0, 1.0)
    yield torch.tensor([[0.0, 0.0, 10.0, 50.0], [0.0, 0.0, 100.0, -3.0]]), box.repeat(2, 1), (1.0, 1.0, 1.0, 1.0)  # clamp
    yield torch.zeros(0, 4), torch.zeros(0, 4), (10.0, 10.0, 5.0, 5.0)  # no boxes
    yield torch.randn(15, 4, generator=g), _random_boxes(g, 15), (1.0, 1.0, 1.0, 1.0)
    yield torch.randn(15, 12, generator=g) * 5, _random_boxes(g, 15), (10.0, 10.0, 5.0, 5.0)  # 3 boxes per reference
    yield torch.randn(6, 36, generator=g) * 30, _random_boxes(g, 6), (10.0, 10.0, 5.0, 5.0)  # some past the clamp


def _decode(deltas: Tensor, reference_boxes: Tensor, weights) -> Tensor:
    """The library's answer: :class:`fpnbook.boxes.BoxCoder`'s decode with these weights."""
    return boxes.BoxCoder(weights).decode(deltas, reference_boxes)


def _match_cases() -> Iterator[tuple]:
    g = _generator(12)
    iou = torch.tensor([[0.8, 0.7, 0.5, 0.3, 0.1], [0.0, 0.2, 0.69, 0.31, 0.29]])  # right at the thresholds
    for allow in (False, True):
        yield iou, 0.7, 0.3, allow
    ties = torch.tensor([[0.4, 0.4, 0.1, 0.0], [0.0, 0.2, 0.6, 0.6], [0.0, 0.45, 0.0, 0.1]])  # tied best anchors
    yield ties, 0.7, 0.3, True
    yield torch.zeros(0, 6), 0.7, 0.3, True  # an image with no objects: all background
    yield torch.rand(4, 50, generator=g), 0.5, 0.5, False  # one threshold: no ignore band (the box head)
    for allow in (False, True):
        yield torch.rand(6, 200, generator=g) ** 2, 0.7, 0.3, allow
        yield torch.rand(3, 100, generator=g) * 0.6, 0.5, 0.4, allow  # no candidate above high


def _match(iou: Tensor, high: float, low: float, allow_low_quality_matches: bool) -> Tensor:
    """The library's answer: :class:`fpnbook.matching.Matcher`."""
    from .matching import Matcher

    return Matcher(high, low, allow_low_quality_matches)(iou)


def _nms_cases() -> Iterator[tuple]:
    g = _generator(13)
    two = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])  # IoU 0.82
    yield two, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.5
    yield two, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]), 0.5  # different classes: both kept
    yield torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5  # no boxes
    yield (torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]), torch.tensor([0.9, 0.8]),
           torch.tensor([3, 3]), 0.5)  # IoU exactly the threshold: kept
    yield two.repeat(3, 1), torch.full((6,), 0.5), torch.tensor([1, 1, 2, 2, 1, 2]), 0.5  # all scores tied
    yield torch.tensor([[5.0, 5.0, 5.0, 20.0], [5.0, 5.0, 5.0, 20.0], [0.0, 0.0, 10.0, 30.0]]), torch.tensor(
        [0.7, 0.6, 0.5]), torch.tensor([1, 1, 1]), 0.3  # zero-width boxes
    for threshold in (0.3, 0.5, 0.7):
        scores = torch.randint(0, 8, (80,), generator=g).float() / 8  # many ties
        yield _random_boxes(g, 80, 20.0) / 3, scores, torch.randint(1, 4, (80,), generator=g), threshold


def _batched_nms(boxes_: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """The library's answer: ``torchvision.ops.batched_nms``."""
    from torchvision.ops import batched_nms

    return batched_nms(boxes_, scores, labels, iou_threshold)


def _level_cases() -> Iterator[tuple]:
    yield (torch.tensor([[0.0, 0.0, 224.0, 224.0]]), 2, 5, 224, 4)  # exactly the canonical size
    yield (torch.tensor([[0.0, 0.0, 448.0, 448.0], [0.0, 0.0, 112.0, 112.0]]), 2, 5, 224, 4)  # powers of 2
    yield (torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2000.0, 2000.0]]), 2, 5, 224, 4)  # clamped at both ends
    g = _generator(3)
    for scale in (224, 112, 56):
        corner = torch.rand(30, 2, generator=g) * 100
        yield (torch.cat([corner, corner + 2 + torch.rand(30, 2, generator=g) * 300], 1), 2, 5, scale, 4)


def _focal_cases() -> Iterator[tuple]:
    g = _generator(4)
    yield (torch.tensor([0.0, 2.0, -2.0]), torch.tensor([1.0, 1.0, 0.0]), 0.25, 2.0)
    yield (torch.tensor([40.0, -40.0, 40.0, -40.0]), torch.tensor([1.0, 0.0, 0.0, 1.0]), 0.25, 2.0)  # saturated logits
    for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 5.0)):
        yield torch.randn(50, generator=g) * 4, (torch.rand(50, generator=g) < 0.3).float(), alpha, gamma


def _bilinear_cases() -> Iterator[tuple]:
    g = _generator(5)
    values = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    for y, x in ((0.0, 0.0), (1.5, 2.25), (4.0, 5.0), (3.9, 0.1), (-0.5, 2.0), (4.6, 5.7), (-1.5, 2.0), (2.0, 6.5)):
        yield values, y, x
    for _ in range(20):
        y, x = (torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([7.0, 8.0]) - 1).tolist()
        yield values, y, x


def _roi_align_cases() -> Iterator[tuple]:
    g = _generator(6)
    features = torch.randn(1, 2, 12, 16, generator=g, dtype=torch.float64)
    yield features, torch.tensor([[0.0, 16.0, 16.0, 96.0, 80.0]], dtype=torch.float64), 2, 1 / 8, 2
    yield features, torch.tensor([[0.0, 5.0, 3.0, 40.0, 70.0]], dtype=torch.float64), 3, 1 / 8, 2
    yield features, torch.tensor([[0.0, 100.0, 60.0, 140.0, 110.0]], dtype=torch.float64), 2, 1 / 8, 1  # past the edge


def _transfer_cases() -> Iterator[tuple]:
    g = _generator(7)
    for classes, det_dim, mask_dim in ((9, 20, 8), (1, 5, 3), (4, 1280, 16)):
        omega = torch.randn(classes, det_dim, generator=g)
        yield omega, torch.randn(mask_dim, det_dim, generator=g), torch.randn(mask_dim, generator=g)


def _linear_transfer(omega: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The library's linear T with these weights: ``fpnbook.weight_transfer.WeightTransfer(kind="linear")``."""
    transfer = WeightTransfer(weight.shape[1], weight.shape[0], kind="linear")
    with torch.no_grad():
        transfer.layers[0].weight.copy_(weight)
        transfer.layers[0].bias.copy_(bias)
        return transfer(omega)


def _has_mask_cases() -> Iterator[tuple]:
    yield torch.tensor([1, 2, 3, 4]), (1, 3)
    yield torch.zeros(0, dtype=torch.int64), (1, 3, 6, 8)
    yield torch.tensor([8, 8, 2]), (8,)
    g = _generator(8)
    yield torch.randint(1, 9, (30,), generator=g), (1, 3, 6, 8)


def _has_mask(labels: Tensor, mask_classes) -> Tensor:
    """The library's answer: ``partial_mask_targets``' ``has_mask`` for one target."""
    from .weight_transfer import partial_mask_targets

    target = {"boxes": torch.zeros(len(labels), 4), "labels": labels}
    return partial_mask_targets([target], mask_classes)[0]["has_mask"]


def _coco_cases() -> Iterator[tuple]:
    g = _generator(9)
    for n, image_id in ((0, 3), (1, 7), (6, 12)):
        corner = torch.rand(n, 2, generator=g) * 100
        output = {"boxes": torch.cat([corner, corner + 1 + torch.rand(n, 2, generator=g) * 50], 1),
                  "labels": torch.randint(1, 4, (n,), generator=g), "scores": torch.rand(n, generator=g)}
        yield output, image_id, {1: 10, 2: 20, 3: 30}


def _to_coco(output: dict, image_id: int, label_to_cat_id: dict) -> list[dict]:
    """The library's answer: :func:`fpnbook.evaluate.to_coco_results` for one image."""
    return evaluate.to_coco_results([output], [image_id], label_to_cat_id)


def _coco_close(yours, expected) -> bool:
    if not isinstance(yours, list) or len(yours) != len(expected):
        return False
    for a, b in zip(yours, expected):
        if not isinstance(a, dict) or set(a) < {"image_id", "category_id", "bbox", "score"}:
            return False
        if a["image_id"] != b["image_id"] or a["category_id"] != b["category_id"]:
            return False
        if not (math.isclose(float(a["score"]), b["score"], abs_tol=1e-6)
                and all(math.isclose(float(u), v, abs_tol=0.011) for u, v in zip(a["bbox"], b["bbox"]))):
            return False
    return True


def _mask_target_cases() -> Iterator[tuple]:
    g = _generator(10)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    for size in (28, 28, 14, 28, 7):
        cx, cy = (torch.rand(2, generator=g) * torch.tensor([40.0, 30.0]) + torch.tensor([20.0, 16.0])).tolist()
        rx, ry = (torch.rand(2, generator=g) * 12 + 5).tolist()
        mask = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).float()  # an ellipse
        rows, cols = torch.where(mask > 0)
        gt_box = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
        shift = (torch.rand(4, generator=g) - 0.5) * 0.4 * (gt_box[2:] - gt_box[:2]).repeat(2)
        roi = gt_box + shift  # an RoI that overlaps the object, off by up to 20% of its size per edge
        yield mask, gt_box, roi, size


def _mask_target(gt_mask: Tensor, gt_box: Tensor, roi: Tensor, size: int) -> Tensor:
    """The library's answer: :func:`fpnbook.roi_heads.project_masks_on_boxes` for one RoI."""
    from .roi_heads import project_masks_on_boxes

    return project_masks_on_boxes(gt_mask[None], roi[None], torch.zeros(1, dtype=torch.int64), size)[0]


# ---------------------------------------------------------------- the exercises, chapter by chapter


EXERCISES: dict[str, Exercise] = {e.name: e for e in [
    # Chapter 0: boxes and COCO AP
    Exercise("ch0.iou", "derive", "The IoU of the boxes (0, 0, 10, 10) and (5, 5, 15, 15), XYXY pixels.",
             answer=25 / 175),
    Exercise("ch0.box_area", "implement", "box_area(boxes: Tensor[N, 4] XYXY) -> Tensor[N] of areas in pixels.",
             reference=boxes.box_area, cases=_box_cases, close=_close()),
    Exercise("ch0.xywh_to_xyxy", "implement", "xywh_to_xyxy(boxes: Tensor[N, 4] COCO (x, y, w, h)) -> Tensor[N, 4] XYXY.",
             reference=boxes.xywh_to_xyxy, cases=_xywh_cases, close=_close()),
    # Chapter 1: the pipeline
    Exercise("ch1.delta_w", "derive", "The box head's target dw for a proposal 40 px wide whose ground truth is 50 px "
             "wide, with the weights (wx, wy, ww, wh) = (10, 10, 5, 5).", answer=5 * math.log(50 / 40)),
    Exercise("ch1.encode", "implement", "encode(gt [N, 4], reference [N, 4], weights (wx, wy, ww, wh)) -> deltas "
             "[N, 4]: (wx (gx - rx) / rw, wy (gy - ry) / rh, ww log(gw / rw), wh log(gh / rh)), centres and sizes.",
             reference=lambda g, r, w: boxes.BoxCoder(w).encode(g, r), cases=_encode_cases, close=_close(1e-4)),
    Exercise("ch1.decode", "implement", "decode(deltas [N, 4K], reference [N, 4], weights) -> boxes [N, 4K] XYXY, "
             "K boxes per reference; dw / ww and dh / wh are clamped at log(1000 / 16) before exp.",
             reference=_decode, cases=_decode_cases, close=_close(1e-3)),
    Exercise("ch1.match", "implement", "match(iou [G, N], high, low, allow_low_quality_matches) -> LongTensor[N]: "
             "each candidate's best object where its best IoU >= high, -1 below low, -2 in between; with "
             "allow_low_quality_matches, each object's best candidates (ties included) keep their best object "
             "whatever the IoU. No objects (G = 0): all -1.", reference=_match, cases=_match_cases, close=_close(0)),
    Exercise("ch1.nms", "implement", "nms(boxes [N, 4], scores [N], labels [N], iou_threshold) -> LongTensor of "
             "the kept indices, best score first (ties: lower index first); greedy, per class: a box is dropped when "
             "its IoU with a kept box of its class is above the threshold.",
             reference=_batched_nms, cases=_nms_cases, close=_close(0)),
    # Chapter 2: pyramids
    Exercise("ch2.level", "derive", "The FPN level of a 100 x 100 RoI with canonical scale 112 and canonical level "
             "4 (the book's CANONICAL_SCALE for 256 px images): floor(k0 + log2(sqrt(w h) / s0)).", answer=3,
             tolerance=0),
    Exercise("ch2.assign_levels", "implement", "assign_levels(boxes [N, 4], k_min, k_max, canonical_scale, "
             "canonical_level) -> LongTensor[N] of levels counted from k_min, clamped to k_min..k_max.",
             reference=lambda b, lo, hi, s, k: poolers.assign_levels(b, lo, hi, s, k), cases=_level_cases,
             close=_close(0)),
    Exercise("ch2.anchors_per_image", "derive", "How many anchors does the book's RPN place on one 256 x 256 image: "
             "P2..P6 (strides 4..64), one size per level, 3 aspect ratios per location?",
             answer=3 * sum((256 // s) ** 2 for s in (4, 8, 16, 32, 64)), tolerance=0),
    # Chapter 3: focal loss
    Exercise("ch3.prior_bias", "derive", "The classifier bias b that makes sigmoid(b) = 0.01 at the start of training.",
             answer=-math.log(99)),
    Exercise("ch3.gamma", "derive", "One positive at p_t = 0.1 and 1000 easy negatives at p_t = 0.99, no α weighting: "
             "the smallest γ in {0, 0.5, 1, 2, 5} at which the negatives carry under 10% of the focal loss.",
             answer=1.0, tolerance=0),
    Exercise("ch3.focal_loss", "implement", "sigmoid_focal_loss(inputs, targets, alpha, gamma) -> elementwise loss, "
             "-α_t (1 - p_t)^γ log p_t, finite for logits of any size.",
             reference=lambda x, t, a, gm: losses.sigmoid_focal_loss(x, t, a, gm), cases=_focal_cases, close=_close(1e-5)),
    # Chapter 4: RoIAlign
    Exercise("ch4.bilinear", "implement", "bilinear(values [C, H, W], y, x) -> [C]: the value at the real point (y, x), "
             "as torchvision's RoIAlign reads it (0 beyond one pixel off the map, the border pixel closer).",
             reference=reference.bilinear, cases=_bilinear_cases, close=_close(1e-9)),
    Exercise("ch4.roipool_region", "derive", "A box from x1 = 5 to x2 = 100 image pixels at stride 16: RoIPool rounds "
             "both ends to feature pixels (C's round) and keeps both end pixels. How many image pixels wide is the "
             "region it reads?", answer=(round(100 / 16) - round(5 / 16) + 1) * 16, tolerance=0),
    Exercise("ch4.roi_align", "implement", "roi_align(input [1, C, H, W], rois [1, 5], output_size, spatial_scale, "
             "sampling_ratio) -> [1, C, size, size], aligned=False: the mean of sampling_ratio^2 bilinear samples per bin.",
             reference=lambda f, r, s, sc, n: reference.roi_align_loops(f, r, s, sc, n, False), cases=_roi_align_cases,
             close=_close(1e-9)),
    # Chapter 5: the second stage
    Exercise("ch5.mask_target", "implement", "mask_target(gt_mask [H, W] 0/1, gt_box [4], roi [4], size) -> "
             "[size, size]: the RoI's mask target, the object's mask cut out by the RoI and resized as Mask R-CNN's "
             "mask branch trains on it (RoIAlign at spatial scale 1, adaptive sampling, aligned=False).",
             reference=_mask_target, cases=_mask_target_cases, close=_close(1e-5)),
    Exercise("ch5.box_outputs", "derive", "How many numbers does the book's box predictor (torchvision's layout) give "
             "per RoI for COCO's K = 80 object classes: class scores and class-specific box deltas together?",
             answer=(80 + 1) + 4 * (80 + 1), tolerance=0),
    # Chapter 6: weight transfer
    Exercise("ch6.linear_transfer", "implement", "transfer(omega [C, D], weight [M, D], bias [M]) -> tau [C, M]: the "
             "linear T, one row of mask weights per class from its detection weights.",
             reference=_linear_transfer, cases=_transfer_cases, close=_close(1e-4)),
    Exercise("ch6.theta_size", "derive", "How many parameters has a linear T for 'cls+box' inputs, representation "
             "size 256 and a 64-channel mask feature (weights and biases)?", answer=5 * 256 * 64 + 64, tolerance=0),
    Exercise("ch6.has_mask", "implement", "has_mask(labels LongTensor[G], mask_classes) -> BoolTensor[G]: which objects "
             "train the mask branch of a Mask^X R-CNN.", reference=_has_mask, cases=_has_mask_cases, close=_close(0)),
    # Chapter 7: the assembly
    Exercise("ch7.to_coco", "implement", "to_coco(output {'boxes', 'labels', 'scores'}, image_id, label_to_cat_id) -> "
             "list of COCO result dicts, boxes as [x, y, w, h].", reference=_to_coco, cases=_coco_cases, close=_coco_close),
    Exercise("ch7.rois_sampled", "derive", "A batch of 4 images, 128 RoIs sampled per image, 25% foreground at most: "
             "how many foreground RoIs can the box head see per step?", answer=4 * 32, tolerance=0),
]}


def _describe(value) -> str:
    if isinstance(value, Tensor):
        text = str(value.tolist()) if value.numel() <= 12 else f"Tensor{list(value.shape)} {value.flatten()[:6].tolist()}..."
        return text if len(text) < 300 else text[:300] + "..."
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


def check(name: str, answer, verbose: bool = True) -> bool:
    """Check ``answer`` to exercise ``name`` (``"ch4.bilinear"``); print the verdict; return True when it passes.

    A derive-exercise takes a number; an implement-exercise takes a function with the
    prompt's signature. ``None``, ``...`` or a function that raises NotImplementedError
    is "not yet".
    """
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; there are {', '.join(EXERCISES)}")
    exercise = EXERCISES[name]
    say = print if verbose else (lambda *a: None)
    if answer is None or answer is Ellipsis:
        say(f"{name}: not yet. {exercise.prompt}")
        return False
    if exercise.kind == "derive":
        if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
            say(f"{name}: expected a number, got {answer!r}")
            return False
        if abs(answer - exercise.answer) <= max(exercise.tolerance, 1e-9):
            say(f"{name}: correct ({answer:g})")
            return True
        say(f"{name}: not quite: {answer:g} is not the answer (within {exercise.tolerance:g}). {exercise.prompt}")
        return False
    if not callable(answer):
        say(f"{name}: expected a function, got {type(answer).__name__}")
        return False
    count = 0
    for count, args in enumerate(exercise.cases(), start=1):
        expected = exercise.reference(*args)
        try:
            yours = answer(*args)
        except NotImplementedError:
            say(f"{name}: not yet (your function raises NotImplementedError). {exercise.prompt}")
            return False
        except Exception as error:  # the reader's code: show what it did, never a traceback
            say(f"{name}: case {count} raised {type(error).__name__}: {error}\n  input: {_describe(args)}")
            return False
        if not exercise.close(yours, expected):
            say(f"{name}: case {count} differs\n  input:    {_describe(args)}\n  yours:    {_describe(yours)}\n"
                f"  expected: {_describe(expected)}")
            return False
    say(f"{name}: passed all {count} cases")
    return True


def exercises_of(chapter: int) -> list[str]:
    """The names of chapter ``chapter``'s checked exercises, in order."""
    return [name for name in EXERCISES if name.startswith(f"ch{chapter}.")]
