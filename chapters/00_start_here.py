# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 0. Start here: the data, COCO format, and how COCO AP is computed
#
# Every chapter of this book trains and measures detectors on the same data, and every
# number it reports is COCO average precision computed by `pycocotools`, the code behind
# the papers' tables. This chapter opens both boxes:
#
# 1. **The dataset** (`fpnbook.data`): eight shape classes pasted onto real photographs,
#    from 8 pixels to most of the image, occluding one another.
# 2. **COCO format**: images, categories and annotations with run-length-encoded masks.
# 3. **COCO AP** (`fpnbook.evaluate`): IoU, precision and recall, and the average over
#    ten IoU thresholds, written out by hand and checked against pycocotools.
#
# Conventions used throughout (`fpnbook.boxes`): a box is `(x1, y1, x2, y2)` in
# input-image pixels; labels run `1..8` with `0` for background.

# %% [markdown]
# **Papers.** The book follows four: [FPN](https://arxiv.org/abs/1612.03144) (chapter 2),
# [focal loss and RetinaNet](https://arxiv.org/abs/1708.02002) (chapter 3),
# [Mask R-CNN](https://arxiv.org/abs/1703.06870) (chapters 4, 5 and 7) and
# [Learning to Segment Every Thing](https://arxiv.org/abs/1711.10370) (chapter 6). This
# chapter's AP is the one of the [COCO paper](https://arxiv.org/abs/1405.0312) and its
# evaluation code (pycocotools).

# %%
# %matplotlib inline
import json

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pycocotools import mask as mask_utils

import fpnbook
from fpnbook import boxes, data, evaluate, viz

print("fpnbook", fpnbook.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. The dataset (`fpnbook.data`)
#
# The validation split ships with the book under `data/`. It was written by the same
# generator you can run yourself (`python -m fpnbook data --out DIR --train N --val M
# --size S --seed K`; see `data/README.md` for the exact command). `CocoDataset` reads it,
# or any other COCO-format folder, and returns an image tensor plus a target of
# torchvision `tv_tensors`, so torchvision's transforms move boxes and masks with the pixels.

# %%
image_dir, ann_file = data.val_paths()
dataset = data.CocoDataset(image_dir, ann_file)
image, target = dataset[0]
print(f"{len(dataset)} images, classes: {dataset.class_names[1:]}")
print("image:", type(image).__name__, tuple(image.shape), image.dtype)
for key, value in target.items():
    print(f"{key:>8}:", type(value).__name__, tuple(value.shape) if hasattr(value, "shape") else value)

# %% [markdown]
# The first six images with their ground truth, drawn by `viz.plot_detections`: each
# mask tinted in its class's colour, its box outlined, its class named above it. Look for
# the tiny shapes: 11 are only 10 to 16 pixels across. Where shapes overlap, the mask
# of the one underneath has a bite taken out of it, and its box covers only what is visible.

# %%
samples = [dataset[i] for i in range(6)]
across = torch.cat([(t["boxes"][:, 2:] - t["boxes"][:, :2]).amax(1) for _, t in samples])  # longer side, px
print(f"objects at most 16 px across: {int((across <= 16).sum())} of {len(across)}, the smallest {across.min():.0f} px")
assert int((across <= 16).sum()) == 11 and across.min() == 10
figure = Figure(figsize=(9.5, 6.8), dpi=80, layout="constrained")
for ax, (im, t) in zip(figure.subplots(2, 3).flat, samples):
    viz.plot_detections(ax, im, t, class_names=dataset.class_names,
                        title=f"image {t['image_id']}: ground truth, {len(t['labels'])} objects")
assert not viz.figure_problems(figure)
figure

# %% [markdown]
# ## 2. COCO format (`pycocotools.mask`, `fpnbook.boxes`)
#
# The annotation file is plain JSON with three lists. Each annotation gives its box as
# `[x, y, width, height]` (COCO's convention, which `fpnbook.boxes.xywh_to_xyxy` turns into
# ours), its area in pixels, and its mask as a run-length encoding: the lengths of
# alternating runs of 0s and 1s, read down the columns.

# %%
with open(ann_file) as f:
    coco_json = json.load(f)
print({key: len(value) for key, value in coco_json.items() if isinstance(value, list)})
annotation = coco_json["annotations"][0]
print({key: value for key, value in annotation.items() if key != "segmentation"})
print("segmentation:", annotation["segmentation"]["size"], annotation["segmentation"]["counts"][:40] + "...")

# %% [markdown]
# Decoding the RLE with `pycocotools.mask` gives the mask back; its pixel count is the
# annotation's area and its bounding box is the annotation's box. Every annotation in the
# split satisfies both.

# %%
mask = mask_utils.decode(annotation["segmentation"])
print("mask", mask.shape, "pixels:", int(mask.sum()), "| area:", annotation["area"])
print("box from mask:", mask_utils.toBbox(annotation["segmentation"]).tolist(), "| bbox:", annotation["bbox"])
for ann in coco_json["annotations"]:
    assert mask_utils.area(ann["segmentation"]) == ann["area"]
    assert mask_utils.toBbox(ann["segmentation"]).tolist() == ann["bbox"]

# %% [markdown]
# ### How big are the objects?
#
# COCO calls an object *small* below 32² pixels of area, *medium* up to 96², *large* above,
# and reports AP for each (APs, APm, APl). Those bounds are in absolute pixels, not
# relative to the image, so on our 256-pixel images they cut the objects as below: the
# histogram counts objects by the square root of their area, and the three shaded bands are
# COCO's size classes, each labelled with its share of the objects. Small objects are the
# ones a single coarse feature map loses, and chapter 2 is about them.

# %%
areas = np.array([a["area"] for a in coco_json["annotations"]])
shares = {name: float(np.mean(mask)) for name, mask in
          [("small", areas < 32**2), ("medium", (areas >= 32**2) & (areas < 96**2)), ("large", areas >= 96**2)]}
print({name: f"{share:.0%}" for name, share in shares.items()}, f"of {len(areas)} objects")
figure = Figure(figsize=(7, 3), dpi=80, layout="constrained")
ax = figure.subplots()
counts, _, _ = ax.hist(np.sqrt(areas), bins=np.geomspace(2, 256, 30), color="tab:blue", zorder=2)
top = counts.max() * 1.25
for (low, high), (name, share), shade in zip([(2, 32), (32, 96), (96, 256)], shares.items(), ("0.93", "0.85", "0.93")):
    ax.axvspan(low, high, color=shade, zorder=0)
    ax.text(np.sqrt(low * high), top * 0.97, f"{name}\n{share:.0%}", ha="center", va="top", fontsize=9)
ax.set(xscale="log", xlim=(2, 256), ylim=(0, top * 1.1), xlabel="sqrt(area) in pixels (COCO bounds at 32 and 96)",
       ylabel="objects", title="object sizes in the validation split")
ticks = [2, 4, 8, 16, 32, 64, 96, 128, 256]
ax.set_xticks(ticks, labels=[str(t) for t in ticks])
ax.minorticks_off()
assert not viz.figure_problems(figure)
figure

# %% [markdown]
# ## 3. How COCO AP works (`fpnbook.evaluate`)
#
# A detector outputs boxes with scores. To score it:
#
# 1. **IoU** decides whether a detection found an object: the area of the intersection of
#    the two boxes over the area of their union.
# 2. **Matching**, per image and class, in order of decreasing score: each detection takes
#    the unmatched ground truth it overlaps most, if that IoU reaches the threshold *t*;
#    otherwise it is a false positive.
# 3. **Precision and recall** along the ranked list of all detections: after the *n*
#    best-scored detections, precision = true positives / *n*, recall = true positives /
#    number of objects.
# 4. **AP at threshold t** is the area under that curve, made monotone (the precision at
#    recall *r* is the best precision at any recall ≥ *r*) and sampled at 101 recall points
#    0, 0.01, …, 1.
# 5. **COCO AP** averages AP over ten thresholds *t* = 0.50, 0.55, …, 0.95 (and over
#    classes). AP50 and AP75 are single thresholds. High thresholds reward precise boxes.
#
# First, IoU by hand on two boxes, against `fpnbook.boxes.box_iou`:

# %%
a = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
b = torch.tensor([[30.0, 20.0, 70.0, 60.0]])
inter = (50 - 30) * (40 - 20)
union = 40 * 30 + 40 * 40 - inter
print(f"by hand: {inter} / {union} = {inter / union:.4f} | fpnbook: {boxes.box_iou(a, b).item():.4f}")

# %% [markdown]
# Now a worked example. We take the ground truth of the first 16 validation images and
# invent a detector's output: each object is found with a box jittered by a few pixels
# (more for lower scores), some are missed, and some false alarms land on the
# background. The seed makes the invention repeatable.

# %%
generator = torch.Generator().manual_seed(0)
image_ids = dataset.image_ids[:16]
predictions = []
for image_id in image_ids:
    target = dataset[dataset.image_ids.index(image_id)][1]
    for box, label in zip(target["boxes"], target["labels"]):
        if torch.rand(1, generator=generator) < 0.15:
            continue  # missed
        score = torch.rand(1, generator=generator).item()
        size = (box[2:] - box[:2]).clamp(min=1)
        jitter = torch.randn(4, generator=generator) * 0.15 * (1.2 - score) * size.repeat(2)
        predictions.append({"image_id": image_id, "category_id": dataset.label_to_cat_id[int(label)],
                            "bbox": boxes.xyxy_to_xywh((box + jitter)[None])[0].tolist(), "score": score})
    for _ in range(2):  # false alarms
        xy = torch.rand(2, generator=generator) * 200
        predictions.append({"image_id": image_id, "category_id": int(torch.randint(1, 9, (1,), generator=generator)),
                            "bbox": [*xy.tolist(), 30.0, 30.0], "score": 0.5 * torch.rand(1, generator=generator).item()})
print(len(predictions), "detections for", sum(len(dataset.coco.getAnnIds(imgIds=[i])) for i in image_ids), "objects")


# %% [markdown]
# The whole computation, written out for one class at a time. It follows pycocotools step
# by step, leaving out only crowd regions (our data has none) and the area ranges.

# %%
def match(detections, truths, threshold):
    """Greedy matching in score order: True where a detection found an unmatched object."""
    if not truths or not detections:
        return [False] * len(detections)
    iou = boxes.box_iou(boxes.xywh_to_xyxy(torch.tensor([d["bbox"] for d in detections])),
                        boxes.xywh_to_xyxy(torch.tensor([t["bbox"] for t in truths], dtype=torch.float32)))
    taken, hits = set(), []
    for i in range(len(detections)):
        best, best_iou = None, threshold
        for j in range(len(truths)):
            if j not in taken and iou[i, j] >= best_iou:
                best, best_iou = j, iou[i, j]
        hits.append(best is not None)
        taken.add(best)
    return hits


def ranked_hits(category_id, threshold, max_dets=100):
    """All images' detections of one class in score order: hit or miss, and the object count."""
    scored, num_truths = [], 0
    for image_id in image_ids:
        truths = [a for a in coco_json["annotations"] if a["image_id"] == image_id and a["category_id"] == category_id]
        dets = [p for p in predictions if p["image_id"] == image_id and p["category_id"] == category_id]
        dets = sorted(dets, key=lambda p: -p["score"])[:max_dets]
        scored += [(d["score"], hit) for d, hit in zip(dets, match(dets, truths, threshold))]
        num_truths += len(truths)
    scored.sort(key=lambda s: -s[0])
    return np.array([hit for _, hit in scored], dtype=float), num_truths


def precision_recall(category_id, threshold):
    hits, num_truths = ranked_hits(category_id, threshold)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    return tp / max(num_truths, 1), tp / np.maximum(tp + fp, np.finfo(float).eps)


def average_precision(category_id, threshold):
    """AP of one class at one IoU threshold, with 101-point interpolation like COCO."""
    if ranked_hits(category_id, threshold)[1] == 0:
        return None  # COCO leaves a class with no objects out of the average
    recall, precision = precision_recall(category_id, threshold)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at any higher recall
    at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in at]))


thresholds = np.linspace(0.5, 0.95, 10)
per_threshold = []
for t in thresholds:
    aps = [average_precision(c, t) for c in sorted(dataset.cat_id_to_label)]
    per_threshold.append(np.mean([ap for ap in aps if ap is not None]))
by_hand = float(np.mean(per_threshold))
assert (np.diff(per_threshold) <= 0).all() and per_threshold[0] > 0.75 and per_threshold[-1] == 0
print("AP per IoU threshold:", " ".join(f"{t:.2f}:{ap:.3f}" for t, ap in zip(thresholds, per_threshold)))

# %% [markdown]
# AP falls as the threshold rises, from 0.77 at IoU 0.5 to 0 at 0.95: a jittered box
# still overlaps its object at IoU 0.5, rarely at 0.9. The same detections through pycocotools, via `fpnbook.evaluate`:

# %%
official = evaluate.coco_evaluate(dataset.coco, predictions, iou_types=("bbox",), image_ids=image_ids)["bbox"]
print(f"by hand: AP {by_hand:.4f}  AP50 {per_threshold[0]:.4f}  AP75 {per_threshold[5]:.4f}")
print(f"pycocotools: AP {official['AP']:.4f}  AP50 {official['AP50']:.4f}  AP75 {official['AP75']:.4f}")
assert abs(by_hand - official["AP"]) < 1e-9
assert abs(per_threshold[0] - official["AP50"]) < 1e-9 and abs(per_threshold[5] - official["AP75"]) < 1e-9

# %% [markdown]
# The precision-recall curves behind those numbers, for one class at three thresholds
# (solid), and the monotone envelope AP is computed from (dashed): at each recall, the
# best precision at that recall or any higher one. The area under each envelope, sampled
# at 101 recalls, is that threshold's AP; the figure shows the curves dropping and ending
# earlier as the threshold rises.

# %%
category = 1
figure = Figure(figsize=(8, 3.5), dpi=80, layout="constrained")
ax = figure.subplots()
for i, t in enumerate((0.5, 0.75, 0.9)):
    recall, precision = precision_recall(category, t)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    assert (envelope >= precision).all() and (np.diff(envelope) <= 0).all()
    ax.step(recall, precision, where="post", color=f"C{i}", label=f"IoU {t}: AP {average_precision(category, t):.2f}")
    ax.step(recall, envelope, where="post", color=f"C{i}", ls="--", lw=1)
styles = [Line2D([], [], color="k", lw=1.5), Line2D([], [], color="k", ls="--", lw=1)]
handles = ax.get_legend_handles_labels()[0] + styles
ax.legend(handles, [h.get_label() for h in handles[:3]] + ["precision (solid)", "its envelope (dashed)"],
          loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.05),
       title=f"precision-recall of class '{dataset.class_names[dataset.cat_id_to_label[category]]}'")
assert not viz.figure_problems(figure)
figure

# %% [markdown]
# ## What comes next
#
# Chapter 1 puts a two-stage detector together at a glance, from the image to the scored
# boxes, and then builds by hand the four pieces every later chapter uses: box coding
# (`BoxCoder`), labelling anchors positive, negative or ignored by their IoU (`Matcher`),
# sampling a balanced set of them, and non-maximum suppression, each checked against
# torchvision. The rest of the book follows the papers' parts in the order a detector uses
# them:
#
# | chapter | builds | paper |
# |---|---|---|
# | 1 | the detection pipeline: box coding, anchor labelling, sampling, NMS | the parts all four share |
# | 2 | feature pyramids and the region proposal network | FPN |
# | 3 | the focal loss and RetinaNet | focal loss |
# | 4 | RoIPool against RoIAlign | Mask R-CNN |
# | 5 | the second stage: box head, mask branch | Mask R-CNN |
# | 6 | masks for classes trained without any, by weight transfer | Learning to Segment Every Thing |
# | 7 | the assembled detectors, and your own data | all four |
# | A | training on a laptop: the recipe, profiling, time to AP | |
# | B | how the numbers were made: commands, seeds, per-seed rows | |
#
# From chapter 2 on, every table in the book comes from `evaluate.coco_evaluate`, the
# function we just checked.

# %% [markdown]
# ## Exercises (`fpnbook.exercises`)
#
# `exercises.check(name, answer)` checks an answer: a number within a tolerance, or your
# function against the library's on random and edge cases, printing pass or the first
# failing case with both answers. Replace each `None` or `raise NotImplementedError`, then
# run the cell again. The solutions are in `fpnbook/solutions.py`; look after trying.
#
# 1. **Derive.** The IoU of the boxes (0, 0, 10, 10) and (5, 5, 15, 15), XYXY pixels.
# 2. **Implement.** `box_area(boxes)`: Tensor[N, 4] XYXY -> Tensor[N] areas (what
#    `fpnbook.boxes.box_area` computes).
# 3. **Implement.** `xywh_to_xyxy(boxes)`: COCO's (x, y, w, h) -> (x1, y1, x2, y2).
# 4. **Predict, then run.** Halve every detection's score in section 3 and score them
#    again with `evaluate.coco_evaluate`. Does the AP change? Why (or why not)?

# %%
from fpnbook import exercises

exercises.check("ch0.iou", None)  # your number in place of None


def my_box_area(boxes: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


def my_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError  # your code here


exercises.check("ch0.box_area", my_box_area)
_ = exercises.check("ch0.xywh_to_xyxy", my_xywh_to_xyxy)
