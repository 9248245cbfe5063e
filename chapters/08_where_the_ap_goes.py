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
# # 8. Where the AP goes: per-class AP, precision-recall curves, the errors that cost AP, and a prediction browser
#
# `python -m fpnbook eval` ends in twelve COCO numbers (chapter 0). They say *how much*
# AP a model has, not *where* it loses the rest: which classes, which kind of mistake,
# which objects, each with its own remedy. This chapter takes chapter 7's shipped Mask
# R-CNN and RetinaNet apart on the validation split, so that you can do the same to your
# own model and say what to fix first:
#
# 1. **AP per class**: which classes are weak.
# 2. **Precision-recall curves per class**: where, along the ranked detections, precision collapses.
# 3. **TIDE's six error types**, each built by hand on a tiny example and checked against `fpnbook.analysis`.
# 4. **The shipped models' error breakdown**: which type costs most, and what one would try for it.
# 5. **The confusion matrix**: which class is taken for which, and at what object size.
# 6. **A prediction browser**: ground truth beside predictions, each coloured by its error.
#
# From a terminal: `python -m fpnbook eval --checkpoint CKPT --analyse DIR`.

# %% [markdown]
# **Papers.** [TIDE: A General Toolbox for Identifying Object Detection Errors](https://arxiv.org/abs/2008.08115)
# (Bolya et al., ECCV 2020), Sec. 2 and 3 (the error types and dAP); the
# [COCO paper](https://arxiv.org/abs/1405.0312) (AP and its precision-recall curves); the
# models are those of [Mask R-CNN](https://arxiv.org/abs/1703.06870) and
# [RetinaNet](https://arxiv.org/abs/1708.02002).

# %%
# %matplotlib inline
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torchvision.ops import box_iou, nms

import fpnbook
from fpnbook import analysis, data, train, viz
from fpnbook.boxes import xywh_to_xyxy
from fpnbook.checkpoint import load_model
from fpnbook.evaluate import coco_evaluate, coco_from_dict, format_table, to_coco_results
from fpnbook.widgets.predictions import browser_figure, browser_state, prediction_browser

torch.set_num_threads(2)
CHECKPOINTS = Path(fpnbook.__file__).resolve().parents[1] / "checkpoints"
val_set = data.CocoDataset(*data.val_paths())
names = val_set.class_names  # names[label], label 1..8; category id == label here
print("fpnbook", fpnbook.__version__, "| torch", torch.__version__)
outputs, results, scores = {}, {}, {}
for name in ("mask_rcnn", "retinanet"):
    model, _ = load_model(CHECKPOINTS / f"{name}.pt")
    outputs[name] = train.predict(model, val_set, device="cpu")  # up to 100 detections per image, score >= 0.05
    results[name] = to_coco_results(outputs[name], val_set.image_ids, val_set.label_to_cat_id)
    scores[name] = coco_evaluate(val_set.coco, results[name], iou_types=("bbox", "segm") if name == "mask_rcnn" else ("bbox",))
    print(f"\n{name} on {len(val_set)} validation images, {len(results[name])} detections:")
    print(format_table(scores[name]))
assert all(len(stats) == 12 for r in scores.values() for stats in r.values())
assert all(i + 1 == val_set.label_to_cat_id[i + 1] for i in range(len(names) - 1))
assert (round(scores["mask_rcnn"]["bbox"]["AP"], 3), round(scores["retinanet"]["bbox"]["AP"], 3)) == (0.640, 0.559)

# %% [markdown]
# Twelve numbers per model and IoU type: Mask R-CNN's box AP is 0.640 and RetinaNet's
# 0.559. Neither says whether the missing AP is lost on one class or on all, on small
# objects or large, on boxes in the wrong place or boxes with the wrong name.

# %% [markdown]
# ## 1. AP per class (`fpnbook.analysis.analyse`)
#
# COCO's AP is a **mean over classes** of each class's AP (itself a mean over the ten IoU
# thresholds 0.5:0.95 of the area under its precision-recall curve, chapter 0). pycocotools
# computes the per-class numbers anyway and throws them away; `analysis.analyse` reads them
# back from its `eval["precision"]` array, so they average exactly to the table above.
# By hand first: one class's AP from the detections, with chapter 0's recipe (greedy
# matching, highest score first; the precision envelope sampled at 101 recalls).

# %%
RECALLS, IOUS = np.linspace(0, 1, 101), np.linspace(0.5, 0.95, 10)  # pycocotools' recall points and IoU thresholds
objects_of = {i: val_set.coco.imgToAnns[i] for i in val_set.image_ids}


def xyxy(items) -> torch.Tensor:
    return xywh_to_xyxy(torch.tensor([item["bbox"] for item in items], dtype=torch.float64).reshape(-1, 4))


def precision_by_hand(found: list, category: int, threshold: float) -> np.ndarray:
    """pycocotools' interpolated precision at the 101 recalls, for one class, boxes, all sizes."""
    ranked, total = [], 0
    for image_id in sorted(val_set.image_ids):
        truths = [a for a in objects_of[image_id] if a["category_id"] == category]
        dets = sorted((p for p in found if p["image_id"] == image_id and p["category_id"] == category), key=lambda p: -p["score"])
        iou = box_iou(xyxy(dets), xyxy(truths)).numpy()
        taken = np.zeros(len(truths), dtype=bool)
        for d, det in enumerate(dets):  # the free object it overlaps most, if IoU >= threshold
            free = np.where(taken, -1.0, iou[d])
            hit = len(truths) > 0 and free.max() >= threshold
            if hit:
                taken[free.argmax()] = True
            ranked.append((det["score"], hit))
        total += len(truths)
    hits = np.array([hit for _, hit in sorted(ranked, key=lambda r: -r[0])], dtype=float)  # stable, as pycocotools
    recall, precision = np.cumsum(hits) / total, np.cumsum(hits) / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALLS, side="left")
    return np.array([envelope[i] if i < len(envelope) else 0.0 for i in at])


found = {"mask_rcnn": analysis.analyse(val_set.coco, results["mask_rcnn"]),
         "retinanet": analysis.analyse(val_set.coco, results["retinanet"], ("bbox",))}
box, mask, retina = found["mask_rcnn"]["bbox"], found["mask_rcnn"]["segm"], found["retinanet"]["bbox"]
HEXAGON = names.index("hexagon")
row = box.per_category[HEXAGON - 1]
hexagon_ap = np.mean([precision_by_hand(results["mask_rcnn"], HEXAGON, t).mean() for t in IOUS])
print(f"hexagon box AP by hand {hexagon_ap:.6f} | analysis {row['AP']:.6f}")
assert abs(hexagon_ap - row["AP"]) < 1e-12
for a in (box, mask, retina):  # the mean over classes is COCO's AP
    assert abs(np.mean([r["AP"] for r in a.per_category]) - a.stats["AP"]) < 1e-12
print(analysis.format_category_table(found["mask_rcnn"]))
ranking = {key: sorted(a.per_category, key=lambda r: r["AP"]) for key, a in (("box", box), ("mask", mask), ("retina", retina))}
print("\nweakest classes:", {k: [(r["name"], round(r["AP"], 3)) for r in v[:2]] for k, v in ranking.items()})
assert ranking["box"][0]["name"] == ranking["retina"][0]["name"] == "hexagon"
assert {r["name"] for r in ranking["mask"][:2]} == {"hexagon", "crescent"} and ranking["box"][-1]["name"] == "ring"
crescent = {a.name: a.per_category[names.index("crescent") - 1] for a in (box, mask)}
assert [round(r["AP"], 3) for r in (ranking["box"][0], ranking["box"][1], ranking["box"][-1], ranking["retina"][0])] == [0.386, 0.585, 0.779, 0.383]
assert (round(crescent["mask"]["AP"], 3), round(crescent["box"]["AP"], 3)) == (0.370, 0.653)
figure = analysis.plot_category_ap({"bbox": box, "segm": mask, "retina": retina})
ax = figure.axes[0]
for text, label in zip(ax.get_legend().get_texts(), ("Mask R-CNN box", "Mask R-CNN mask", "RetinaNet box")):
    text.set_text(f"{label} {text.get_text().split(' ', 1)[1]}")
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# The bars show each class's AP for the three. One class stands out in every model:
# **hexagon**, box AP 0.386 for Mask R-CNN against 0.585 for the next weakest class (star)
# and 0.779 for the best (ring); RetinaNet's hexagon (0.383) is its weakest too. The masks
# add a second weak class, **crescent**: mask AP 0.370 where its box AP is 0.653.

# %% [markdown]
# ## 2. Precision-recall curves per class (`Analysis.precision`, `analysis.plot_pr_curves`)
#
# A class's AP is the area under its precision-recall curve, and the curve's shape tells
# *how* the area was lost. Walk down the detections of one class, best score first: a
# curve that **starts low** means confident detections that are wrong (false positives
# ranked above the true ones); a curve that **ends early** (before recall 1) means objects
# that no detection of that class ever found; a curve that drops from IoU 0.5 to 0.75
# means boxes found but poorly placed. `analyse` keeps pycocotools' curves at IoU 0.5 and
# 0.75, per class and object size; first, the hexagon's by hand, as in section 1.

# %%
assert all(np.abs(precision_by_hand(results["mask_rcnn"], HEXAGON, iou) - box.precision[t, :, HEXAGON - 1, 0]).max() < 1e-12
           for t, iou in enumerate(analysis.PR_IOUS))
print("hexagon's curves at IoU 0.5 and 0.75 by hand == analysis (101 recalls each)")
box_shape = {}  # per class: the recall up to which precision stays >= 0.9, and the last recall reached
for t, iou in enumerate(analysis.PR_IOUS):
    p = box.precision[t, :, :, 0]  # [101 recalls, 8 classes], non-increasing along recall
    box_shape[iou] = {name: (box.recall[p[:, k] >= 0.9].max(initial=0.0), box.recall[p[:, k] > 0].max())
                      for k, (_, name) in enumerate(box.categories)}
print(f"{'class':<9}{'precision >= 0.9 up to recall':>31}{'last recall':>22}\n{'':<9}{'IoU 0.5':>18}{'IoU 0.75':>13}{'IoU 0.5':>13}{'IoU 0.75':>9}")
for name in names[1:]:
    (h5, e5), (h75, e75) = box_shape[0.5][name], box_shape[0.75][name]
    print(f"{name:<9}{h5:18.2f}{h75:13.2f}{e5:13.2f}{e75:9.2f}")
assert min(names[1:], key=lambda n: box_shape[0.5][n][0]) == "hexagon" and box_shape[0.5]["hexagon"][1] == 1.0
assert [box_shape[0.5][n][0] for n in ("hexagon", "circle", "ring")] == [0.08, 0.28, 0.9]
assert [box_shape[0.5][n][1] for n in ("square", "star")] == [0.89, 0.88] and box_shape[0.75]["star"][1] == 0.71
assert max(names[1:], key=lambda n: box_shape[0.5][n][1] - box_shape[0.75][n][1]) == "star"
figure = analysis.plot_pr_curves(box)
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# The hexagon's curve collapses at the very start: its precision holds 0.9 only up to
# recall 0.08, yet it ends at recall 1.0, so every hexagon is found by *some* hexagon box,
# and the AP is lost to confident hexagon boxes on things that are not hexagons. The
# circle's (0.28) starts low for the same reason; the ring's holds 0.9 to recall 0.90.
# Square and star end early (recall 0.89 and 0.88): objects no box of their class finds.
# From IoU 0.5 (left) to 0.75 (right) most curves keep their shape; the star's loses most
# (its last recall falls from 0.88 to 0.71). For masks, the crescent is the class whose
# curve falls from IoU 0.5 to 0.75, its mask AP50 against AP75:

# %%
gaps = {r["name"]: r["AP50"] - r["AP75"] for r in mask.per_category}
print(", ".join(f"crescent {k} AP50 {r['AP50']:.3f}, AP75 {r['AP75']:.3f}" for k, r in crescent.items()))
assert max(gaps, key=gaps.get) == "crescent" and gaps["crescent"] > 0.45
assert [round(crescent["mask"]["AP75"], 3), round(crescent["mask"]["AP50"], 3), round(crescent["box"]["AP75"], 3)] == [0.278, 0.787, 0.791]
figure = analysis.plot_pr_curves(mask)
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# The crescent's mask curve at IoU 0.75 (right) falls early: AP75 0.278 against 0.787 at
# IoU 0.5, the largest drop of any class, while its boxes hold (AP75 0.791): the crescent's
# mask, not its box, is placed poorly.

# %% [markdown]
# ## 3. TIDE's six error types, by hand (`fpnbook.analysis.error_breakdown`)
#
# A curve shows *that* confident detections are wrong, not *how*. TIDE (Bolya et al.)
# gives every detection that is not a true positive at IoU 0.5 one of five types, trying
# them in this order against the image's objects, and every object nothing found the sixth:
#
# - **localisation**: right class, but placed poorly (best IoU with an object of its class between 0.1 and 0.5);
# - **classification**: placed well (IoU >= 0.5) on an object of *another* class;
# - **duplicate**: right class and well placed, but its object was already taken by a better-scored detection;
# - **background**: on nothing (IoU <= 0.1 with every object);
# - **both**: wrong class *and* poorly placed (anything else);
# - **missed**: an object that no detection covers, not even a wrong one.
#
# The cost of a type, its **dAP**, is how much AP at IoU 0.5 would rise if that type
# alone were fixed: a classification or localisation error becomes a true positive when
# its object has none yet (only the best-scored such error per object), and is dropped
# otherwise; duplicate, background and "both" detections are dropped; a missed object
# leaves the count of objects. AP here is TIDE's: the mean over classes of the 101-point
# AP at IoU 0.5.
#
# One example per type, built by hand: an image with two circles and a hexagon, found by
# three perfect detections (circles 0.9 and 0.8, hexagon 0.9), then one change per type.
# The figure draws each: the objects dashed in black, the detections coloured by their
# kind as `error_breakdown` gives it (green: true positive; the error's label below its box).

# %%
W = 110
OBJECTS = [(1, [8, 8, 38, 38]), (1, [62, 62, 92, 92]), (5, [62, 10, 92, 36])]  # (category, x1 y1 x2 y2)
PERFECT = [(1, [8, 8, 38, 38], 0.9), (1, [62, 62, 92, 92], 0.8), (5, [62, 10, 92, 36], 0.9)]
CASES = {  # each: the perfect detections, changed as named
    "classification": PERFECT + [(5, [8, 8, 38, 38], 0.95)],        # a hexagon box on the first circle
    "localisation": PERFECT[:1] + [(1, [77, 62, 107, 92], 0.8)] + PERFECT[2:],  # the second circle's box shifted 15 px
    "both": PERFECT + [(5, [23, 8, 53, 38], 0.95)],                  # a hexagon box half off the first circle
    "duplicate": PERFECT + [(1, [8, 8, 38, 38], 0.85)],              # the first circle boxed twice
    "background": PERFECT + [(5, [8, 66, 30, 88], 0.95)],            # a hexagon box on nothing
    "missed": PERFECT[:1] + PERFECT[2:],                             # no box on the second circle
}


def ap_of_class(hits: list, objects: int) -> float:
    """101-point AP of one class from its detections' hits in score order (0 if it has no objects)."""
    if not objects or not hits:
        return 0.0
    tp = np.cumsum(hits)
    precision = np.maximum.accumulate((tp / np.arange(1, len(hits) + 1))[::-1])[::-1]
    at = np.searchsorted(tp / objects, RECALLS, side="left")
    return float(np.mean([precision[i] if i < len(hits) else 0.0 for i in at]))


def tide_by_hand(dets: list, objects: list = OBJECTS) -> tuple[list, float, dict]:
    """(each detection's type, AP50, {type: dAP}) on the one-image example; dets are (category, box, score)."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i][2])
    iou = box_iou(torch.tensor([d[1] for d in dets], dtype=torch.float64), torch.tensor([o[1] for o in objects], dtype=torch.float64)).numpy()
    same = np.array([[d[0] == o[0] for o in objects] for d in dets])
    taken, kinds, target = np.zeros(len(objects), dtype=bool), ["correct"] * len(dets), {}
    for i in order:  # true positives: greedily, best score first
        free = np.where(same[i] & ~taken, iou[i], 0)
        if free.max() >= 0.5:
            taken[free.argmax()] = True
            continue
        own, other = np.where(same[i], iou[i], 0), np.where(same[i], 0, iou[i])
        if 0.1 <= own.max() <= 0.5:
            kinds[i], target[i] = "localisation", own.argmax()
        elif other.max() >= 0.5:
            kinds[i], target[i] = "classification", other.argmax()
        elif np.where(taken, own, 0).max() >= 0.5:
            kinds[i] = "duplicate"
        else:
            kinds[i] = "background" if iou[i].max() <= 0.1 else "both"
    missed = [j for j in range(len(objects)) if not taken[j] and j not in target.values()]

    def ap(fix=None) -> float:
        classes, per_class = {o[0] for o in objects} | {d[0] for d in dets}, []
        for c in sorted(classes):
            hits = []
            for i in order:  # a fixed error: a true positive of its object's class if that object is free, else gone
                if kinds[i] == fix:
                    hits += [1] if i in target and not taken[target[i]] and objects[target[i]][0] == c else []
                elif dets[i][0] == c:
                    hits.append(int(kinds[i] == "correct"))
            n = sum(o[0] == c for j, o in enumerate(objects) if not (fix == "missed" and j in missed))
            if n or hits:
                per_class.append(ap_of_class(hits, n))
        return float(np.mean(per_class))

    return kinds, ap(), {t: ap(t) - ap() for t in analysis.ERROR_TYPES}


gt = coco_from_dict({"images": [{"id": 1, "file_name": "toy.png", "height": W, "width": W}],
                     "categories": [{"id": 1, "name": "circle"}, {"id": 5, "name": "hexagon"}],
                     "annotations": [{"id": j + 1, "image_id": 1, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": (x2 - x1) * (y2 - y1), "iscrowd": 0} for j, (c, (x1, y1, x2, y2)) in enumerate(OBJECTS)]})
toy = {}
for case, dets in CASES.items():
    kinds, ap50, dap = tide_by_hand(dets)
    library = analysis.error_breakdown(gt, [{"image_id": 1, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
                                            for c, (x1, y1, x2, y2), s in dets])
    assert kinds == library["prediction_kinds"] and abs(ap50 - library["ap"]) < 1e-12
    assert all(abs(dap[t] - library["dap"][t]) < 1e-12 for t in analysis.ERROR_TYPES)
    assert max(dap, key=dap.get) == case and sum(v > 1e-12 for v in dap.values()) == 1  # one type, by design
    toy[case] = (kinds, ap50, dap[case])
    print(f"{case:<15} AP50 {ap50:.4f}  dAP {dap[case]:.4f}  (by hand == error_breakdown)")
assert [round(toy[case][2], 3) for case in CASES] == [0.25, 0.248, 0.25, 0.083, 0.25, 0.248]
figure = Figure(figsize=(9, 6.6), dpi=80, layout="constrained")
for ax, (case, dets) in zip(figure.subplots(2, 3).flat, CASES.items()):
    kinds, ap50, dap = toy[case]
    for c, (x1, y1, x2, y2) in OBJECTS:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=case == "missed" and y1 == 62, ls="--", lw=1.5,
                               edgecolor="black", facecolor=analysis.KIND_COLOURS["missed"]))
        ax.text(x1 + 2, y2 - 2, names[c], fontsize=9)
    for (c, (x1, y1, x2, y2), s), kind in zip(dets, kinds):  # the correct ones above their box, the error below it
        colour, wrong = analysis.KIND_COLOURS[kind], kind != "correct"
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=3 if wrong else 1.5, color=colour))
        ax.text(x1 if x1 < 70 else x2, y2 + 1 if wrong else y1 - 1, f"{names[c]} {s:.2f}", fontsize=9, color=colour,
                ha="left" if x1 < 70 else "right", va="top" if wrong else "bottom", fontweight="bold" if wrong else "normal")
    ax.set_facecolor("0.94")
    ax.set(xlim=(0, W), ylim=(W, -6), xticks=[], yticks=[])
    ax.set_title(f"{case}: AP50 {ap50:.3f}, dAP {dap:.3f}", fontsize=10)
figure.legend(handles=[Patch(fill=False, ls="--", edgecolor="black", label="object"),
                       *analysis.legend_handles(("correct", *analysis.ERROR_TYPES[:5])),
                       Patch(facecolor=analysis.KIND_COLOURS["missed"], edgecolor="black", ls="--", label="missed object")],
              loc="outside lower center", ncol=4, fontsize=9)
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# Two kinds of cost show. A wrong detection ranked *above* a right one of its class
# (classification, both, background: a hexagon box at 0.95 above the real hexagon's 0.9)
# halves that class's precision and costs 0.250; the duplicate, ranked between the two
# circles, costs less (0.083). A missed object, or one found only by a misplaced box,
# caps the recall of its class at 1/2 and costs 0.248; fixing the misplaced box turns it
# into the true positive the circle lacks. `error_breakdown` gives the same types and the
# same dAPs as the hand version in every case.

# %% [markdown]
# ## 4. Where the shipped models lose AP (`analysis.plot_errors`)
#
# The same breakdown on the validation split, for Mask R-CNN's boxes and masks and
# RetinaNet's boxes.

# %%
breakdowns = {"Mask R-CNN box": box, "Mask R-CNN mask": mask, "RetinaNet box": retina}
print(f"{'':20}{'AP50':>7}" + "".join(f"{analysis.SHORT_NAMES[t]:>7}" for t in analysis.ERROR_TYPES))
for label, a in breakdowns.items():
    e = a.errors
    print(f"{label + ' dAP':20}{e['ap']:7.3f}" + "".join(f"{e['dap'][t]:7.3f}" for t in analysis.ERROR_TYPES))
    print(f"{'  how many':20}{'':7}" + "".join(f"{e['counts'][t]:7d}" for t in analysis.ERROR_TYPES))
    assert max(e["dap"], key=e["dap"].get) == "classification" and abs(e["ap"] - a.stats["AP50"]) < 1e-3
assert mask.errors["dap"]["localisation"] > 3 * box.errors["dap"]["localisation"]
assert [round(box.errors["ap"], 3)] + [round(a.errors["dap"][t], 3) for a, t in ((box, "classification"), (box, "missed"),
        (mask, "localisation"), (box, "localisation"))] == [0.797, 0.125, 0.020, 0.028, 0.007]
figure = analysis.plot_errors(breakdowns)
for ax, label in zip(figure.axes, breakdowns):
    ax.set_title(f"{label}\nAP50 {breakdowns[label].errors['ap']:.3f}", fontsize=10)
    ax.set_xlabel("dAP", fontsize=9)
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# **Classification costs most, in every model and far ahead of the rest**: fixing it alone
# would raise Mask R-CNN's box AP50 by 0.125, from 0.797; missed objects come a distant
# second for boxes (0.020), localisation for masks (0.028, about four times the boxes'
# 0.007). Where do the 583 classification errors of the boxes sit? On objects that
# a right box *already* found, or on objects that only a wrong box found?

# %%
status, kinds = box.errors["object_status"], box.errors["prediction_kinds"]
mr = results["mask_rcnn"]
on_found = []
for i, p in enumerate(mr):
    if kinds[i] == "classification":  # the object of another class it covers best
        others = [a for a in objects_of[p["image_id"]] if a["category_id"] != p["category_id"]]
        j = int(box_iou(xyxy([p]), xyxy(others))[0].argmax())
        if status[others[j]["id"]] == "detected":
            on_found.append(i)
without = analysis.error_breakdown(val_set.coco, [p for i, p in enumerate(mr) if i not in set(on_found)])
print(f"classification errors on objects a right-class box found: {len(on_found)} of {kinds.count('classification')}")
print(f"AP50 {box.errors['ap']:.3f} -> {without['ap']:.3f} with only those removed "
      f"(+{without['ap'] - box.errors['ap']:.3f} of the {box.errors['dap']['classification']:.3f})")
assert (len(on_found), kinds.count("classification"), round(without["ap"] - box.errors["ap"], 3)) == (576, 583, 0.113)

# %% [markdown]
# Nearly all of them (576 of 583) are **second opinions**: a box of another class on an
# object that a box of the right class also covers, and removing just those gives back
# 0.113 of the 0.125. Mask R-CNN suppresses duplicates per class (chapter 1), so a circle
# can come out as a circle *and* as a hexagon. Why not suppress across classes, then? Try
# it: one NMS over all classes at IoU 0.5, on the same detections.

# %%
agnostic = [{k: v[nms(o["boxes"], o["scores"], 0.5)] for k, v in o.items()} for o in outputs["mask_rcnn"]]
after = coco_evaluate(val_set.coco, to_coco_results(agnostic, val_set.image_ids, val_set.label_to_cat_id), iou_types=("bbox",))["bbox"]
both_kinds = wrong_first = lost = 0
for i, o in enumerate(outputs["mask_rcnn"]):
    truths = val_set.coco.imgToAnns[val_set.image_ids[i]]
    iou = box_iou(xyxy(truths).float(), o["boxes"]) >= 0.5
    kept = torch.isin(torch.arange(len(o["scores"])), nms(o["boxes"], o["scores"], 0.5))
    for j, a in enumerate(truths):
        right, wrong = iou[j] & (o["labels"] == a["category_id"]), iou[j] & (o["labels"] != a["category_id"])
        if right.any() and wrong.any():
            both_kinds += 1
            wrong_first += bool(o["scores"][wrong].max() > o["scores"][right].max())
            lost += not (right & kept).any()
print(f"box AP50 {scores['mask_rcnn']['bbox']['AP50']:.3f} -> {after['AP50']:.3f} with one NMS over all classes "
      f"(AP {scores['mask_rcnn']['bbox']['AP']:.3f} -> {after['AP']:.3f})")
print(f"objects with boxes of both kinds: {both_kinds}; the wrong class scored higher on {wrong_first}; "
      f"NMS over all classes removed every right-class box of {lost}")
assert (round(after["AP50"], 3), both_kinds, wrong_first) == (0.704, 232, 50) and lost > 40

# %% [markdown]
# It costs AP instead (AP50 0.797 to 0.704): on 50 of the 232 objects that carry boxes of
# both kinds, the wrong class scores higher, so one NMS over all classes keeps the wrong
# box and deletes the right one. TIDE's fix is an oracle that knows which box is wrong; a
# model has to learn it. What one would try for the three largest costs (not measured here):
#
# - **classification**: a better box classifier: the paper's wider box head (fc 1024, here
#   256), larger RoIs, or more training (chapter 7's curves still rose at the end);
# - **missed** (boxes): anchors smaller than 16 px on P2 or more proposals per level, as
#   most missed objects are that small (section 5 measures it);
# - **localisation** (masks): a finer mask (56×56, not 28×28) or the paper's 256-channel mask head (here 64).

# %% [markdown]
# ## 5. Which class is taken for which (`fpnbook.analysis.confusion_matrix`)
#
# The confusion matrix names the classes behind the classification errors. Each detection
# with score >= 0.5 adds one to a cell: its row is the class of the object it covers
# (IoU >= 0.5; its own class if it covers one of those, else the object it overlaps most;
# *background* if none), its column the class it predicted. An object that no box of its
# class covers adds one to its row's *background* column. By hand, then the library:

# %%
SCORE = 0.5
K = len(names) - 1
matrix = np.zeros((K + 1, K + 1), dtype=np.int64)  # row: object's class, column: predicted; index K: background
for i, o in enumerate(outputs["mask_rcnn"]):
    truths = val_set.coco.imgToAnns[val_set.image_ids[i]]
    classes = np.array([a["category_id"] - 1 for a in truths], dtype=np.int64)
    iou = box_iou(o["boxes"].double(), xyxy(truths)).numpy()
    hit = np.zeros(len(truths), dtype=bool)
    for d in np.flatnonzero(o["scores"].numpy() >= SCORE):
        column, covers = int(o["labels"][d]) - 1, iou[d] >= 0.5
        own = covers & (classes == column)
        hit |= own
        row = column if own.any() else classes[iou[d].argmax()] if covers.any() else K
        matrix[row, column] += 1
    np.add.at(matrix, (classes[~hit], K), 1)
assert (matrix == box.confusion).all()
print("by hand == analysis.confusion_matrix; largest off-diagonal cells (object's class -> predicted class):")
top = sorted([(int(matrix[r, c]), names[r + 1], names[c + 1]) for r in range(K) for c in range(K) if r != c], reverse=True)[:4]
print("\n".join(f"  {truth:>8} -> {said:<8} {n:3d} boxes" for n, truth, said in top))
assert top[0][1:] == ("circle", "hexagon") and {t[1:] for t in top[1:4]} == {("star", "cross"), ("cross", "star"), ("hexagon", "square")}
assert [matrix[r - 1, c - 1] for r, c in ((1, 5), (5, 2), (5, 1), (4, 6), (6, 4))] == [22, 10, 9, 9, 11]
figure = analysis.plot_confusion(box)
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# The largest cell off the diagonal is circles boxed as hexagons (22 boxes); hexagons are
# in turn called squares (10) and circles (9), and stars and crosses are taken for each
# other (9 and 11). That is the hexagon's collapsed curve of section 2: most confident
# hexagon boxes sit on circles. Does the confusion come from objects too small to tell
# apart? Each object, by its size (the square root of its box area), at score >= 0.5: is
# it found by a box of its class, only by boxes of other classes, or by nothing? And the
# objects that TIDE counts as missed (nothing covers them at any score): how big are they?

# %%
BINS = [(0, 16), (16, 32), (32, 64), (64, 256)]
per_object = []  # (size, right-class box, wrong-class boxes, class, the wrong classes)
for i, o in enumerate(outputs["mask_rcnn"]):
    keep = o["scores"] >= SCORE
    truths = val_set.coco.imgToAnns[val_set.image_ids[i]]
    iou = box_iou(xyxy(truths).float(), o["boxes"][keep]) >= 0.5
    for j, a in enumerate(truths):
        same = o["labels"][keep] == a["category_id"]
        said = set(o["labels"][keep][iou[j] & ~same].tolist())
        per_object.append((np.sqrt(a["bbox"][2] * a["bbox"][3]), bool((iou[j] & same).any()), int((iou[j] & ~same).sum()), a["category_id"], said))
size, right, wrong, cls = map(np.array, list(zip(*per_object))[:4])
shares = {}
for lo, hi in [*BINS, (16, 256)]:
    s = (size >= lo) & (size < hi)
    shares[lo, hi] = {"objects": int(s.sum()), "right class": right[s].mean(), "only other classes": (~right & (wrong > 0))[s].mean(),
                      "nothing": (~right & (wrong == 0))[s].mean(), "any other class": (wrong > 0)[s].mean()}
    print(f"{lo:>3}-{hi:<3} px: " + ", ".join(f"{k} {v:.0%}" if k != "objects" else f"{v:3d} objects" for k, v in shares[lo, hi].items()))
small, large = shares[0, 16], shares[16, 256]
circles = [names.index("hexagon") in o[4] for o in per_object if o[3] == names.index("circle")]
small_circles = [o[0] < 16 for o in per_object if o[3] == names.index("circle")]
pair = [(sum(h for h, sm in zip(circles, small_circles) if sm == want), sum(sm == want for sm in small_circles)) for want in (True, False)]
missed = sorted(round(np.sqrt(a["bbox"][2] * a["bbox"][3])) for a in val_set.coco.dataset["annotations"] if status[a["id"]] == "missed")
print(f"circles with a hexagon box: {'%d of %d' % pair[0]} under 16 px, {'%d of %d' % pair[1]} larger")
print(f"the {len(missed)} objects TIDE counts as missed measure {missed} px")
assert [round(small[k], 2) for k in ("only other classes", "nothing", "any other class")] == [0.12, 0.25, 0.24]
assert [round(large[k], 2) for k in ("only other classes", "nothing", "any other class")] == [0.04, 0.07, 0.38]
assert pair == [(3, 7), (19, 32)] and (sum(m < 16 for m in missed), len(missed)) == (4, 7)

figure = Figure(figsize=(9, 3.2), dpi=90, layout="constrained")
ax = figure.subplots()
left = np.zeros(len(BINS))
for key, colour in (("right class", analysis.KIND_COLOURS["correct"]), ("only other classes", analysis.KIND_COLOURS["classification"]),
                    ("nothing", analysis.KIND_COLOURS["missed"])):
    values = np.array([shares[b][key] for b in BINS])
    bars = ax.barh(range(len(BINS)), values, left=left, color=colour, label=key)
    ax.bar_label(bars, labels=[f"{v:.0%}" if v > 0.03 else "" for v in values], label_type="center", fontsize=9)
    left += values
ax.set_yticks(range(len(BINS)), [f"{lo}-{hi} px ({shares[lo, hi]['objects']})" for lo, hi in BINS])
ax.set(xlim=(0, 1), xlabel="share of the objects of that size")
ax.invert_yaxis()
ax.set_title(f"Mask R-CNN, boxes with score >= {SCORE}: what covers each object (IoU >= 0.5), by object size", fontsize=10)
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# Size matters for one kind of mistake only. Below 16 px, 12% of the objects get only a
# wrong class and 25% nothing at all, against 4% and 7% above (the bars): the outright
# failures gather on the smallest objects. But boxes of another class
# *beside* a right one, the bulk of the classification cost, are no small-object effect:
# 24% of the objects under 16 px carry one, 38% of the larger ones. Circles taken for
# hexagons are the clearest case: 3 of the 7 circles under 16 px get a hexagon box, and
# 19 of the 32 larger ones. Of the 7 objects that nothing finds at any score (TIDE's
# missed), 4 are under 16 px.

# %% [markdown]
# ## 6. A prediction browser (`fpnbook.widgets.predictions`)
#
# Tables and curves say where to look; the pictures say what it looks like. The browser
# runs `error_breakdown` once and steps through the images: on the left the objects,
# coloured by what became of them (detected, found only by an error, missed); on the
# right the detections above a score threshold, coloured by their kind. Its controls
# are plain arguments of `browser_state`, which says what is shown; here, validation
# image 23 at score 0.5, then lower, then one class.

# %%
INDEX = 22
state = browser_state(val_set, mr, box.errors, index=INDEX, score_threshold=0.5)
shown = [kinds[i] for i, p in enumerate(mr) if p["image_id"] == val_set.image_ids[INDEX] and p["score"] >= 0.5]
assert state["kind_counts"] == Counter(shown) and len(state["predictions"]["kinds"]) == len(shown)
lower = browser_state(val_set, mr, box.errors, index=INDEX, score_threshold=0.3)
one = browser_state(val_set, mr, box.errors, index=INDEX, score_threshold=0.3, label=HEXAGON)
for s in (state, lower, one):
    print(s["text"].replace("<b>", "").replace("</b>", "").replace("&ge;", ">="))
assert state["status_counts"]["detected"] == len(state["objects"]["status"]) and set(one["predictions"]["labels"].tolist()) == {HEXAGON}
assert (len(state["predictions"]["kinds"]), state["kind_counts"]["classification"], len(lower["predictions"]["kinds"]),
        lower["kind_counts"]["classification"]) == (11, 5, 14, 8)
covering = (box_iou(state["objects"]["boxes"], state["predictions"]["boxes"]) >= 0.5) * state["predictions"]["scores"]
same = state["objects"]["labels"][:, None] == state["predictions"]["labels"][None, :]
wrong_on_top = [names[int(c)] for c, r, w in zip(state["objects"]["labels"], (covering * same).amax(1), (covering * ~same).amax(1)) if w > r]
print("objects where a box of another class scores higher than the right one:", wrong_on_top)
assert sorted(wrong_on_top) == ["cross", "hexagon", "ring"]
figure = browser_figure(state, names, figsize=(9.0, 5.6), dpi=90)  # labels kept apart by viz.separate_labels
for ax in figure.axes:
    ax.images[0].set_interpolation("nearest")
assert viz.figure_problems(figure) == []
figure

# %% [markdown]
# Every object of the image is detected (left, all green), yet five of the eleven boxes
# drawn at 0.5 are classification errors (red): second opinions of another class on
# objects already found; on the cross, the ring and the small hexagon the second opinion
# even scores higher than the right answer. At 0.3 there are eight. In the live browser
# below, move the image slider, the score slider and the class menu. (On the website the
# browser shows its saved state; changing it needs a kernel, `make lab`.)

# %%
# NBVAL_IGNORE_OUTPUT
browser = prediction_browser(val_set, mr, index=INDEX, score_threshold=0.5)
assert browser.state["text"] == state["text"]
browser

# %% [markdown]
# ## With your own model
#
# Read its AP per class; read the weak classes' curves (a low start: confident wrong boxes;
# an early end: objects never found; a fall from IoU 0.5 to 0.75: poor placement); fix the
# largest dAP first; find the class pairs behind classification errors and their object
# sizes; look at the images. For the shipped Mask R-CNN the answer is classification:
# second opinions of another class on objects it already found, at every size.

# %% [markdown]
# ## Exercises
#
# 1. **Predict, then run.** Drop Mask R-CNN's detections below score 0.5 and rerun
#    `analysis.analyse`. Does AP50 go up or down, and which dAP changes most?
# 2. **Predict, then run.** One NMS over all classes at IoU 0.7 instead of 0.5 (section 4):
#    is AP50 closer to the original 0.797? Which error types' counts change?
# 3. **Predict, then run.** `analysis.confusion_matrix(val_set.coco, results["mask_rcnn"],
#    score_threshold=0.3)`: does the circle → hexagon cell grow faster than the diagonal's circle cell?
