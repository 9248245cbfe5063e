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
# # 5. The second stage and the mask branch
#
# Chapter 4 cut a fixed-size patch of features out of the pyramid for every proposal.
# This chapter builds what reads those patches. Fast R-CNN's **box head** classifies each
# proposal and refines its box; Mask R-CNN adds a **mask branch** beside it, a small
# fully convolutional network that paints a 28 x 28 mask inside each box. After this
# chapter you can run both heads by hand from a trained model's weights, compute their
# three losses and the final detections, say why the mask loss reads one channel only,
# and read the paper's Table 2b against ours. Chapter 1 taught the parts both heads
# borrow: box coding (`fpnbook.boxes.BoxCoder`), matching by IoU (`fpnbook.matching.Matcher`),
# balanced sampling (`BalancedSampler`) and NMS. Here they meet the heads of chapter 1's
# trained Mask R-CNN (`checkpoints/mask_rcnn.pt`), step by step, each step checked against
# `fpnbook.roi_heads` and torchvision with the same weights.
#
# 1. **The heads at a glance** (`fpnbook.diagrams`): the second stage drawn from the
#    model's own modules, and where its sizes depart from the paper's.
# 2. **The second stage by hand** (`fpnbook.roi_heads`): matching and sampling RoIs, the
#    box head, its two losses, and the post-processing that turns scores into detections.
# 3. **The mask branch by hand** (`fpnbook.roi_heads`): mask targets, the head, the
#    per-class sigmoid loss.
# 4. **The paper's Table 2b in miniature**: softmax against sigmoid masks.

# %% [markdown]
# **Papers.** Girshick, [Fast R-CNN](https://arxiv.org/abs/1504.08083): Sec. 2.3, the
# multi-task loss (cross entropy and smooth L1, Eq. 1-3) and mini-batch sampling (section 2).
# He et al., [Mask R-CNN](https://arxiv.org/abs/1703.06870): Fig. 4 (the heads, section 1),
# Sec. 3, "Mask R-CNN" and "Mask Representation" (the mask branch and its loss, section 3),
# Sec. 3.1 (training: RoIs, sampling), Table 2b (multinomial against independent masks,
# section 4).

# %%
# %matplotlib inline
import json
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from torchvision.models.detection import roi_heads as tv_roi_heads

import fpnbook
from fpnbook import checkpoint, data, images, viz
from fpnbook.interop import to_torchvision
from fpnbook.ops import roi_align
from fpnbook.roi_heads import fast_rcnn_loss, mask_loss, project_masks_on_boxes

ROOT = Path.cwd().parent  # the repository root (the notebook runs in chapters/)
# One thread: these cells are small, and a second thread waits more than it helps.
torch.set_num_threads(1)
matplotlib.rcParams.update({"figure.dpi": 72, "font.size": 9})
print("fpnbook", fpnbook.__version__, "| torch", torch.__version__, "| torchvision", torchvision.__version__)

# The book's trained Mask R-CNN (chapter 1's) and one validation image with its ground truth.
trained, _ = checkpoint.load_model(ROOT / "checkpoints" / "mask_rcnn.pt")
heads = trained.roi_heads
val_set = data.CocoDataset(*data.val_paths())
names = val_set.class_names  # index = label; 0 is the background
val_image, val_target = val_set[32]
batch, sizes = images.batch_images([val_image])
print(f"{type(trained).__name__}, {len(names) - 1} classes; image {tuple(val_image.shape)} with "
      f"{len(val_target['labels'])} objects")

# %% [markdown]
# ## 1. The heads at a glance (`fpnbook.diagrams`)
#
# RoIAlign cuts a 7 x 7 patch for every proposal of the RPN, and the box head reads it; a
# second RoIAlign cuts a 14 x 14 patch for the mask head, from the foreground RoIs in
# training and from the final detections at inference. The box head ends in a class score
# per class and a box per class; the mask head in a 28 x 28 mask per class. Three losses
# train them: $L_{cls}$ and $L_{box}$ on the box head, $L_{mask}$ on the mask head; the RPN
# in front (chapter 2) has its own two. The diagram reads every size from the trained
# model's modules.

# %%
from fpnbook import diagrams

figure = diagrams.mask_rcnn_heads(trained)
assert not viz.figure_problems(figure)
figure

# %% [markdown]
# The diagram shows the RPN and the two heads as three rows, each ending in the losses
# that train it.
#
# **Where the book's heads depart from the paper's.** The sizes below are read from the
# modules. The paper's FPN box head has two fully connected layers of 1024 units, and its
# mask head four 3x3 convolutions and a deconvolution of 256 channels; the book's are 256
# units and 64 channels, on a 64-channel FPN (chapter 2), and it samples 128 RoIs per
# image in training where the paper samples 512. The images are 256 px, not 800, with
# eight classes, and every model trains on a CPU: the book's heads keep the paper's
# structure with a sixteenth of its parameters (printed below).

# %%
fc6, fc7 = heads.box_head.fc6, heads.box_head.fc7
mask_convs = [m for m in heads.mask_head if isinstance(m, torch.nn.Conv2d)]
deconv = heads.mask_predictor.conv5_mask
parameters = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
print(f"box head:  RoIAlign {heads.box_roi_pool.output_size[0]}x{heads.box_roi_pool.output_size[1]} x "
      f"{trained.backbone.out_channels} channels -> fc6 {fc6.out_features} -> fc7 {fc7.out_features} units "
      f"(paper: 1024, 1024); {parameters(heads.box_head):,} parameters")
print(f"mask head: RoIAlign {heads.mask_roi_pool.output_size[0]}x{heads.mask_roi_pool.output_size[1]} -> "
      f"{len(mask_convs)} x 3x3 conv of {mask_convs[0].out_channels} -> deconv {deconv.out_channels} channels "
      f"(paper: 4 x 256, 256); {parameters(heads.mask_head) + parameters(deconv):,} parameters")
print(f"training: {heads.sampler.batch_size_per_image} RoIs sampled per image, at most "
      f"{heads.sampler.positive_fraction:.0%} foreground (paper: 512, 25%)")
ours = parameters(heads.box_head) + parameters(heads.mask_head) + parameters(deconv)
# The paper's sizes on a 256-channel FPN: fc6 and fc7 (weights + biases), four 3x3 convs and the 2x2 deconv.
papers = (256 * 49 * 1024 + 1024) + (1024 * 1024 + 1024) + 4 * (256 * 256 * 9 + 256) + (256 * 256 * 4 + 256)
print(f"both heads: {ours:,} parameters; at the paper's sizes {papers:,}, {papers / ours:.0f} times as many")
assert (fc6.out_features, fc7.out_features, deconv.out_channels) == (256, 256, 64) and 15 < papers / ours < 17
assert [c.out_channels for c in mask_convs] == [64] * 4 and heads.sampler.batch_size_per_image == 128

# %% [markdown]
# ## 2. The second stage by hand (`fpnbook.roi_heads`)
#
# On the image loaded above, by hand:
#
# 1. **Match** every proposal (the ground-truth boxes added, so each object has positives)
#    to its best ground truth: IoU ≥ 0.5 is foreground with that object's class, below is
#    background. This is chapter 1's `Matcher` with one threshold, so there is no ignored
#    band as in the RPN's anchor labelling. Then **sample** with chapter 1's
#    `BalancedSampler`: 128 RoIs per image, at most 25% foreground.
# 2. **The box head**: RoIAlign 7x7 on the RoI's FPN level, two fully connected layers with
#    ReLU (fc6, fc7), then per RoI `K + 1` class scores (the background is class 0) and
#    `4 (K + 1)` class-specific deltas, coded as in chapter 1 with weights (10, 10, 5, 5).
#    Four deltas for every class is torchvision's layout; Fast R-CNN predicts `4 K`: no loss
#    ever reads the background's four.
# 3. **The losses**: cross entropy over all sampled RoIs; smooth L1 on the ground-truth
#    class's deltas of the foreground RoIs, summed and divided by the number of *all* sampled
#    RoIs, with β = 1/9. That β is torchvision's choice, which the book follows; Fast
#    R-CNN's smooth L1 (its Eq. 3), which Mask R-CNN keeps, and Detectron's have β = 1.
# 4. **Post-processing** at inference: softmax, decode each class's box with chapter 1's
#    `BoxCoder`, clip, drop the background column, scores ≤ 0.05 and boxes under 0.01 px,
#    NMS at 0.5 per class (`torchvision.ops.batched_nms`, chapter 1), keep 100.

# %%
with torch.no_grad():
    features = trained.backbone(batch)
    proposals = [trained.rpn.propose(batch, sizes, features)[0]["boxes"]]

    # 1. Matching and sampling.
    candidates = torch.cat([proposals[0], val_target["boxes"]])
    iou = torchvision.ops.box_iou(val_target["boxes"], candidates)                      # [G, P]
    best_iou, best_gt = iou.max(dim=0)
    labels = torch.where(best_iou >= 0.5, val_target["labels"][best_gt], 0)
    assert heads.matcher.high == heads.matcher.low == 0.5  # one threshold: no ignored band
    assert heads.box_coder.weights == (10, 10, 5, 5)
    ours_matched, ours_labels = heads.assign_targets(candidates, val_target["boxes"], val_target["labels"])
    assert torch.equal(labels, ours_labels) and torch.equal(best_gt[labels > 0], ours_matched[labels > 0])
    torch.manual_seed(0)
    rois, matched, sampled_labels, regression_targets = heads.select_training_samples(proposals, [val_target])
    foreground = int((sampled_labels[0] > 0).sum())
    assert len(rois[0]) == 128 and foreground <= 0.25 * 128
    print(f"{len(candidates)} candidates, {int((labels > 0).sum())} of them foreground at IoU >= 0.5; "
          f"sampled {len(rois[0])} RoIs, {foreground} foreground")

    # 2. The box head.
    pooled = heads.box_roi_pool(features, rois, sizes)                                # [R, C, 7, 7]
    x = F.relu(F.linear(pooled.flatten(1), fc6.weight, fc6.bias))
    x = F.relu(F.linear(x, fc7.weight, fc7.bias))
    class_logits = F.linear(x, heads.box_predictor.cls_score.weight, heads.box_predictor.cls_score.bias)
    box_regression = F.linear(x, heads.box_predictor.bbox_pred.weight, heads.box_predictor.bbox_pred.bias)
    ours_logits, ours_deltas = heads.box_predictor(heads.box_head(pooled))
    assert torch.allclose(class_logits, ours_logits, atol=1e-5) and torch.allclose(box_regression, ours_deltas, atol=1e-5)
    print(f"box head: {tuple(pooled.shape)} -> class logits {tuple(class_logits.shape)}, "
          f"deltas {tuple(box_regression.shape)}")

    # 3. The losses.
    y, t = sampled_labels[0], regression_targets[0]
    loss_classifier = F.cross_entropy(class_logits, y)
    fg = torch.where(y > 0)[0]
    fg_deltas = box_regression.view(len(y), -1, 4)[fg, y[fg]]                        # the true class's 4 deltas
    loss_box_reg = F.smooth_l1_loss(fg_deltas, t[fg], beta=1 / 9, reduction="sum") / len(y)
    ours_cls, ours_box = fast_rcnn_loss(class_logits, box_regression, sampled_labels, regression_targets)
    assert torch.allclose(loss_classifier, ours_cls) and torch.allclose(loss_box_reg, ours_box)
    theirs_cls, theirs_box = tv_roi_heads.fastrcnn_loss(class_logits, box_regression, sampled_labels, regression_targets)
    assert torch.allclose(loss_classifier, theirs_cls) and torch.allclose(loss_box_reg, theirs_box)
    loss_beta1 = F.smooth_l1_loss(fg_deltas, t[fg], beta=1.0, reduction="sum") / len(y)
    print(f"loss_classifier {loss_classifier:.4f}, loss_box_reg {loss_box_reg:.4f}: by hand == fpnbook == torchvision "
          f"(with Fast R-CNN's beta = 1 it would be {loss_beta1:.4f})")

    # 4. Post-processing, on all proposals as at inference.
    logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))
    scores = F.softmax(logits, dim=-1)                                                 # [P, K + 1]
    decoded = heads.box_coder.decode(deltas, proposals[0]).view(len(scores), -1, 4)    # [P, K + 1, 4]
    decoded = torchvision.ops.clip_boxes_to_image(decoded, sizes[0])
    classes = torch.arange(scores.shape[1]).expand_as(scores)
    boxes_c, scores_c, labels_c = decoded[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), classes[:, 1:].reshape(-1)
    keep = scores_c > 0.05
    boxes_c, scores_c, labels_c = boxes_c[keep], scores_c[keep], labels_c[keep]
    keep = ((boxes_c[:, 2] - boxes_c[:, 0]) >= 1e-2) & ((boxes_c[:, 3] - boxes_c[:, 1]) >= 1e-2)
    boxes_c, scores_c, labels_c = boxes_c[keep], scores_c[keep], labels_c[keep]
    keep = torchvision.ops.batched_nms(boxes_c, scores_c, labels_c, 0.5)[:100]
    by_hand = boxes_c[keep], scores_c[keep], labels_c[keep]
    ours = [v[0] for v in heads.postprocess_detections(logits, deltas, proposals, sizes)]
    twin = to_torchvision(trained, 256)
    theirs = [v[0] for v in twin.roi_heads.postprocess_detections(logits, deltas, proposals, sizes)]
for a, b, c in zip(by_hand, ours, theirs):
    assert torch.allclose(a.float(), b.float(), atol=1e-4) and torch.allclose(b.float(), c.float(), atol=1e-4)
print(f"{len(scores)} proposals -> {len(by_hand[0])} detections: by hand == fpnbook.roi_heads == torchvision's "
      f"RoIHeads; best: {names[int(by_hand[2][0])]} at {by_hand[1][0]:.2f}")

# %% [markdown]
# The figure follows the image through the stage. Top: its ground truth, and beside it the
# detections that post-processing keeps, drawn from a score of 0.5 up. Bottom: the 128
# RoIs sampled for training (foreground in its object's class colour, background in
# white), and every detection above the 0.05 floor, before a score threshold is chosen.

# %%
figure = Figure(figsize=(7.6, 7.9), dpi=72, layout="constrained")
(ax_gt, ax_det), (ax_rois, ax_all) = figure.subplots(2, 2)
viz.plot_detections(ax_gt, val_image, val_target, class_names=names, title="ground truth")
detections, threshold = {"boxes": by_hand[0], "labels": by_hand[2], "scores": by_hand[1]}, 0.5
shown = viz.plot_detections(ax_det, val_image, detections, class_names=names, score_threshold=threshold,
                            title=f"detections, score >= {threshold}")
for ax, drawn, title in ((ax_rois, zip(rois[0].tolist(), sampled_labels[0].tolist()),
                          f"training: {len(rois[0])} sampled RoIs, {foreground} foreground"),
                         (ax_all, zip(by_hand[0].tolist(), by_hand[2].tolist()),
                          f"all {len(by_hand[0])} detections, score > 0.05")):
    ax.imshow(val_image.permute(1, 2, 0))
    for (x1, y1, x2, y2), label in sorted(drawn, key=lambda d: d[1] > 0):  # background first, foreground on top
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5 if label else 0.7,
                               ec=viz.PALETTE[label % 10] if label else "white"))
    ax.set(xticks=[], yticks=[], title=title)
for ax in (ax_gt, ax_det, ax_rois, ax_all):
    ax.title.set_fontsize(10)
assert shown == int((by_hand[1] >= threshold).sum()) and not viz.figure_problems(figure)
# Detections under the threshold that sit on a detection of another class (per-class NMS compares one class only).
overlap = torchvision.ops.box_iou(by_hand[0], by_hand[0]) > 0.5
rivals = int((overlap & (by_hand[2][:, None] != by_hand[2][None]))[by_hand[1] < threshold].any(1).sum())
print(f"{len(rois[0]) - foreground} of {len(rois[0])} sampled RoIs are background; {shown} of {len(by_hand[0])} "
      f"detections reach {threshold}, and {rivals} of the rest sit on a box of another class at IoU > 0.5")
assert len(rois[0]) - foreground > 2 * foreground and rivals > (len(by_hand[0]) - shown) / 2
figure

# %% [markdown]
# Training (bottom left) sees mostly background RoIs scattered over the image, with the
# foreground ones piled on the four objects; at inference (bottom right), most boxes under
# the 0.5 threshold (printed above) are a second class's box on an object already found,
# which per-class NMS keeps because it only compares boxes of one class, and the rest small
# boxes on background specks (colours are the classes of the top row).

# %% [markdown]
# ## 3. The mask branch by hand (`fpnbook.roi_heads`)
#
# Mask R-CNN adds one branch to that second stage, beside the box head, and RoIAlign
# feeds it. On the same image, RoIs and weights as section 2:
#
# 1. **Mask targets.** Each foreground RoI gets its object's ground-truth mask, cut out by
#    the RoI (not by the object's box) and resized to 28 x 28. The cut is RoIAlign again,
#    on the 0/1 mask seen as a one-channel image (spatial scale 1), so the target is soft at
#    the edges.
# 2. **The head.** RoIAlign 14 x 14 on the RoI's FPN level, four 3x3 convs with ReLU, a 2x2
#    deconvolution of stride 2 with ReLU (to 28 x 28), then a 1x1 conv to one channel per
#    class: **one mask per class**. The paper's head has `K` channels, one per object
#    class; the book follows torchvision's layout of `K + 1`, with a channel for the
#    background that the sigmoid loss never reads (section 4's softmax does).
# 3. **The loss** $L_{mask}$: a per-pixel sigmoid and binary cross entropy, on the channel of
#    the ground-truth class **only**. The other channels get no gradient, so the classes
#    never compete for a pixel: the box branch has already said which class it is.
# 4. **The total** $L = L_{cls} + L_{box} + L_{mask}$ for the second stage, plus the RPN's two
#    losses for the whole model.

# %%
with torch.no_grad():
    fg = sampled_labels[0] > 0
    fg_rois, fg_labels, fg_matched = rois[0][fg], sampled_labels[0][fg], matched[0][fg]
    gt_masks = val_target["masks"].as_subclass(torch.Tensor).float()                # [G, H, W] 0/1

    # 1. Mask targets: RoIAlign on the masks themselves, one box per RoI, 28 x 28.
    boxes_with_index = torch.cat([fg_matched[:, None].float(), fg_rois], dim=1)     # [R, 5]: (mask index, box)
    mask_targets = roi_align(gt_masks[:, None], boxes_with_index, 28, 1.0, sampling_ratio=-1, aligned=False)[:, 0]
    assert torch.allclose(mask_targets, project_masks_on_boxes(gt_masks, fg_rois, fg_matched, 28), atol=1e-6)
    assert torch.allclose(mask_targets, tv_roi_heads.project_masks_on_boxes(gt_masks, fg_rois, fg_matched, 28),
                          atol=1e-6)
    assert ((mask_targets > 0.05) & (mask_targets < 0.95)).any()  # soft at the edges: not only 0s and 1s

    # 2. The head, layer by layer, with the trained weights.
    x = heads.mask_roi_pool(features, [fg_rois], sizes)                                # [R, C, 14, 14]
    for conv in mask_convs:
        x = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, dilation=conv.dilation))
    x = F.relu(F.conv_transpose2d(x, deconv.weight, deconv.bias, stride=2))
    logit_conv = heads.mask_predictor.mask_fcn_logits
    mask_logits = F.conv2d(x, logit_conv.weight, logit_conv.bias)                      # [R, K + 1, 28, 28]
    assert torch.allclose(mask_logits, heads.mask_logits(features, [fg_rois], sizes), atol=1e-4)
    tv_heads = twin.roi_heads
    theirs_logits = tv_heads.mask_predictor(tv_heads.mask_head(tv_heads.mask_roi_pool(features, [fg_rois], sizes)))
    assert torch.allclose(mask_logits, theirs_logits, atol=1e-4)
    assert mask_logits.shape[1] == len(names)  # K + 1 channels: the background's too

    # 3. The loss: sigmoid BCE on the ground-truth class's channel only.
    picked = mask_logits[torch.arange(len(fg_labels)), fg_labels]                     # [R, 28, 28]
    loss_mask = F.binary_cross_entropy_with_logits(picked, mask_targets)
    assert torch.allclose(loss_mask, mask_loss(mask_logits, fg_labels, mask_targets))
    theirs_loss = tv_roi_heads.maskrcnn_loss(mask_logits, [fg_rois], [gt_masks], [val_target["labels"]], [fg_matched])
    assert torch.allclose(loss_mask, theirs_loss, atol=1e-6)
print(f"{len(fg_rois)} foreground RoIs -> mask logits {tuple(mask_logits.shape)}: by hand == fpnbook == torchvision")
print(f"L_mask {loss_mask:.4f}: by hand == fpnbook.roi_heads.mask_loss == torchvision's maskrcnn_loss")
print(f"L = L_cls + L_box + L_mask = {loss_classifier:.4f} + {loss_box_reg:.4f} + {loss_mask:.4f} "
      f"= {loss_classifier + loss_box_reg + loss_mask:.4f}")

# The whole model in training mode returns these three and the RPN's two, each a scalar to sum.
torch.manual_seed(0)
trained.train()
train_losses = trained([val_image], [val_target])
trained.eval()
assert set(train_losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
print("training-mode losses:", ", ".join(f"{k} {v:.3f}" for k, v in train_losses.items()))

# %% [markdown]
# One RoI, drawn: the RoI on the image, its target, then the masks that three channels of
# the head predict for it (probabilities, one colour scale for the four masks). Only the
# ground-truth class's channel is trained on this RoI; the others answer "what if this box
# held a different class", and nothing asks them to be small.

# %%
r = int(torch.argmax((fg_rois[:, 2] - fg_rois[:, 0]) * (fg_rois[:, 3] - fg_rois[:, 1])))  # the largest RoI
label = int(fg_labels[r])
others = [c for c in range(1, len(names)) if c != label][:2]
figure = Figure(figsize=(9.5, 2.6), dpi=72, layout="constrained")
axes = figure.subplots(1, 5)
axes[0].imshow(val_image.permute(1, 2, 0))
x1, y1, x2, y2 = fg_rois[r].tolist()
axes[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=2))
axes[0].set_title(f"RoI on a {names[label]}")
shown = [axes[1].imshow(mask_targets[r], cmap="gray", vmin=0, vmax=1)]
axes[1].set_title("target (28 x 28)")
for ax, c in zip(axes[2:], [label, *others]):
    shown.append(ax.imshow(mask_logits[r, c].sigmoid(), cmap="gray", vmin=0, vmax=1))
    ax.set_title(f"channel {names[c]}" + (" (trained)" if c == label else ""))
figure.colorbar(shown[-1], ax=axes[1:], label="mask probability", shrink=0.9)  # one scale, 0..1, for the four
for ax in axes:
    ax.set(xticks=[], yticks=[])
assert not viz.figure_problems(figure)
target_px, predicted = mask_targets[r] > 0.5, mask_logits[r] > 0  # logit > 0 is probability > 0.5
agreement = {names[c]: float((predicted[c] & target_px).sum() / (predicted[c] | target_px).sum())
             for c in [label, *others]}
print("IoU of each channel's mask (probability > 0.5) with the target:",
      ", ".join(f"{k} {v:.2f}" for k, v in agreement.items()))
assert min(agreement.values()) > 0.8
figure

# %% [markdown]
# The trained channel matches the target, and the two untrained channels paint nearly the
# same shape (IoUs printed above): the head has learnt where the object is, and which class
# it is comes from the box head.

# %% [markdown]
# ## 4. The paper's Table 2b in miniature: softmax against sigmoid masks (`experiments.mask_table2b`)
#
# The alternative is that of FCN (Long et al.'s fully convolutional network for semantic
# segmentation, which gives every pixel one class): a per-pixel **softmax** over the `K + 1`
# channels
# (`fpnbook.roi_heads.softmax_mask_loss`), where each pixel is labelled the RoI's class
# inside its mask and background outside. Every channel then gets a gradient and the
# classes compete for each pixel. The paper reports 24.8 mask AP for softmax against 30.3
# for the sigmoid (ResNet-50-C4, COCO).
#
# The experiment trains the same head both ways and changes nothing else: C4 (stride 16)
# of the tiny ResNet, started from the book's pretrained backbone; the **ground-truth
# boxes** as RoIs, so detection cannot differ, only masks can; appendix A's training recipe;
# three seeds, each giving both variants the same initial weights and images. A softmax
# mask is read as FCN reads it: the pixels where the RoI's class wins the argmax. COCO
# mask AP scores both on 256 freshly generated images. Appendix B gives the commands and
# per-seed rows.

# %%
t2b = json.loads((ROOT / "experiments" / "results" / "mask_table2b.json").read_text())
m2b, seeds2b = t2b["metrics"], [str(s) for s in t2b["seeds"]]
print(f"{len(seeds2b)} seeds, evaluated on {t2b['eval_images']} images")
print(f"\n{'mask AP':>8} {'ours: AP':>14} {'AP50':>12} {'AP75':>12}   {'paper: AP':>9} {'AP50':>6} {'AP75':>6}")
for variant in ("softmax", "sigmoid"):
    s, paper = m2b["summary"][variant], m2b["paper"][variant]
    print(f"{variant:>8} " + " ".join(f"{s[k]['mean']:>7.1f} ± {s[k]['sd']:<4.1f}" for k in ("AP", "AP50", "AP75"))
          + f"   {paper['AP']:>9.1f} {paper['AP50']:>6.1f} {paper['AP75']:>6.1f}")
gap = m2b["sigmoid_minus_softmax"]["AP"]
print(f"\nsigmoid - softmax, AP: ours {gap['mean']:+.1f} ± {gap['sd']:.1f} (seeds "
      f"{', '.join(f'{d:+.1f}' for d in gap['diffs'])}), paper {m2b['paper']['sigmoid']['AP'] - m2b['paper']['softmax']['AP']:+.1f}")

# %% [markdown]
# The figure shows both: ours as bars (mean over seeds, ± sd) with a dot per seed, the
# paper's hatched beside them, on one scale.

# %%
figure = Figure(figsize=(9, 3.2), dpi=72, layout="constrained")
ax = figure.subplots()
for i, k in enumerate(("AP", "AP50", "AP75")):
    for j, variant in enumerate(("softmax", "sigmoid")):
        s, xpos = m2b["summary"][variant][k], i + (j - 1.5) * 0.2
        per_seed = [m2b["runs"][variant][seed][k] for seed in seeds2b]
        ax.bar(xpos, s["mean"], 0.2, yerr=s["sd"], capsize=3, color=f"C{1 - j}", ecolor="0.35")
        ax.plot(xpos + np.linspace(-0.05, 0.05, len(per_seed)), per_seed, "o", color="k", mfc="white", ms=4)
        ax.bar(xpos + 0.4, m2b["paper"][variant][k], 0.2, color=f"C{1 - j}", alpha=0.45, hatch="//", ec="k", lw=0.5)
ax.set(xticks=range(3), xticklabels=["AP", "AP50", "AP75"], ylabel="mask AP", ylim=(0, 100),
       title="Table 2b: softmax against sigmoid masks (ours: GT boxes as RoIs)")
ax.legend(handles=[Patch(color="C1", label="softmax, ours"), Patch(color="C0", label="sigmoid, ours"),
                   Line2D([], [], color="k", mfc="white", marker="o", ls="none", label="ours: one seed"),
                   Patch(fc="C1", alpha=0.45, hatch="//", ec="k", label="softmax, paper"),
                   Patch(fc="C0", alpha=0.45, hatch="//", ec="k", label="sigmoid, paper")],
          loc="upper left", bbox_to_anchor=(1.01, 1))
assert not viz.figure_problems(figure)
figure

# %% [markdown]
# In the figure our sigmoid bars stand far above our softmax bars, while the paper's hatched
# pair differs by a few points.
#
# **Verdict: reproduced, and far stronger than in the paper: sigmoid masks beat softmax
# masks in every seed, by about 40 AP points where the paper finds 5.5.**
#
# The reason, measured below: read as "any class against the background", the softmax
# models' masks come most of the way to the sigmoid's. The head has learnt *where* the
# object is. What it has not learnt is *which class* each pixel belongs to, a per-pixel
# choice among eight shapes from a 14 x 14 patch of small features. The sigmoid head never
# has to make that choice, because the box branch names the class and the mask head only
# segments. The softmax spreads each object pixel's probability over the classes, so the
# box's own class seldom wins the pixel: read at the box's class, the softmax masks keep
# only a few percent of the sigmoid's AP. On COCO, with a ResNet-50 whose features already tell classes apart, the
# paper loses 5.5 points to this coupling.

# %%
fg_share = [m2b["runs"]["softmax"][s]["AP_softmax_fg"] / m2b["runs"]["sigmoid"][s]["AP"] for s in seeds2b]
own_share = [m2b["runs"]["softmax"][s]["AP"] / m2b["runs"]["sigmoid"][s]["AP"] for s in seeds2b]
print(f"softmax masks read as any class against the background reach {min(fg_share):.0%} to {max(fg_share):.0%} "
      f"of the sigmoid masks' AP; read at the box's class, {min(own_share):.0%} to {max(own_share):.0%}")
assert all(d > 0 for d in gap["diffs"]) and 35 < gap["mean"] < 45 and min(fg_share) > 0.6 > 0.1 > max(own_share)

# %% [markdown]
# **What to take away.** The second stage reuses chapter 1's parts on proposals instead of
# anchors: match at IoU 0.5, sample a quarter foreground, classify into `K + 1` classes,
# regress one box per class, decode and NMS per class. The mask branch beside it is a
# small FCN on RoIAlign features. It predicts one mask per class and trains only the
# ground-truth class's channel with a per-pixel sigmoid; letting the classes compete
# through a softmax instead costs most of the mask AP on our data (section 4).

# %% [markdown]
# ## Exercises (`fpnbook.exercises`)
#
# `exercises.check(name, answer)` checks an answer: a number within a tolerance, or your
# function against the library's on random and edge cases, printing pass or the first
# failing case with both answers. Replace each `None` or `raise NotImplementedError`, then
# run the cell again. The solutions are in `fpnbook/solutions.py`; look after trying.
#
# 1. **Implement.** `mask_target(gt_mask, gt_box, roi, size)`: the `size x size` mask
#    target of one RoI matched to an object, from its 0/1 mask `[H, W]`, its box and the
#    RoI's box (XYXY pixels), cut as section 3 cuts it. `torchvision.ops.roi_align` may do
#    the sampling, with the settings the prompt names; which box cuts the mask is up to you.
# 2. **Derive.** How many numbers does the book's box predictor give per RoI for COCO's
#    K = 80 classes, class scores and class-specific box deltas together?
# 3. **Predict, then run.** In the figure cell of section 2, lower `threshold` from 0.5 to
#    0.1. How many boxes join the top-right panel, and do they sit on objects?
# 4. **Predict, then run.** In section 3, train on the masks under the ground-truth boxes:
#    put `val_target["boxes"][fg_matched]` in place of `fg_rois` in `boxes_with_index`. Which
#    check fails first, and why is that target wrong for the head?

# %%
from fpnbook import exercises


def my_mask_target(gt_mask, gt_box, roi, size):
    raise NotImplementedError  # your code here


exercises.check("ch5.mask_target", my_mask_target)
_ = exercises.check("ch5.box_outputs", None)  # your number in place of None
