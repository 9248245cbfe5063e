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
# # 2. Focal loss and RetinaNet: why one-stage detectors drown in easy negatives
#
# A two-stage detector (chapter 1's RPN followed by a second stage) looks at a few
# thousand proposals and samples them 1:3 foreground to background. A one-stage
# detector scores *every* anchor of *every* pyramid level directly, tens of thousands
# per image, and nearly all of them are plain background. Each of those easy negatives
# has a small loss, but there are so many that their sum outweighs the few objects:
# training spends its effort on what it already knows. Lin et al. (2017), *Focal Loss
# for Dense Object Detection*, reshape the cross entropy so that well-classified
# examples stop counting, and with that loss a plain one-stage detector, RetinaNet,
# beats the two-stage ones.
#
# 1. **RetinaNet from chapter 1's parts** (`fpnbook.retinanet`): backbone, FPN P3–P7,
#    9 anchors per location, two subnets.
# 2. **The imbalance, measured** (`RetinaNet.match`): positive, negative and ignored anchors per image.
# 3. **Three losses** (`fpnbook.losses`): CE, α-balanced CE and the focal loss; the paper's Figure 1.
# 4. **Where the loss comes from** in a trained model: the paper's Figure 4.
# 5. **An explorer** for γ and α (`fpnbook.widgets.focal`).
# 6. **The prior π = 0.01** on the classifier's bias, and what happens without it.
# 7. **The paper's Table 1 in miniature**: CE vs α-CE vs FL, trained the same way, COCO AP.
#
# Conventions (`fpnbook.boxes`): boxes are `(x1, y1, x2, y2)` in input-image pixels;
# labels run `1..8`, `0` is background. Level `Pk` has stride `2**k`.

# %% [markdown]
# **Paper.** Lin et al., [Focal Loss for Dense Object Detection](https://arxiv.org/abs/1708.02002):
# Sec. 4 and Fig. 3 (RetinaNet, section 1), Sec. 3 (cross entropy, α-balancing and the
# focal loss, sections 2-3), Fig. 4 (section 4), Sec. 3.3 and 4.1 (the prior π, section 6)
# and Table 1a-b (section 7).

# %%
# %matplotlib inline
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision

import fpnbook
from fpnbook import cli, data
from fpnbook.images import batch_images
from fpnbook.losses import cross_entropy_from_pt, focal_loss_from_pt, prior_bias, sigmoid_focal_loss
from fpnbook.models import retinanet_tiny
from fpnbook.widgets.focal import focal_explorer, focal_explorer_state

ROOT = Path.cwd().parent  # the repository root (the notebook runs in chapters/)
# One thread: these cells are small, and on a busy 2-core machine a second thread waits more than it helps.
torch.set_num_threads(1)
print("fpnbook", fpnbook.__version__, "| torch", torch.__version__, "| torchvision", torchvision.__version__)

# %% [markdown]
# ## 1. RetinaNet from chapter 1's parts (`fpnbook.retinanet`)
#
# RetinaNet is chapter 1's feature pyramid with a different head. The ResNet body gives
# C3–C5; the FPN turns them into P3–P5 and adds P6 (a stride-2 conv on C5) and P7 (one
# more on P6), so the pyramid runs from stride 8 to stride 128. At every position of
# every level sit **9 anchors**: aspect ratios 1:2, 1:1, 2:1 at three scales within one
# octave (`2**0`, `2**(1/3)`, `2**(2/3)` times the level's base size, a third of an octave
# apart). The paper's base sizes run from 32² on P3 to 512² on P7, four times each
# level's stride, for 800 px images; ours run from 16² to 256² (twice the stride, printed
# below), because our 256 px images hold objects from 8 px up. Two small fully
# convolutional subnets, shared by all levels, read each map: the **classification
# subnet** gives `A·K` sigmoid scores per position (one per anchor and class; no
# background class), the **box subnet** `A·4` box deltas. The paper uses ResNet-50,
# 256-channel maps and 4 conv layers per subnet; our book-sized model keeps the
# layout at a fraction of the width, and adds GroupNorm to the subnets because it
# trains from scratch in minutes (see `RetinaNetHead`).

# %%
torch.manual_seed(0)
val = data.CocoDataset(*data.val_paths())
model = retinanet_tiny(val.num_classes, head_norm="gn")
image, target = val[0]
with torch.no_grad():
    features = model.backbone(image[None])
for name, level in features.items():
    print(f"{name}: {tuple(level.shape[1:])}, stride {image.shape[-1] // level.shape[-1]}")
print("anchors per location:", model.anchor_generator.num_anchors_per_location())
print("anchor sizes per level (px):", [tuple(round(s) for s in sizes) for sizes in model.anchor_generator.sizes])


def count(module):
    return sum(p.numel() for p in module.parameters())


parts = {"ResNet body": model.backbone.backbone, "FPN (P3-P7)": model.backbone.fpn,
         "classification subnet (4 convs)": model.head.cls_subnet, "  -> logits, A*K channels": model.head.cls_logits,
         "box subnet (4 convs)": model.head.box_subnet, "  -> deltas, A*4 channels": model.head.bbox_pred}
for name, part in parts.items():
    print(f"{name:34s} {count(part):>9,} parameters")
print(f"{'RetinaNet':34s} {count(model):>9,} parameters")
assert count(model) == sum(count(p) for p in parts.values())

# %% [markdown]
# One forward pass in each mode. In training mode (images and targets in) the model
# returns its two losses; in eval mode, detections. A fresh model returns **no
# detections at all**: its classifier starts out saying "background, probability 0.99"
# for every anchor (section 6 explains why), below the 0.05 score threshold.

# %%
torch.manual_seed(0)
with torch.no_grad():
    head = model.head(list(features.values()))
    losses = model.train()([image], [{"boxes": target["boxes"], "labels": target["labels"]}])
    detections = model.eval()([image])
print("cls_logits:", tuple(head["cls_logits"].shape), "| bbox_regression:", tuple(head["bbox_regression"].shape))
print("training-mode losses:", {k: round(v.item(), 3) for k, v in losses.items()})
print("eval-mode detections in image 0:", len(detections[0]["boxes"]),
      "| highest foreground probability:", round(torch.sigmoid(head["cls_logits"]).max().item(), 4))

# %% [markdown]
# ## 2. The imbalance, measured (`RetinaNet.match`)
#
# Training labels each anchor by its best IoU with a ground-truth box: at least 0.5 is
# **positive** (foreground), below 0.4 is **negative** (background), in between is
# **ignored**. Each object also keeps the anchors that overlap it best, so tiny objects
# get one. `RetinaNet.match` returns, per image and anchor, the matched object's index,
# `-1` for background and `-2` for ignored. Here are the counts on the 48 validation
# images.

# %%
maps = [torch.empty(1, 1, 256 // 2**k, 256 // 2**k) for k in range(3, 8)]  # only their sizes matter
anchors = model.anchor_generator((256, 256), maps)
targets = [val[i][1] for i in range(len(val))]
matched = model.match(targets, anchors)  # [48, N]
counts = {"positive": (matched >= 0).sum(1), "negative": (matched == -1).sum(1), "ignored": (matched == -2).sum(1)}
print(f"{len(anchors):,} anchors per 256 x 256 image, {len(val)} images")
for name, c in counts.items():
    print(f"{name:>8}: mean {c.float().mean():8.1f}   min {c.min():6d}   max {c.max():6d}   "
          f"share {c.sum() / matched.numel():.4f}")
objects = torch.tensor([len(t["labels"]) for t in targets])
pos, neg = counts["positive"].sum().item(), counts["negative"].sum().item()
print(f"objects per image: mean {objects.float().mean():.1f}; positive anchors per object: {pos / objects.sum():.1f}")
print(f"negative anchors per positive one: {neg / pos:.0f}")
K = val.num_classes
# Sigmoid classification: each anchor is K binary examples (one per class).
print(f"binary (anchor, class) examples per positive one: {(neg * K + pos * (K - 1)) / pos:.0f}")

# %% [markdown]
# So for every positive example the classifier sees hundreds of negatives, and since each
# anchor is scored once per class, the binary examples are more lopsided still. The
# paper's 800-pixel COCO images have ~100k anchors each, nearly all of them easy
# negatives: the same picture, larger.
#
# **Why a two-stage detector does not drown.** Its classifier never sees the dense
# anchors. The RPN scores them (and samples 256 per image, half positive at most, for its
# own loss); then only its best proposals reach the second stage, which samples 128 RoIs
# per image with at most 25% foreground. The shipped Mask R-CNN, stage by stage, on the
# same 48 images: the share of foreground among what each stage looks at (the RPN's
# positives, IoU ≥ 0.7, among its labelled anchors; then IoU ≥ 0.5 with an object).

# %%
two_stage, _ = cli.load_model(ROOT / "checkpoints" / "mask_rcnn.pt")
two_stage.train()  # training-time proposal counts and sampling
stages = {"anchors": [0, 0], "RPN proposals": [0, 0], "sampled RoIs": [0, 0]}
torch.manual_seed(0)
with torch.no_grad():
    for index in range(len(val)):
        image, target = val[index]
        batch, sizes = batch_images([image])
        features = two_stage.backbone(batch)
        rpn_anchors, logits, deltas, per_level = two_stage.rpn.predict(batch, sizes, features)
        labels, _ = two_stage.rpn.assign_targets(rpn_anchors, [target])
        stages["anchors"][0] += int((labels[0] == 1).sum())
        stages["anchors"][1] += int((labels[0] >= 0).sum())
        proposals = [p["boxes"] for p in two_stage.rpn.select_proposals(rpn_anchors, logits, deltas, sizes, per_level)]
        if len(target["boxes"]):
            best = torchvision.ops.box_iou(proposals[0], target["boxes"]).max(dim=1).values
            stages["RPN proposals"][0] += int((best >= 0.5).sum())
        stages["RPN proposals"][1] += len(proposals[0])
        _, _, roi_labels, _ = two_stage.roi_heads.select_training_samples(proposals, [target])
        stages["sampled RoIs"][0] += int((roi_labels[0] > 0).sum())
        stages["sampled RoIs"][1] += len(roi_labels[0])
retina_share = pos / (pos + neg)
print(f"{'RetinaNet, every labelled anchor':<34}{pos / len(val):>9.1f} foreground of {(pos + neg) / len(val):>8.0f} "
      f"per image: {retina_share:.2%}")
for name, (fg, total) in stages.items():
    print(f"{'Mask R-CNN, ' + name:<34}{fg / len(val):>9.1f} foreground of {total / len(val):>8.0f} "
          f"per image: {fg / total:.2%}")
lift = stages["sampled RoIs"][0] / stages["sampled RoIs"][1] / retina_share
print(f"the second stage's classifier sees {lift:.0f} times RetinaNet's share of foreground")
assert lift > 20

# %% [markdown]
# The proposals and the sampler do for a two-stage detector what the focal loss does for a
# dense one: the classifier that names the objects trains on a sample in which foreground
# is common, not one example in hundreds.
#
# ## 3. Three losses (`fpnbook.losses`)
#
# Let `p` be the model's probability that an anchor shows class `k`, and `p_t` the
# probability it gives the **truth**: `p_t = p` for a positive, `1 − p` for a negative.
# Then, for one binary example,
#
# | loss | formula |
# |---|---|
# | cross entropy | $\mathrm{CE}(p_t) = -\log p_t$ |
# | α-balanced CE | $\mathrm{CE}_\alpha(p_t) = -\alpha_t \log p_t$, with $\alpha_t = \alpha$ for positives and $1 - \alpha$ for negatives |
# | focal loss | $\mathrm{FL}(p_t) = -\alpha_t (1 - p_t)^\gamma \log p_t$ |
#
# The modulating factor `(1 − p_t)^γ` goes to 0 as an example becomes easy (`p_t → 1`)
# and to 1 for a badly misclassified one. α only re-weights the two classes; it cannot
# tell easy from hard. The paper uses γ = 2, α = 0.25 (α < 0.5 *down*-weights the
# positives: once γ has silenced the easy negatives, the positives no longer need a boost).
# `sigmoid_focal_loss` takes logits, like torchvision's, and computes `log(p_t)` from them
# directly so it stays finite for any logit.

# %%
print(" p_t     CE      FL(γ=2)   CE / FL")
for p_t in (0.1, 0.5, 0.9, 0.968, 0.99):
    ce, fl = cross_entropy_from_pt(p_t).item(), focal_loss_from_pt(p_t, gamma=2.0).item()
    print(f"{p_t:5.3f}  {ce:6.4f}  {fl:8.6f}  {ce / fl:8.1f}")

torch.manual_seed(0)
logits, labels = 4 * torch.randn(1000, 8), (torch.rand(1000, 8) < 0.1).float()
ours = sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0, reduction="sum")
theirs = torchvision.ops.sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0, reduction="sum")
print(f"fpnbook {ours.item():.4f} | torchvision {theirs.item():.4f}")
assert torch.allclose(ours, theirs)
assert torch.allclose(sigmoid_focal_loss(logits, labels, alpha=-1, gamma=0.0),
                      torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none"))

# %% [markdown]
# The loss by hand, from the formula. `log p_t` must not be computed as `log(sigmoid(x))`,
# which is `-inf` once `sigmoid(x)` rounds to 0: it is the negative of the binary cross
# entropy on logits, `max(x, 0) − x t + log(1 + exp(−|x|))`, finite for any `x`. The result
# equals fpnbook's and torchvision's, and so do the gradients with respect to the logits.

# %%
def focal_loss_by_hand(x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    log_pt = -(x.clamp(min=0) - x * t + torch.log1p(torch.exp(-x.abs())))  # log p_t, stable
    p = torch.sigmoid(x)
    one_minus_pt = p * (1 - t) + (1 - p) * t
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return -alpha_t * one_minus_pt**gamma * log_pt


x = (8 * torch.randn(400, generator=torch.Generator().manual_seed(1))).requires_grad_()
t = (torch.rand(400, generator=torch.Generator().manual_seed(2)) < 0.2).float()
grads = {}
for name, loss_fn in (("by hand", focal_loss_by_hand), ("fpnbook", sigmoid_focal_loss),
                      ("torchvision", torchvision.ops.sigmoid_focal_loss)):
    loss = loss_fn(x, t, 0.25, 2.0).sum()
    grads[name], = torch.autograd.grad(loss, x)
    print(f"{name:<12} loss {loss.item():.6f}")
assert torch.allclose(grads["by hand"], grads["fpnbook"], atol=1e-6)
assert torch.allclose(grads["by hand"], grads["torchvision"], atol=1e-6)
extreme = torch.tensor([60.0, -60.0])
print("at logits ±60, targets 0 and 1:", focal_loss_by_hand(extreme, torch.tensor([0.0, 1.0]), 0.25, 2.0).tolist())
print("gradients agree, largest difference:",
      f"{max((grads['by hand'] - g).abs().max().item() for g in grads.values()):.1e}")

# %% [markdown]
# The paper's Figure 1: the loss against `p_t` for several γ (no α). With γ = 0 it is the
# cross entropy, and even at `p_t` around 0.9, an example the model gets right, the loss
# is far from zero. Larger γ flattens the easy end.

# %%
p_t = torch.linspace(0.001, 1, 500)
fig, ax = plt.subplots(figsize=(6, 3.5), dpi=72)
for gamma in (0, 0.5, 1, 2, 5):
    ax.plot(p_t, focal_loss_from_pt(p_t, gamma), label=f"γ = {gamma}")
ax.axvspan(0.6, 1, color="C2", alpha=0.1)
ax.text(0.8, 4.2, "well-classified\nexamples", ha="center")
ax.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of ground truth class", ylabel="loss",
       title="Figure 1 of the paper: FL = (1 - p_t)^γ CE")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. Where the loss comes from in a trained model (the paper's Figure 4)
#
# The paper takes a converged RetinaNet (trained with γ = 2), scores many images, and asks,
# for each γ: if we apply FL with this γ to the model's outputs, sort the examples from
# easy to hard and add up their losses, what fraction of the total comes from the hardest
# few? We ask the same of the book's trained RetinaNet (`checkpoints/retinanet.pt`, card
# in `checkpoints/retinanet.md`) on the validation split: every labelled (anchor, class)
# pair is one example, positive when the anchor is matched to an object of that class.
# The histogram of the classifier's logits, split into positives and negatives, is all
# the curves need.

# %%
retinanet, _ = cli.load_model(ROOT / "checkpoints" / "retinanet.pt")
val_set = data.CocoDataset(*data.val_paths())
edges = torch.linspace(-30, 30, 1201, dtype=torch.float64)
pos_counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
neg_counts = torch.zeros_like(pos_counts)
with torch.no_grad():
    for i in range(0, len(val_set), 8):
        imgs, targets = zip(*(val_set[j] for j in range(i, min(i + 8, len(val_set)))))
        batch, _ = batch_images(list(imgs))
        features = list(retinanet.backbone(batch).values())
        logits = retinanet.head(features)["cls_logits"].double()                     # [B, N, K]
        anchors = torch.cat(retinanet.anchor_generator.anchors_per_level(tuple(batch.shape[-2:]), features))
        matched = retinanet.match(targets, anchors)                                    # [B, N]: -1 bg, -2 ignored
        labelled = matched != -2
        classes = torch.stack([torch.where(m >= 0, t["labels"][m.clamp(min=0)], 0) if len(t["labels"])
                               else torch.zeros_like(m) for m, t in zip(matched, targets)])
        positive = torch.nn.functional.one_hot(classes, retinanet.num_classes + 1)[..., 1:].bool()
        positive &= labelled[..., None]
        negative = ~positive & labelled[..., None]
        pos_counts += torch.histogram(logits[positive].clamp(-30, 30), edges).hist
        neg_counts += torch.histogram(logits[negative].clamp(-30, 30), edges).hist
centres = (edges[1:] + edges[:-1]) / 2
pos_pt, neg_pt = torch.sigmoid(centres), torch.sigmoid(-centres)  # p_t = p for positives, 1 - p for negatives
print(f"{len(val_set)} images: {int(pos_counts.sum()):,} positive and {int(neg_counts.sum()):,} negative examples "
      f"({neg_counts.sum() / pos_counts.sum():,.0f} negatives per positive)")
print(f"median p_t: positives {np.median(np.repeat(pos_pt.numpy(), pos_counts.int().numpy())):.3f}, "
      f"negatives {np.median(np.repeat(neg_pt.numpy()[neg_counts > 0], neg_counts[neg_counts > 0].int().numpy())):.5f}")


def cumulative_loss(pt, counts, gamma):
    """Fractions of examples and of their total loss, examples sorted easy (high p_t) to hard."""
    order = torch.argsort(pt, descending=True)
    n, loss = counts[order], counts[order] * focal_loss_from_pt(pt[order], gamma)
    return (torch.cumsum(n, 0) / n.sum()).numpy(), (torch.cumsum(loss, 0) / loss.sum()).numpy()


def hardest_share(pt, counts, gamma, fraction):
    """Share of the total loss that the hardest ``fraction`` of the examples carry."""
    x, y = cumulative_loss(pt, counts, gamma)
    return 1 - np.interp(1 - fraction, np.concatenate([[0], x]), np.concatenate([[0], y]))


GAMMAS = (0, 0.5, 1, 2)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=72)
for gamma in GAMMAS:
    axes[0].plot(*cumulative_loss(pos_pt, pos_counts, gamma), label=f"γ = {gamma}")
    axes[1].plot(*cumulative_loss(neg_pt, neg_counts, gamma), label=f"γ = {gamma}")
for ax, kind in zip(axes, ("positive", "negative")):
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"fraction of {kind} examples (easy to hard)",
           ylabel="cumulative normalised loss", title=f"{kind} examples")
    ax.legend()
plt.show()
print("share of the loss carried by the hardest 1% / 10% of examples")
for gamma in GAMMAS:
    pos_share = [hardest_share(pos_pt, pos_counts, gamma, f) for f in (0.01, 0.1)]
    neg_share = [hardest_share(neg_pt, neg_counts, gamma, f) for f in (0.01, 0.1)]
    print(f"γ = {gamma:<3}  positives {pos_share[0]:.2f} / {pos_share[1]:.2f}   "
          f"negatives {neg_share[0]:.2f} / {neg_share[1]:.2f}")
assert hardest_share(neg_pt, neg_counts, 2, 0.01) > hardest_share(neg_pt, neg_counts, 0, 0.01)
print(f"at γ = 2 the hardest 1% of the negatives carry {hardest_share(neg_pt, neg_counts, 2, 0.01):.0%} of the "
      f"negatives' loss (at γ = 0: {hardest_share(neg_pt, neg_counts, 0, 0.01):.0%})")

# %% [markdown]
# The left panel barely changes with γ: the positives' loss is spread over them in much
# the same way whatever γ is. The right panel is the point of the paper. Under CE
# (γ = 0) the negatives' curve rises almost evenly: each of the millions of easy
# negatives adds its small share, and together they are most of the loss. As γ grows
# the curve hugs the axis longer and shoots up at the end; the last line of the printout
# gives the share of the hardest 1% of the negatives at γ = 2 against γ = 0. The focal
# loss spends the gradient on the negatives that can still
# fool the detector. (The paper's model, trained on COCO for a day, is more confident
# still, so its curves are more extreme.)
#
# ## 5. An explorer for γ and α (`fpnbook.widgets.focal`)
#
# `focal_explorer_state(gamma, alpha, pos_pt, neg_pt, pos_weight, neg_weight, easy_pt=0.9)`
# computes what the explorer draws: the α-weighted loss curves, and how the **total**
# classification loss over the given examples splits between positives, hard negatives
# and **easy negatives**, which we define as negatives the model already gets right with
# `p_t > 0.9`. We feed it the trained RetinaNet's validation examples from section 4 (the
# histogram counts are the weights). First the plain function, then the widget.

# %%
explorer_data = dict(pos_pt=pos_pt, neg_pt=neg_pt, pos_weight=pos_counts, neg_weight=neg_counts)
print("  γ     α     positives  hard neg.  easy neg. (share of the total loss)")
for gamma, alpha in ((0, 0.5), (0, 0.75), (0.5, 0.25), (1, 0.25), (2, 0.25), (5, 0.25)):
    s = focal_explorer_state(gamma, alpha, **explorer_data)
    print(f"{gamma:4}  {alpha:4}   {s['positive_share']:9.3f}  {s['hard_negative_share']:9.3f}  "
          f"{s['easy_negative_share']:9.3f}")
shares = [focal_explorer_state(g, 0.25, **explorer_data)["easy_negative_share"] for g in (0, 1, 2, 5)]
assert all(a > b for a, b in zip(shares, shares[1:]))

# %% [markdown]
# Drag the sliders: **γ** reshapes the curve (left) and moves loss off the easy negatives
# (right, and the number under the sliders); **α** only tilts positives against negatives.
# (On the book's website the explorer shows its saved state; dragging needs a kernel, `make lab`.)
# α can only trade positives against negatives: it scales easy and hard negatives alike,
# so among the negatives the easy ones keep their share whatever α is. Only γ tells them apart.

# %%
# NBVAL_IGNORE_OUTPUT
explorer = focal_explorer(**explorer_data, gamma=2.0, alpha=0.25)
assert "easy negatives" in explorer.share.value
explorer

# %% [markdown]
# ## 6. The prior π = 0.01 (`fpnbook.losses.prior_bias`)
#
# A freshly initialised classifier with bias 0 gives every (anchor, class) pair `p = 0.5`.
# With tens of thousands of negatives per image, each contributing `−log(0.5)`, the
# first loss is enormous and its gradient says one thing only: "everything is
# background". The paper instead sets the bias of the last classification conv to
# `b = −log((1 − π)/π)` so that every anchor starts at foreground probability π = 0.01:
# the negatives start out nearly right, the loss starts small, and the positives drive
# the first steps. The paper reports that plain CE without the prior diverges at once.

# %%
print(f"prior_bias(0.01) = {prior_bias(0.01):.4f}  (sigmoid of it: {torch.sigmoid(torch.tensor(prior_bias(0.01))):.4f})")
images = [val[i][0] for i in range(2)]
batch_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets[:2]]
print("classification loss of a fresh model on 2 images:")
for loss in ("ce", "focal"):
    for prior in (0.01, 0.5):
        torch.manual_seed(0)
        fresh = retinanet_tiny(K, head_norm="gn", loss=loss, prior=prior)
        with torch.no_grad():
            value = fresh(images, batch_targets)["classification"].item()
        print(f"  {loss:>5}, π = {prior:<4} (bias {prior_bias(prior):+.2f}): {value:10.3f}")

# %% [markdown]
# Without the prior the first loss is far larger, for CE and FL alike:
# the focal loss damps easy examples, but at `p = 0.5` nothing is easy yet. What that
# does to training: a few SGD steps with CE on the same two images, with and without the
# prior, with the same model, seed and learning rate (0.01, momentum 0.9, no gradient
# clipping).

# %%
def ce_steps(prior, steps=6, lr=0.01):
    torch.manual_seed(0)
    net = retinanet_tiny(K, head_norm="gn", loss="ce", prior=prior).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    history = []
    for _ in range(steps):
        loss = sum(net(images, batch_targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


for prior in (0.01, 0.5):
    print(f"CE, π = {prior:<4}: loss per step", [f"{v:.4g}" for v in ce_steps(prior)])

# %% [markdown]
# With the prior, the loss falls from the first step. Without it, the first step is one
# huge shove of every score towards background, and after it the loss climbs step after
# step: the start of the instability the paper reports. (`fpnbook.train` also clips
# gradients, which hides much of this; the prior makes the clipping unnecessary at the start.)

# %% [markdown]
# ## 7. The paper's Table 1 in miniature (`experiments/focal_table1.py`)
#
# The paper compares losses on RetinaNet R-50 at 600 pixels (COCO minival): the best
# α-balanced CE (α = 0.75) reaches 31.1 AP, the focal loss (γ = 2, α = 0.25) 34.0 AP,
# **+2.9 AP** from the loss alone. Our miniature trains the tiny RetinaNet three times
# with everything equal (initial weights, π = 0.01 prior, images, schedule, seed) except
# the classification loss: plain CE, α-CE with the paper's best α = 0.75 (we take the
# paper's choice rather than sweep α, to fit a CPU budget), and FL with γ = 2, α = 0.25.
# Each is scored by COCO box AP (pycocotools) on the 48 validation images. The run is
# committed; this cell reads it.

# %%
record = json.loads((ROOT / "experiments" / "results" / "focal_table1.json").read_text())
setup, metrics = record["metrics"]["setup"], record["metrics"]
print("command:", record["command"])
print("hardware:", record["hardware"], "| wall time:", round(record["wall_time_s"] / 60, 1), "min")
print("setup:", {k: setup[k] for k in ("train_images", "image_size", "iterations", "batch_size", "lr", "val_images")})
variants = [v for v in ("ce", "alpha_ce", "fl", "fl_g1", "fl_g5") if v in metrics]
names = {"ce": "CE", "alpha_ce": "α-CE", "fl": "FL", "fl_g1": "FL", "fl_g5": "FL"}
print(f"\n{'loss':6s} {'γ':>4s} {'α':>5s} | {'AP':>5s} {'AP50':>5s} {'AP75':>5s} | paper AP (R-50, 600 px)")
for v in variants:
    m, paper = metrics[v], metrics["paper"][v]
    alpha = "-" if m["alpha"] < 0 else f"{m['alpha']:.2f}"
    print(f"{names[v]:6s} {m['gamma']:4.1f} {alpha:>5s} | {m['AP']:5.1f} {m['AP50']:5.1f} {m['AP75']:5.1f} | "
          f"{paper['AP']:5.1f}  ({paper['note']})")
gain = metrics["fl"]["AP"] - metrics["alpha_ce"]["AP"]
print(f"\nFL - best α-CE: ours {gain:+.1f} AP, paper {34.0 - 31.1:+.1f} AP")
ours = [metrics[v]["AP"] for v in variants]
print(f"spread of our APs (best - worst): {max(ours) - min(ours):.1f} AP; CPU seconds per training run: "
      f"{[metrics[v]['train_cpu_s'] for v in variants]}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), dpi=72, width_ratios=(1, 1, 1.4), layout="constrained")
x = np.arange(len(variants))
labels = [f"{names[v]}\nγ={metrics[v]['gamma']:g}" + (f"\nα={metrics[v]['alpha']:g}" if metrics[v]["alpha"] >= 0 else "")
          for v in variants]
for ax, (title, values) in zip(axes, (("ours (tiny, 256 px)", [metrics[v]["AP"] for v in variants]),
                                      ("paper (R-50, 600 px)", [metrics["paper"][v]["AP"] for v in variants]))):
    bars = ax.bar(x, values, color=[f"C{i}" for i in x])
    ax.bar_label(bars, fmt="%.1f", fontsize=9)
    ax.set(xticks=x, xticklabels=labels, ylabel="COCO box AP (%)", title=title, ylim=(0, 1.2 * max(values)))
for i, v in enumerate(variants):
    axes[2].plot(metrics[v]["steps"], metrics[v]["box_loss"], color=f"C{i}", label=labels[i].replace("\n", " "))
axes[2].set(xlabel="training step", ylabel="box regression loss (L1)", title="the shared box loss")
axes[2].legend(fontsize=9)
plt.show()

# %% [markdown]
# **Our miniature does not reproduce the paper's gain.** All three losses reach only a few
# AP, and the focal loss is not ahead of α-CE (the printout above). Three things
# separate this run from the paper's, and each may hide the effect (we have not measured
# which):
#
# * **Schedule.** Ours sees the 1000 training images twice; the paper trains for 90k
#   iterations of 16 images. Far from convergence, AP mostly says how fast a loss moves
#   at the start, and at one learning rate FL moves more slowly: its loss, and so its
#   gradient, is several times smaller than CE's (section 6, and the loss columns of the
#   JSON). FL's advantage is about what the model learns once the easy negatives are
#   learned, which our runs barely reach.
# * **Less imbalance, and CE kept safe.** A 256-pixel image has about 12k anchors, not
#   ~100k; and all three runs start from the π = 0.01 prior, with GroupNorm in the head
#   and gradient clipping, so plain CE trains stably here (without the prior it would not:
#   section 6).
# * **Noise.** 48 validation images and a single seed: differences of a fraction of an AP
#   point can come from the seed alone.
#
# What does carry over from the paper is the mechanism of section 4: the trained FL
# model's loss is concentrated on its hardest negatives, where CE would spread it over
# millions of easy ones. The right panel shows the box loss, which all three runs share;
# their classification losses are different functions and cannot be compared.
#
# To reproduce, and to try a longer schedule (each run is about 4 CPU-minutes; on our
# busy shared machine the three took the wall time printed above; `--smoke` runs in seconds):
#
# ```
# python -m experiments.focal_table1 --threads 1 --iterations 500
# python -m experiments.focal_table1 --iterations 2000 --variants alpha_ce fl
# python -m experiments.focal_table1 --smoke
# ```

# %% [markdown]
# ## Exercises (`fpnbook.exercises`)
#
# `exercises.check(name, answer)` checks an answer: a number within a tolerance, or your
# function against the library's on random and edge cases, printing pass or the first
# failing case with both answers. Replace each `None` or `raise NotImplementedError`, then
# run the cell again. The solutions are in `fpnbook/solutions.py`; look after trying.
#
# 1. **Derive.** The bias `b` that makes `sigmoid(b) = 0.01`, the prior of section 6.
# 2. **Derive.** One positive at `p_t = 0.1` and 1000 easy negatives at `p_t = 0.99`, no α:
#    the smallest γ in {0, 0.5, 1, 2, 5} at which the negatives carry under 10% of the loss.
# 3. **Implement.** `sigmoid_focal_loss(inputs, targets, alpha, gamma)`, elementwise
#    `-α_t (1 - p_t)^γ log p_t`, finite for logits of any size (the checker tries ±40).
# 4. **Predict, then run.** In the explorer, will α = 0.75 raise or lower the positives'
#    share of the loss at γ = 2? Drag α and read the shares.

# %%
from fpnbook import exercises

exercises.check("ch2.prior_bias", None)  # your number in place of None
exercises.check("ch2.gamma", None)


def my_focal_loss(inputs, targets, alpha, gamma):
    raise NotImplementedError  # your code here


exercises.check("ch2.focal_loss", my_focal_loss)
