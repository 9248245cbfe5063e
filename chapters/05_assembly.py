# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Assembly: whole detectors, training, evaluation, and your own data
#
# The earlier chapters built the parts one at a time. This chapter puts them together:
#
# 1. **Assemble** Mask R-CNN by hand from the chapters' modules, and check that
#    `fpnbook.models.build` makes the same thing; then RetinaNet and Mask^X R-CNN.
# 2. **Train** a tiny model live for a few steps with `fpnbook.train.train`.
# 3. **The shipped checkpoints** in `checkpoints/`: learning curves, COCO AP by object
#    size, predictions on validation images and on a photograph, and where they fail.
# 4. **Your own data**: COCO format, converting labelme files, the command line.
# 5. **fpnbook against torchvision**: the same Mask R-CNN, weights, data and schedule.

# %%
# %matplotlib inline
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from skimage import data as skdata

import fpnbook
from fpnbook import cli, data, models, train, viz
from fpnbook.anchors import AnchorGenerator
from fpnbook.backbone import resnet_tiny
from fpnbook.boxes import box_iou
from fpnbook.evaluate import coco_evaluate, format_table, to_coco_results
from fpnbook.fpn import FPN, BackboneWithFPN, LastLevelMaxPool
from fpnbook.images import batch_images
from fpnbook.labelme import labelme_to_coco
from fpnbook.poolers import MultiScaleRoIAlign
from fpnbook.rcnn import MaskRCNN
from fpnbook.roi_heads import BoxPredictor, MaskHead, MaskPredictor, RoIHeads, TwoMLPHead
from fpnbook.rpn import ASPECT_RATIOS, SMALL_ANCHOR_SIZES, RegionProposalNetwork, RPNHead

torch.set_num_threads(2)
ROOT = Path(fpnbook.__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
val_set = data.CocoDataset(*data.val_paths())
NUM_CLASSES = val_set.num_classes
print("fpnbook", fpnbook.__version__, "| torch", torch.__version__)
print(f"validation split: {len(val_set)} images, {NUM_CLASSES} classes: {val_set.class_names[1:]}")

# %% [markdown]
# ## 1. Mask R-CNN, part by part (`fpnbook.models`, `fpnbook.rcnn`)
#
# Each line below names the chapter that taught the part (the table in
# `fpnbook.models`' docstring says the same). Sizes are scaled to our 256 px images:
# anchors of 16 to 256 px, a 64-channel FPN, RoIs assigned to levels around 112 px.

# %%
torch.manual_seed(0)
body = resnet_tiny()                                                          # ch. 1: C2..C5, strides 4..32
backbone = BackboneWithFPN(body, FPN(body.out_channels, 64, LastLevelMaxPool()))  # ch. 1: P2..P6
anchors = AnchorGenerator(SMALL_ANCHOR_SIZES, [ASPECT_RATIOS] * 5)            # ch. 1: one size per level
rpn = RegionProposalNetwork(anchors, RPNHead(64, 3))                          # ch. 1: proposals per level
levels = ["p2", "p3", "p4", "p5"]                                             # RoIs never pool from P6
heads = RoIHeads(
    MultiScaleRoIAlign(levels, 7, 2, canonical_scale=112),                   # ch. 3: RoIAlign per FPN level
    TwoMLPHead(64 * 7 * 7, 256),                                              # ch. 5: the 2-fc box head
    BoxPredictor(256, NUM_CLASSES + 1),                                       # class scores + per-class deltas
    mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2, canonical_scale=112),
    mask_head=MaskHead(64, (64,) * 4),                                        # ch. 3: the 4-conv mask head
    mask_predictor=MaskPredictor(64, 64, NUM_CLASSES + 1),                    # 28x28 mask logits per class
)
by_hand = MaskRCNN(backbone, rpn=rpn, roi_heads=heads)
built = models.build(models.ModelConfig(kind="mask_rcnn", num_classes=NUM_CLASSES))
same = {k: tuple(v.shape) for k, v in by_hand.state_dict().items()} == {k: tuple(v.shape) for k, v in built.state_dict().items()}
assert same
print("by hand == models.build (every weight's name and shape):", same)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


for part, module in [("backbone body", body), ("FPN", backbone.fpn), ("RPN head", rpn.head),
                     ("box head + predictor", torch.nn.ModuleList([heads.box_head, heads.box_predictor])),
                     ("mask head + predictor", torch.nn.ModuleList([heads.mask_head, heads.mask_predictor])),
                     ("whole model", by_hand)]:
    print(f"{part:<24}{count(module):>10,} parameters")

# %% [markdown]
# One image through the parts, in the order `MaskRCNN.forward` calls them: normalise and
# pad, the pyramid, proposals, then boxes, classes and masks for the best proposals. The
# weights are random, so the detections are noise; the shapes are the point.

# %%
by_hand.eval()
image, target = val_set[0]
with torch.no_grad():
    batch, sizes = batch_images([image])
    features = backbone(batch)
    proposals, _ = rpn(batch, sizes, features)
    detections, _ = heads(features, proposals, sizes)
for name, feature in features.items():
    print(f"{name}: {tuple(feature.shape)}")
print("proposals:", tuple(proposals[0].shape), "| detections:",
      {k: tuple(v.shape) for k, v in detections[0].items()})

# %% [markdown]
# The same `build` makes the other detectors of the book. RetinaNet (chapter 2) reads
# P3..P7 with a focal-loss dense head; Mask^X R-CNN (chapter 4) is a Mask R-CNN whose
# per-class mask weights are predicted from the box weights, so classes without mask
# labels (here 2, 4, 5, 7) still get masks. `ModelConfig` is plain data, which is what
# a checkpoint stores to rebuild its model.

# %%
for config in [models.ModelConfig(kind="retinanet"), models.ModelConfig(kind="faster_rcnn"),
               models.ModelConfig(kind="mask_rcnn"), models.ModelConfig(kind="mask_x_rcnn", mask_classes=data.SPLIT_A)]:
    torch.manual_seed(0)
    print(f"{config.kind:<12}{count(models.build(config)):>10,} parameters")
print(models.ModelConfig(kind="mask_x_rcnn", mask_classes=data.SPLIT_A).to_dict())

# %% [markdown]
# ## 2. Training, live and tiny (`fpnbook.train`)
#
# `fpnbook.train.train` is the loop behind `python -m fpnbook train`: SGD with momentum,
# linear warm-up then step decay, gradient clipping, JSONL metrics and atomic
# checkpoints (mixed precision on CUDA). Here it overfits one batch of two small
# generated images for a few steps, seeded: the loss must go down.

# %%
# NBVAL_IGNORE_OUTPUT
tiny_images, tiny_ann = data.ensure_split("train", 2, 64, seed=0, progress=False)
tiny_set = data.CocoDataset(tiny_images, tiny_ann)
torch.manual_seed(0)
tiny_model = models.build(models.ModelConfig(kind="mask_rcnn", num_classes=NUM_CLASSES))
config = train.TrainConfig(iterations=6, batch_size=2, lr=0.01, warmup_iters=1, log_every=1,
                           device="cpu", progress=False)
records = train.train(tiny_model, tiny_set, config)
losses = [r["loss"] for r in records]
print("loss per step:", [round(x, 2) for x in losses])
assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < np.mean(losses[:2])

# %% [markdown]
# ## 3. The shipped checkpoints (`checkpoints/`, `fpnbook.cli`)
#
# `checkpoints/` holds three small models trained with the command line, each with a
# card (`checkpoints/NAME.md`, and all of them in `checkpoints/cards.json`): the exact
# command, seed, data, training time, hardware and COCO AP on the committed
# validation split. `tests/test_checkpoints.py` re-evaluates each file against its card
# and runs each card's command for two steps.

# %%
cards = json.loads((CHECKPOINTS / "cards.json").read_text())


def images_seen(card: dict) -> int:
    """Training images a checkpoint saw: steps x the command's --batch-size (the CLI's default is 4)."""
    command = card["command"]
    return card["steps"] * (int(command.split("--batch-size ")[1].split()[0]) if "--batch-size" in command else 4)


for name, card in cards.items():
    print(f"{name}: {card['size_mib']} MiB, {card['steps']} steps, {images_seen(card)} images seen, "
          f"{card['train_seconds'] / 60:.0f} min on {card['hardware']}\n    {card['command']}")

# %% [markdown]
# ### Learning curves
#
# Each run's `metrics.jsonl` ships beside its checkpoint; `train.read_metrics` reads it.

# %%
figure = Figure(figsize=(9, 2.8), dpi=72, layout="constrained")
axes = figure.subplots(1, len(cards), squeeze=False)[0]
for ax, (name, card) in zip(axes, cards.items()):
    steps = [r for r in train.read_metrics(CHECKPOINTS / card["metrics_file"]) if "loss" in r]
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="total")
    for key in ("loss_classifier", "loss_mask", "loss_box_reg", "classification", "bbox_regression"):
        if key in steps[0]:
            ax.plot([r["step"] for r in steps], [r[key] for r in steps], label=key, lw=1)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
axes[0].set_ylabel("training loss")
figure

# %% [markdown]
# ### COCO AP on the validation split, by object size
#
# AP is averaged over IoU 0.5:0.95; APs, APm and APl are small (< 32² px), medium and
# large (> 96² px) objects. The table is read from the cards; below it, one checkpoint
# is evaluated afresh to show the card tells the truth (all three are checked by the tests).

# %%
keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
print(f"{'model':<13}{'type':<6}" + "".join(f"{k:>7}" for k in keys) + "   target AP (issue 8)")
for name, card in cards.items():
    for iou_type, stats in card["val"].items():
        target = card["targets"].get(iou_type)
        print(f"{name:<13}{iou_type:<6}" + "".join(f"{stats[k]:7.3f}" for k in keys)
              + (f"   {target:.2f}" if target else ""))

# %%
mask_rcnn, state = cli.load_model(CHECKPOINTS / "mask_rcnn.pt")
outputs = train.predict(mask_rcnn, val_set, device="cpu")
fresh = coco_evaluate(val_set.coco, to_coco_results(outputs, val_set.image_ids, val_set.label_to_cat_id))
print(format_table({t: {k: fresh[t][k] for k in keys} for t in fresh}))
for iou_type in fresh:
    assert all(abs(fresh[iou_type][k] - cards["mask_rcnn"]["val"][iou_type][k]) < 0.005 for k in keys)
print("matches checkpoints/cards.json within 0.005")

# %% [markdown]
# ### Predictions on validation images
#
# Ground truth on the left; on the right the checkpoint's five best detections, whatever
# their score (masks cut at probability 0.5). The printed best scores show how far a
# briefly trained classifier still is from confident.

# %%
def top(output: dict, k: int = 5) -> dict:
    """The k highest-scoring detections of one output (outputs come sorted by score)."""
    order = output["scores"].argsort(descending=True)[:k]
    return {key: value[order] for key, value in output.items()}


def best_score(output: dict) -> float:
    return float(output["scores"].max()) if len(output["scores"]) else 0.0


shown = [1, 5, 9]
pictures, titles = [], []
for i in shown:
    image, target = val_set[i]
    pictures += [viz.draw_detections(image, target), viz.draw_detections(image, top(outputs[i]), score_threshold=0)]
    titles += [f"val {i}: truth", f"best score {best_score(outputs[i]):.2f}"]
print("best score per validation image: median", round(float(np.median([best_score(o) for o in outputs])), 2))
viz.show_grid(pictures, ncols=6, titles=titles, figsize=(9, 1.9))

# %% [markdown]
# ### A photograph
#
# The training images are shapes pasted on photographs, so a new photograph with new
# shapes pasted on it is a fair test: scikit-image's astronaut, resized to 256 px, with the
# shapes of one freshly drawn image (`data.render_image`) pasted over her.

# %%
photo = np.asarray(Image.fromarray(skdata.astronaut()).resize((256, 256), Image.BILINEAR)).copy()
pixels, masks, category_ids = data.render_image(256, np.random.default_rng(7))
covered = masks.any(0)
photo[covered] = pixels[covered]
photo_tensor = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
with torch.no_grad():
    photo_output = mask_rcnn([photo_tensor])[0]
print(f"{len(category_ids)} shapes pasted; best score {best_score(photo_output):.2f}")
viz.show_grid([photo_tensor, viz.draw_detections(photo_tensor, top(photo_output), score_threshold=0)],
              ncols=2, titles=["pasted shapes", "mask_rcnn, 5 best"], figsize=(5, 2.7))

# %% [markdown]
# ### Where it fails
#
# An object counts as *found* when one of the model's detections of its class (any it
# outputs, score ≥ 0.05) overlaps its box with IoU ≥ 0.5. Recall by size shows which
# objects a small, briefly trained model misses first; the images with the most missed
# objects follow.

# %%
def found_objects(output: dict, target: dict, score: float = 0.05, iou: float = 0.5) -> torch.Tensor:
    """bool [N]: ground-truth object n has a same-class detection with IoU >= iou."""
    keep = output["scores"] >= score
    if keep.sum() == 0 or len(target["boxes"]) == 0:
        return torch.zeros(len(target["boxes"]), dtype=torch.bool)
    overlap = box_iou(target["boxes"].as_subclass(torch.Tensor), output["boxes"][keep])
    same_class = target["labels"][:, None] == output["labels"][keep][None, :]
    return ((overlap >= iou) & same_class).any(1)


sizes, found, missed_per_image = [], [], []
for i, output in enumerate(outputs):
    target = val_set[i][1]
    hit = found_objects(output, target)
    b = target["boxes"].as_subclass(torch.Tensor)
    sizes.append(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt())
    found.append(hit)
    missed_per_image.append(int((~hit).sum()))
sizes, found = torch.cat(sizes), torch.cat(found)
recalls = []
for label, low, high in [("small (< 32 px)", 0, 32), ("medium", 32, 96), ("large (> 96 px)", 96, 1e9)]:
    inside = (sizes >= low) & (sizes < high)
    recalls.append(found[inside].float().mean().item())
    print(f"{label:<17}{int(inside.sum()):>4} objects, recall {recalls[-1]:.2f}")
assert recalls == sorted(recalls)  # the smaller the object, the more often it is missed
worst = sorted(range(len(outputs)), key=lambda i: (-missed_per_image[i], i))[:3]
pictures = []
for i in worst:
    image, target = val_set[i]
    pictures += [viz.draw_detections(image, target), viz.draw_detections(image, top(outputs[i]), score_threshold=0)]
viz.show_grid(pictures, ncols=6, figsize=(9, 1.9),
              titles=[t for i in worst for t in (f"val {i}: truth", f"{missed_per_image[i]} missed")])

# %% [markdown]
# ## 4. Your own data (`fpnbook.labelme`, `python -m fpnbook`)
#
# Anything in COCO format trains: an images folder and one JSON with `images`,
# `categories` (ids become labels 1..K in id order) and `annotations` (`bbox` as
# `[x, y, w, h]`, `segmentation` as polygons or RLE, `iscrowd`). Annotated with
# [labelme](https://github.com/wkentaro/labelme)? `fpnbook.labelme.labelme_to_coco`
# (or `python -m fpnbook data --from-labelme DIR --out FILE`) converts a folder of its
# JSON files; polygons, rectangles and circles become RLE masks. Here are two labelme
# files written by hand, converted, and read back.

# %%
own = Path(tempfile.mkdtemp(prefix="fpnbook-own-"))
for k, (circle, rectangle) in enumerate([([[60, 60], [90, 60]], [[120, 30], [220, 120]]),
                                          ([[180, 180], [180, 215]], [[20, 140], [90, 230]])]):
    Image.fromarray(np.asarray(Image.fromarray(skdata.coffee()).resize((256, 256)))).save(own / f"photo{k}.jpg")
    labelme_file = {"imagePath": f"photo{k}.jpg", "imageHeight": 256, "imageWidth": 256, "shapes": [
        {"label": "circle", "shape_type": "circle", "points": circle},
        {"label": "square", "shape_type": "rectangle", "points": rectangle}]}
    (own / f"photo{k}.json").write_text(json.dumps(labelme_file))
with contextlib.redirect_stdout(io.StringIO()) as said:  # the CLI prints the (temporary) paths
    assert cli.main(["data", "--from-labelme", str(own), "--out", str(own / "coco.json")]) == 0
print(said.getvalue().replace(str(own), "DIR").strip())
own_set = data.CocoDataset(own, own / "coco.json")
print(f"{len(own_set)} images, classes {own_set.class_names[1:]}, objects per image "
      f"{[len(own_set[i][1]['labels']) for i in range(len(own_set))]}")
viz.show_grid([viz.draw_detections(*own_set[i], class_names=own_set.class_names) for i in range(2)],
              ncols=2, figsize=(5, 2.7))

# %% [markdown]
# Then, from a terminal (`--num-classes` is the number of categories; `--workers`
# DataLoader processes; on a machine with several GPUs put `torchrun --nproc_per_node=N`
# in front of `-m fpnbook`):
#
# ```
# python -m fpnbook train --model mask_rcnn --num-classes 2 --out runs/mine \
#     --train-ann coco.json --train-images DIR --val-ann val.json --val-images VALDIR \
#     --iterations 3000 --batch-size 4 --lr 0.02
# python -m fpnbook eval --checkpoint runs/mine/last.pt --ann val.json --images VALDIR
# python -m fpnbook predict --checkpoint runs/mine/last.pt --images NEW_PHOTOS --out preds
# ```
#
# `--resume runs/mine/last.pt` continues a stopped run exactly where it stopped.

# %% [markdown]
# ## 5. fpnbook against torchvision, same model and schedule (`experiments/torchvision_compare.py`)
#
# `experiments/torchvision_compare.py` builds torchvision's `MaskRCNN` around a copy of
# our backbone, copies every head weight, sets its anchors, proposal counts, RoI batch
# and canonical scale to ours, and turns off its resizing; then trains both with the same
# `fpnbook.train.train` loop, schedule, seed and data. The schedule is a short one
# (printed below), far shorter than the shipped checkpoint's: it compares the two
# implementations, not a finished model.
# What differs is the code: our RPN, matching, sampling and pure-PyTorch RoIAlign
# against torchvision's. Speed is timed on the same machine, the two models taking turns.

# %%
compare = json.loads((ROOT / "experiments" / "results" / "torchvision_compare.json").read_text())
metrics = compare["metrics"]
print("schedule:", metrics["schedule"], "| hardware:", compare["hardware"])
print(f"{'':<13}{'box AP':>8}{'mask AP':>9}{'AP50':>7}{'train img/s':>13}{'infer img/s':>13}")
for name in ("fpnbook", "torchvision"):
    val, speed = metrics["val"][name], metrics["throughput"][name]
    print(f"{name:<13}{val['bbox']['AP']:8.3f}{val['segm']['AP']:9.3f}{val['bbox']['AP50']:7.3f}"
          f"{speed['train_images_per_s']:13.2f}{speed['inference_images_per_s']:13.2f}")
print("fpnbook / torchvision speed:", metrics["throughput_ratio"])
figure = Figure(figsize=(5, 2.6), dpi=72, layout="constrained")
ax = figure.subplots()
for name, curve in metrics["loss_curves"].items():
    ax.plot(*zip(*curve), label=name)
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.legend(fontsize=8)
figure

# %% [markdown]
# ## What limits these numbers
#
# The issue asks for box AP ≥ 0.85 (both detectors) and mask AP ≥ 0.80 on this split. The
# cards hold what the shipped checkpoints reached, and the gap is compute. The cell below
# puts a number on it: the images each checkpoint saw in training, against the schedule
# the papers' models had (Detectron's "1x": 90k steps of 16 images, after ImageNet
# pre-training; ours start from scratch), and the box AP at each of the run's
# evaluations: still climbing when the run stopped.

# %%
PAPER_IMAGES = 90_000 * 16
for name, card in cards.items():
    evals = [(r["step"], r["eval"]["bbox"]["AP"]) for r in train.read_metrics(CHECKPOINTS / card["metrics_file"]) if "eval" in r]
    reached = ", ".join(f"{t} AP {card['val'][t]['AP']:.3f} (target {goal:.2f})" for t, goal in card["targets"].items())
    print(f"{name:<12}{images_seen(card):>6} images, {images_seen(card) / PAPER_IMAGES:.2%} of the 1x schedule. "
          f"{reached or 'No target.'}\n{'':<12}box AP by step: " + ", ".join(f"{step}: {ap:.3f}" for step, ap in evals))
    assert all(a < b for (_, a), (_, b) in zip(evals, evals[1:]))  # no plateau yet

# %% [markdown]
# More training is the lever: run a card's command with more `--iterations`, on a GPU if
# you have one (`--device cuda` adds AMP and pinned memory), then `python -m fpnbook eval`.
# Small objects are where a short run loses most (the recall-by-size table above).
