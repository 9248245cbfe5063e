"""Learning to Segment Every Thing (Hu et al. 2018), Table 1 in miniature: masks for classes trained with boxes only.

    python -m experiments.lse_table1 [--smoke] [--seeds 0 1 2] [--eval-images 256] [--threads 2] [--resume]
        [--init backbone|scratch] [--directions A->B B->A] [--merge RECORD ...]

Measured for the committed record, the two directions as two one-thread processes side by
side (``--directions``, each with its own ``--out``, then ``--merge`` into one record):
per direction and seed, stage 1 6.5-8.5 min, pooling 1.5, then 10 rows of about 75 s each
(mask branch training 25-60 s, scoring 256 images 30-60 s), about 22 min; 65 min a
direction for 3 seeds. ``--init scratch`` trains one detector for both directions.

Partial supervision on the shapes data: every class has boxes, only the classes of
set A have masks; mask AP is measured on the other set, B, whose masks training never
sees. Both directions are run, A->B and B->A (``data.SPLIT_A`` / ``data.SPLIT_B``, four
shapes each), like the paper's voc->non-voc and non-voc->voc.

Protocol (the paper's Table 1a-c is *stage-wise*; so is ours), repeated whole for every
seed of ``--seeds`` (the stage-1 detector, the pooling and every variant use that seed;
the training split is the same cached one, seed 0, for all):

1. Stage 1: a tiny Faster R-CNN (``models.faster_rcnn_tiny``) learns the boxes of all eight
   classes. With ``--init backbone`` each direction has its own, started from a backbone
   pretrained with the shapes of its seen set only (:data:`BACKBONES`; ``load_backbone``
   refuses any other), as the paper's start from ImageNet, which holds no COCO masks; with
   ``--init scratch``, one detector from random weights serves both directions (the first
   record's setup). Its backbone, FPN and RPN stay frozen from here on.
2. Every training image's RoIs are sampled and pooled once through the frozen detector
   (128 RoIs per image, up to 25% foreground): the box head's 7x7 features and, for
   foreground RoIs, the mask head's 14x14 features. Mask targets are cut from a
   dataset built with ``mask_classes`` = A (B masks zeroed, ``has_mask`` False) and
   only RoIs matched to objects with a mask get one, so no B mask pixel is ever read.
3. Each variant is a Mask^X R-CNN (``rcnn.to_mask_x``) on the stage-1
   detector, whose mask branch (mask head + predictor, and T) trains on the pooled
   features for the same number of steps, seed and learning rate:

   - class-agnostic: one mask for every class (the baseline; its logits start at std
     0.001, as in the authors' code);
   - transfer with T reading cls / box / cls+box weights (2-layer LeakyReLU MLP), and
     cls+box with a linear T; transfer+MLP (the fused head);
   - "e2e": our stand-in for end-to-end training. The box head and box predictor train
     *jointly* with the mask branch (box losses on all classes + mask loss on A), with
     and without stop-gradient on omega_det. Backbone and RPN stay frozen (training
     them end to end per variant is beyond a CPU budget), so this tests what the
     paper's stop-gradient ablation is about, the mask loss reaching the box weights,
     not the gain of end-to-end features;
   - oracle: a class-specific Mask R-CNN mask branch trained with the masks of all
     classes (once per seed; scored on B of each direction): the upper bound. Not in the
     paper: the same with a class-agnostic head, to show how much B's masks help at all.

Scoring: pycocotools mask AP (and AP50, AP75) on a generated split of ``--eval-images``
images (seed :data:`EVAL_SEED`, which no training split or other record uses), with the
ground truth and the predictions restricted to B's categories; box AP on B and mask AP
on A for context. Mask AP is also computed with the true boxes and labels as the
detections (score 1), which measures the mask branch alone. The e2e runs also record how
far the box weights moved from stage 1, A rows against B rows.

The record (``metrics``), in the format of the other seeded tables:

- ``runs[ROW][str(seed)]``: one row per direction and variant, named
  ``"DIRECTION/VARIANT"`` with DIRECTION ``A->B`` or ``B->A`` and VARIANT a key of
  :data:`VARIANTS` or an oracle, e.g. ``"A->B/transfer cls+box"`` or
  ``"B->A/oracle (all masks)"`` (:func:`row_name`). Each holds :data:`METRICS`
  (``mask_AP``, ``mask_AP50``, ``mask_AP75``, ``box_AP``, ``seen_mask_AP`` and their
  ``true_box_`` counterparts, in %), the logged ``loss``, ``train_s`` (and ``eval_s``),
  and for the e2e rows ``omega_drift_A`` / ``omega_drift_B``. An oracle's two rows of a
  seed share one trained head (and its ``loss`` and ``train_s``).
- ``summary[ROW][METRIC]``: mean and sd over the seeds (``common.summarise``).
- ``claims``: the paper's orderings of :data:`CLAIMS`, in both directions, on B's mask AP
  with detected boxes (the paper's metric) and with the true boxes, each with a per-seed
  paired verdict (``common.compare``) and the paper's gap (None: see :data:`PAPER`).
- ``drift``: mean and sd of the e2e rows' omega drift, and per direction the paired verdicts
  that stop-gradient keeps the seen (A) rows of omega_det closer to stage 1, and moving like the
  unseen ones (:func:`drift`).
- ``stages[str(seed)][DIRECTION]``: the stage-1 loss curve, foreground RoIs and timings of that seed and direction;
  ``directions``: the two direction names; ``setup``, ``paper``, ``chapter_models``.

``--smoke`` runs one seed, five variants and the oracles for two steps each on the first
two images of the committed validation split. ``--resume`` keeps the rows of a stopped
run's partial record (``lse_table1.partial.json``); a seed whose rows are all there skips
its stage 1 and pooling, any other seed recomputes them.

Writes ``experiments/results/lse_table1.json`` and, for chapter 4's pictures, small
fp16 state dicts of the first seed (``lse_table1_*.pt``: the stage-1 backbone + box
predictor, and the A->B class-agnostic and transfer cls+box mask branches), in full mode
or with ``--save-models``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from experiments import common
from experiments.gt_box_masks import restricted_gt
from fpnbook import data, models, rcnn
from fpnbook import weight_transfer as wt
from fpnbook.anchors import ASPECT_RATIOS, AnchorGenerator
from fpnbook.checkpoint import load_backbone, read_backbone
from fpnbook.evaluate import coco_evaluate, to_coco_results
from fpnbook.images import batch_images
from fpnbook.roi_heads import fast_rcnn_loss, mask_loss, paste_masks_in_image, project_masks_on_boxes
from fpnbook.rpn import SMALL_ANCHOR_SIZES, RegionProposalNetwork, RPNHead
from fpnbook.train import DETECTRON_RECIPE, TrainConfig, batch_indices, make_optimizer, make_scheduler, train

NAME = "lse_table1"
NUM_CLASSES = len(data.SHAPE_CLASSES)  # K = 8: labels equal category ids 1..8 (the models add the background)
DIRECTIONS = {"A->B": (data.SPLIT_A, data.SPLIT_B), "B->A": (data.SPLIT_B, data.SPLIT_A)}
ROIS_PER_IMAGE = 128  # the paper's 512 is for ~800 px images with many more objects
# Stage 2 runs a dozen and a half mask branches on a CPU: a mask head of 4 x 32 channels
# (the library's tiny model has 4 x 64) and at most 16 foreground RoIs per image and step.
MASK_LAYERS, MASK_DIM = (32,) * 4, 32
MASK_ROIS_PER_IMAGE = 16

# name -> (transfer inputs or None, kind of T, MLP branch, how it trains, stop-gradient)
VARIANTS = {
    "class-agnostic": (None, None, False, "sw", True),
    "transfer cls": ("cls", "mlp", False, "sw", True),
    "transfer box": ("box", "mlp", False, "sw", True),
    "transfer cls+box": ("cls+box", "mlp", False, "sw", True),
    "transfer cls+box, linear T": ("cls+box", "linear", False, "sw", True),
    "transfer+MLP": ("cls+box", "mlp", True, "sw", True),
    "transfer, e2e": ("cls+box", "mlp", False, "e2e", False),
    "transfer, e2e + stop-grad": ("cls+box", "mlp", False, "e2e", True),
}
ORACLE = "oracle (all masks)"
# Not in the paper: how much do B's masks help a class-agnostic head at all? Its gap to
# the class-agnostic row is all that any transfer from A to B could win back.
ORACLE_AGNOSTIC = "oracle, class-agnostic"
ORACLES = (ORACLE, ORACLE_AGNOSTIC)
# Every code path and every row of the claims, in a few seconds.
SMOKE_VARIANTS = ["class-agnostic", "transfer cls+box", "transfer+MLP", "transfer, e2e", "transfer, e2e + stop-grad"]
# --init backbone: each direction's stage-1 detector starts from a backbone pretrained on
# fresh images with the shapes of its seen set only (the unseen set's objects are ignored
# over their boxes), as the paper's detectors start from ImageNet, which has no COCO masks.
# ``checkpoints/backbone_mask_x*.md`` give the commands.
CHECKPOINTS = common.RESULTS.parents[1] / "checkpoints"
BACKBONES = {"A->B": CHECKPOINTS / "backbone_mask_x.pt", "B->A": CHECKPOINTS / "backbone_mask_x_b.pt"}
STAGE1 = {"backbone": {d: f"{path.name}, then the book's default recipe (AdamW, cosine, EMA)"
                      for d, path in BACKBONES.items()},
          "scratch": {d: "random weights (one detector for both directions), Detectron recipe (SGD, step) at --lr"
                      for d in DIRECTIONS}}
# What the joint ("e2e") rows train the box head + predictor with, per --init: stage 1's own recipe.
JOINT_BOX_RECIPE = {"backbone": "the book's default recipe (AdamW, cosine), as stage 1; the mask branch as every row",
                    "scratch": "with the mask branch (Detectron recipe at --lr), as stage 1"}
TRAIN_SEED = 0  # the cached training split every seed trains on (the single-seed record's)
EVAL_SEED = 2026_0206  # the evaluation split's generator seed: no training split or other record uses it
# Each row's numbers (in %) that are summarised over the seeds; see score().
METRICS = ("mask_AP", "mask_AP50", "mask_AP75", "box_AP", "seen_mask_AP", "true_box_mask_AP", "true_box_mask_AP50",
           "true_box_mask_AP75", "true_box_seen_mask_AP")

# Hu et al. (2018). The final model, Mask^X R-CNN (transfer+MLP, cls+box, 2-layer
# LeakyReLU, end to end with stop-gradient) on ResNet-101-FPN, mask AP on the B classes
# of COCO (Table 2): voc->non-voc 23.8, non-voc->voc 29.5. Table 1's ablations (ResNet-50)
# find: cls+box the best input to T, the 2-layer LeakyReLU T the best structure (all
# structures close), the MLP branch helping both class-agnostic and transfer heads,
# transfer well above class-agnostic and below the oracle, and, end to end, stop-gradient
# needed for transfer to gain over stage-wise training.
PAPER = {"final_model_r101_mask_AP": {"A->B": 23.8, "B->A": 29.5}}
# The paper's orderings to check, in both directions: (claim, better variant, worse variant).
# Transfer is the paper's best stage-wise transfer, T a 2-layer MLP reading cls+box weights.
CLAIMS = (("transfer (cls+box, MLP T) beats class-agnostic", "transfer cls+box", "class-agnostic"),
          ("end to end, stop-gradient beats no stop-gradient", "transfer, e2e + stop-grad", "transfer, e2e"))
CLAIM_METRICS = ("mask_AP", "true_box_mask_AP")  # the paper's metric, then the mask branch alone
# PAPER holds only the final model's mask AP (Table 2), not Table 1's per-row numbers, so
# the paper's gap of each claim is None (see claims()); copy Table 1's rows from the paper
# itself, not from memory, to fill it in.


def row_name(direction: str, variant: str) -> str:
    """The key of ``metrics["runs"]`` for ``variant`` in ``direction`` ("A->B" or "B->A"): ``"A->B/class-agnostic"``."""
    return f"{direction}/{variant}"


def rows(variants, directions=tuple(DIRECTIONS)) -> list[str]:
    """Every row a run of ``variants`` (and the oracles) makes in ``directions``, A->B first."""
    return [row_name(d, v) for d in DIRECTIONS if d in directions for v in [*variants, *ORACLES]]


def build_parser() -> argparse.ArgumentParser:
    p = common.seeded_parser(NAME, __doc__.splitlines()[0], iterations=600)  # --iterations: stage 2 steps per variant
    p.add_argument("--directions", nargs="+", choices=list(DIRECTIONS), default=list(DIRECTIONS),
                   help="the directions to run (e.g. one per process, then --merge the records)")
    p.add_argument("--train-images", type=int, default=1000, help="generated training images (cached)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--detector-iterations", type=int, default=1000, help="stage 1 (boxes of all classes)")
    p.add_argument("--pooled-images", type=int, default=512, help="training images whose RoIs stage 2 trains on")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--save-models", type=Path, default=None,
                   help="folder for the chapter's state dicts (default: next to the results JSON)")
    return p


# ---------------------------------------------------------------- models


def detector(seed: int, init: dict | None = None, seen=None) -> rcnn.FasterRCNN:
    """Stage 1: a tiny Faster R-CNN with a leaner RPN (1000 / 500 proposals in training) and 128 RoIs per image.

    ``init``: a pretrained backbone file's state, which must have been pretrained with the masks of
    ``seen`` only (``checkpoint.load_backbone`` checks it, as for any Mask^X R-CNN); None: from scratch.
    """
    torch.manual_seed(seed)
    generator = AnchorGenerator(SMALL_ANCHOR_SIZES, [ASPECT_RATIOS] * len(SMALL_ANCHOR_SIZES))
    rpn = RegionProposalNetwork(generator, RPNHead(64, generator.num_anchors_per_location()[0]),
                                pre_nms_top_n=dict(training=1000, testing=1000),
                                post_nms_top_n=dict(training=500, testing=1000))
    det = models.faster_rcnn_tiny(NUM_CLASSES, rpn=rpn, box_batch_size_per_image=ROIS_PER_IMAGE)
    if init is not None:  # the detector of a Mask^X R-CNN whose masks are those of `seen`
        load_backbone(det, init, models.ModelConfig(kind="mask_x_rcnn", mask_classes=tuple(seen)))
    return det


def variant_model(name: str, mask_classes, stage1: dict, seed: int) -> nn.Module:
    """A Mask R-CNN (Mask^X R-CNN but for the oracles) carrying the stage-1 detector and a fresh mask branch for ``name``."""
    torch.manual_seed(seed)  # every variant's mask head starts from the same weights
    if name in (ORACLE, ORACLE_AGNOSTIC):
        model = models.mask_rcnn_tiny(NUM_CLASSES, mask_layers=MASK_LAYERS, mask_dim_reduced=MASK_DIM,
                                      class_agnostic_mask=name == ORACLE_AGNOSTIC)
    else:
        transfer, kind, mlp, _, stop = VARIANTS[name]
        model = models.mask_rcnn_tiny(NUM_CLASSES, mask_layers=MASK_LAYERS, mask_dim_reduced=MASK_DIM,
                                      class_agnostic_mask=transfer is None)
        model = rcnn.to_mask_x(model, mask_classes, transfer=transfer, kind=kind or "mlp", stop_gradient=stop,
                               class_agnostic_mlp=mlp)
    if model.roi_heads.class_agnostic_mask:
        # MaskPredictor already starts its logits at std 0.001 (as the authors' code does); this
        # second draw changes nothing in kind, but the committed record was made with it, and
        # removing it would shift every later random number of the run.
        nn.init.normal_(model.roi_heads.mask_predictor.mask_fcn_logits.weight, std=0.001)
    missing, unexpected = model.load_state_dict(stage1, strict=False)
    assert not unexpected and all(".mask_" in k for k in missing), (missing, unexpected)
    return model


# ---------------------------------------------------------------- stage 2: pooled RoIs


@torch.no_grad()
def pool_training_rois(model: nn.Module, mask_roi_pool: nn.Module, box_set: data.CocoDataset, num_images: int,
                       seed: int) -> list[dict]:
    """Sample and pool each image's training RoIs once through the frozen stage-1 detector ``model``.

    ``box_set`` gives boxes and labels only (its masks are never read here). Per image:
    ``box_features`` [R, C, 7, 7] (fp16), ``labels`` [R], ``regression_targets`` [R, 4],
    and for the foreground RoIs ``mask_features`` [P, C, 14, 14] (fp16), ``rois`` [P, 4],
    ``matched`` [P] (index of the ground truth) and ``mask_labels`` [P].
    """
    torch.manual_seed(seed)
    model.train()  # training-mode proposals and RoI sampling; no parameter changes (no grad)
    heads, pooled = model.roi_heads, []
    for start in range(0, num_images, 4):
        images, targets = data.collate([box_set[i] for i in range(start, min(start + 4, num_images))])
        targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]
        batch, sizes = batch_images(images)
        features = model.backbone(batch)
        proposals, _ = model.rpn(batch, sizes, features, targets)
        rois, matched, labels, regression = heads.select_training_samples(proposals, targets)
        box_features = heads.box_roi_pool(features, rois, sizes).split([len(r) for r in rois])
        foreground = [l > 0 for l in labels]
        mask_features = mask_roi_pool(features, [r[f] for r, f in zip(rois, foreground)], sizes)
        mask_features = mask_features.split([int(f.sum()) for f in foreground])
        for i in range(len(images)):
            f = foreground[i]
            pooled.append({"box_features": box_features[i].half(), "labels": labels[i], "regression_targets": regression[i],
                           "mask_features": mask_features[i].half(), "rois": rois[i][f], "matched": matched[i][f],
                           "mask_labels": labels[i][f]})
    return pooled


def mask_targets(pooled: list[dict], mask_set: data.CocoDataset, mask_size: int = 28) -> list[dict]:
    """Per image: which foreground RoIs get a mask loss (``keep`` [P] bool) and their targets [P', 28, 28].

    ``mask_set`` is the training set built with the setting's ``mask_classes``: its
    ``has_mask`` says which objects carry a mask; RoIs matched to the others are dropped
    before any mask pixel is read (fpnbook.roi_heads does the same in the full model).
    """
    out = []
    for index, image in enumerate(pooled):
        info = mask_set.coco.imgs[mask_set.image_ids[index]]
        target = mask_set.load_target(index, info["height"], info["width"])
        has_mask = target.get("has_mask", torch.ones(len(target["labels"]), dtype=torch.bool))
        keep = has_mask[image["matched"]] if len(image["matched"]) else torch.zeros(0, dtype=torch.bool)
        cut = project_masks_on_boxes(target["masks"].as_subclass(torch.Tensor), image["rois"][keep],
                                     image["matched"][keep], mask_size)
        out.append({"keep": keep, "targets": cut.half()})
    return out


def train_heads(model: nn.Module, pooled: list[dict], targets: list[dict], joint: bool, args, records: list,
                seed: int) -> None:
    """Train the mask branch (and with ``joint`` the box head + predictor too) on the pooled RoIs.

    The mask branch: SGD with momentum, warmup and step decay as :func:`fpnbook.train.train`.
    With ``joint``, the box head + predictor keep the recipe stage 1 trained them with
    (:data:`JOINT_BOX_RECIPE`): SGD at the mask branch's rate would move AdamW-trained box
    weights by more than their own size (measured: relative drift 1.3, box AP -1 to -4). The images
    of step ``s`` are :func:`fpnbook.train.batch_indices` ``(s)`` and its mask RoIs (at most
    ``MASK_ROIS_PER_IMAGE`` of each image's) are drawn from a generator seeded by ``seed``
    and ``s``, so every variant of a direction and seed trains on the same RoIs in the same order.
    """
    heads = model.roi_heads
    warmup = min(50, args.iterations // 4)
    config = TrainConfig(iterations=args.iterations, lr=args.lr, warmup_iters=warmup, **DETECTRON_RECIPE)
    groups = [(nn.ModuleList([heads.mask_head, heads.mask_predictor]), config)]
    if joint:
        box_config = TrainConfig(iterations=args.iterations, warmup_iters=warmup, **stage_one_recipe(args))
        groups.append((nn.ModuleList([heads.box_head, heads.box_predictor]), box_config))
    optimizers = [make_optimizer(modules, c) for modules, c in groups]
    schedulers = [make_scheduler(o, c) for o, (_, c) in zip(optimizers, groups)]
    params = [p for modules, _ in groups for p in modules.parameters()]
    agnostic = heads.class_agnostic_mask
    model.train()
    for step in range(args.iterations):
        indices = batch_indices(step, args.batch_size, len(pooled), seed)
        generator = torch.Generator().manual_seed(seed * 100_003 + step)
        features, labels, cut = [], [], []
        for i in indices:
            keep = targets[i]["keep"]
            pick = torch.randperm(int(keep.sum()), generator=generator)[:MASK_ROIS_PER_IMAGE]
            features.append(pooled[i]["mask_features"][keep][pick])
            labels.append(pooled[i]["mask_labels"][keep][pick])
            cut.append(targets[i]["targets"][pick])
        labels = torch.cat(labels)
        logits = heads.mask_predictor(heads.mask_head(torch.cat(features).float()))
        channels = torch.zeros_like(labels) if agnostic else labels
        losses = {"loss_mask": mask_loss(logits, channels, torch.cat(cut).float())}
        if joint:
            batch = [pooled[i] for i in indices]
            box_features = torch.cat([b["box_features"] for b in batch]).float()
            class_logits, box_regression = heads.box_predictor(heads.box_head(box_features))
            losses["loss_classifier"], losses["loss_box_reg"] = fast_rcnn_loss(
                class_logits, box_regression, [b["labels"] for b in batch], [b["regression_targets"] for b in batch])
        loss = sum(losses.values())
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
        if (step + 1) % max(1, args.iterations // 8) == 0 or step + 1 == args.iterations:
            records.append({"step": step + 1, **{k: round(v.item(), 4) for k, v in losses.items()}})


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def frozen_val_inputs(model: nn.Module, val: data.CocoDataset, num_images: int) -> list[dict]:
    """Per batch of validation images: features and proposals of the frozen backbone and RPN, and the true boxes."""
    model.eval()
    batches = []
    for start in range(0, num_images, 8):
        images, targets = data.collate([val[i] for i in range(start, min(start + 8, num_images))])
        batch, sizes = batch_images(images)
        features = model.backbone(batch)
        proposals, _ = model.rpn(batch, sizes, features)
        batches.append({"features": features, "proposals": proposals, "sizes": sizes,
                        "boxes": [t["boxes"].as_subclass(torch.Tensor) for t in targets],
                        "labels": [t["labels"] for t in targets]})
    return batches


@torch.no_grad()
def predict_from_frozen(model: nn.Module, val_inputs: list[dict], true_boxes: bool = False) -> list[dict]:
    """The model's eval outputs (masks pasted into the image), reusing the frozen stage's features and proposals.

    With ``true_boxes`` the detections are the ground-truth boxes and labels (score 1)
    and only the masks are predicted: mask AP then measures the mask branch alone.
    """
    model.eval()
    heads, outputs = model.roi_heads, []
    for batch in val_inputs:
        features, sizes = batch["features"], batch["sizes"]
        if true_boxes:
            detections = [{"boxes": b, "labels": l, "scores": torch.ones(len(l))} for b, l in zip(batch["boxes"], batch["labels"])]
            logits = heads.mask_logits(features, batch["boxes"], sizes)
            channels = torch.cat(batch["labels"])
            if heads.class_agnostic_mask:
                channels = torch.zeros_like(channels)
            probs = logits[torch.arange(len(channels)), channels][:, None].sigmoid()
            for detection, image_probs in zip(detections, probs.split([len(b) for b in batch["boxes"]])):
                detection["masks"] = image_probs
        else:
            detections, _ = heads(features, batch["proposals"], sizes)
        for detection, size in zip(detections, sizes):
            detection["masks"] = paste_masks_in_image(detection["masks"], detection["boxes"], size)
            outputs.append(detection)
    return outputs


def score(model: nn.Module, val_inputs: list[dict], val: data.CocoDataset, image_ids: list[int], seen, unseen) -> dict:
    """In %: on the unseen classes B, mask AP / AP50 / AP75 and box AP of the detections, and mask AP
    given the true boxes; on the seen classes A, mask AP of the detections and given the true boxes."""
    metrics = {}
    for prefix, true_boxes in (("", False), ("true_box_", True)):
        results = to_coco_results(predict_from_frozen(model, val_inputs, true_boxes), image_ids, val.label_to_cat_id)
        for tag, classes in (("", unseen), ("seen_", seen)):
            iou_types = ("segm", "bbox") if tag == "" and prefix == "" else ("segm",)
            subset = [r for r in results if r["category_id"] in classes]
            stats = coco_evaluate(restricted_gt(val, set(classes)), subset, iou_types=iou_types, image_ids=image_ids)
            names = ("AP", "AP50", "AP75") if tag == "" else ("AP",)
            metrics.update({f"{prefix}{tag}mask_{k}": round(100 * stats["segm"][k], 2) for k in names})
            if "bbox" in stats:
                metrics["box_AP"] = round(100 * stats["bbox"]["AP"], 2)
    return metrics


def weight_drift(before: dict, model: nn.Module, seen, unseen) -> dict:
    """Relative change of omega_det (cls+box rows) since stage 1, averaged over seen (A) and unseen (B) classes."""
    now = wt.detection_weights(model.roi_heads.box_predictor, "cls+box").detach()
    start = torch.cat([before["roi_heads.box_predictor.cls_score.weight"],
                       before["roi_heads.box_predictor.bbox_pred.weight"].reshape(NUM_CLASSES + 1, -1)], dim=1)
    change = (now - start).norm(dim=1) / start.norm(dim=1)
    return {"omega_drift_A": round(change[list(seen)].mean().item(), 4),
            "omega_drift_B": round(change[list(unseen)].mean().item(), 4)}


def save_half(state: dict, path: Path) -> None:
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)


def save_detector(folder: Path, stage1: dict) -> None:
    """fp16 state dict for chapter 4: the (A->B) stage-1 backbone + box predictor."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = ("backbone.", "roi_heads.box_predictor.")
    save_half({k: v for k, v in stage1.items() if k.startswith(keep)}, folder / f"{NAME}_detector.pt")


def save_mask_branch(folder: Path, tag: str, model: nn.Module) -> None:
    """fp16 state dict for chapter 4: ``model``'s mask head and predictor (with T)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor."))}
    save_half(state, folder / f"{NAME}_{tag}.pt")


# The A->B mask branches chapter 4 draws, by the tag of their file.
CHAPTER_BRANCHES = {"class-agnostic": "agnostic", "transfer cls+box": "transfer"}
CHAPTER_FILES = [f"{NAME}_detector.pt", *(f"{NAME}_{tag}.pt" for tag in CHAPTER_BRANCHES.values())]


# ---------------------------------------------------------------- the record


def claims(runs: dict, seeds) -> list[dict]:
    """The orderings of :data:`CLAIMS` whose rows ran, per direction and :data:`CLAIM_METRICS`, each with the
    paper's gap (None: :data:`PAPER` has no Table 1 rows) and our per-seed paired verdict (``common.compare``)."""
    found = []
    for claim, better, worse in CLAIMS:
        for direction in DIRECTIONS:
            b, w = row_name(direction, better), row_name(direction, worse)
            if b not in runs or w not in runs:
                continue
            for metric in CLAIM_METRICS:
                found.append({"claim": f"{claim} ({direction}, {'detected' if metric == 'mask_AP' else 'true'} boxes)",
                              "direction": direction, "better": b, "worse": w, "metric": metric,
                              "paper_gap": None,  # Table 1's numbers are not in PAPER (not typed from memory)
                              **common.compare(runs, seeds, b, w, metric)})
    return found


def drift(runs: dict, seeds) -> dict:
    """The e2e rows' omega drift (mean, sd) and, per direction, two paired verdicts on what stop-gradient does:

    - ``stop_gradient_holds_A``: it keeps the seen (A) rows of omega_det closer to stage 1 (free
      drift of A's rows minus stopped drift, per seed);
    - ``stop_gradient_keeps_A_and_B_alike``: it keeps the seen rows moving like the unseen ones, so
      that T, fitted on the seen rows, meets unseen rows of the same kind (the paper's argument):
      free ``|drift_A - drift_B|`` minus stopped, per seed.

    The first is how far the mask loss pulls; with AdamW (whose steps are normalised per weight) extra
    gradient can also shorten the steps, so the second is the one that follows from the argument.
    """
    e2e = {r: runs[r] for d in DIRECTIONS for r in (row_name(d, "transfer, e2e"), row_name(d, "transfer, e2e + stop-grad"))
           if r in runs}
    out = {"summary": {r: {m: common.mean_sd((runs[r][str(s)][m] for s in seeds), digits=4)
                           for m in ("omega_drift_A", "omega_drift_B")} for r in e2e},
           "stop_gradient_holds_A": {}, "stop_gradient_keeps_A_and_B_alike": {}}

    def gap(row: dict) -> float:
        return abs(row["omega_drift_A"] - row["omega_drift_B"])

    for d in DIRECTIONS:
        free, stopped = row_name(d, "transfer, e2e"), row_name(d, "transfer, e2e + stop-grad")
        if free in runs and stopped in runs:
            out["stop_gradient_holds_A"][d] = common.paired_verdict(
                [runs[free][str(s)]["omega_drift_A"] for s in seeds], [runs[stopped][str(s)]["omega_drift_A"] for s in seeds],
                digits=4)
            out["stop_gradient_keeps_A_and_B_alike"][d] = common.paired_verdict(
                [gap(runs[free][str(s)]) for s in seeds], [gap(runs[stopped][str(s)]) for s in seeds], digits=4)
    return out


# ---------------------------------------------------------------- the run


def stage_one_recipe(args: argparse.Namespace) -> dict:
    """The ``TrainConfig`` settings stage 1 trains the detector with (and the joint rows its box parts):
    the book's defaults from a pretrained backbone, the Detectron recipe at ``--lr`` from scratch."""
    return {} if args.init == "backbone" else dict(lr=args.lr, **DETECTRON_RECIPE)


def stage_one(args: argparse.Namespace, train_split, seed: int, direction: str) -> tuple[rcnn.FasterRCNN, dict, dict]:
    """Stage 1: the detector learns the boxes of all eight classes. Returns it, a copy of its
    weights, and the stage's record (loss curve, seconds).

    ``--init backbone``: ``direction``'s own detector, its backbone from :data:`BACKBONES`, trained with
    the book's default recipe (AdamW, cosine, EMA). ``--init scratch``: one detector for both
    directions, from random weights with the Detectron recipe at ``--lr`` (the first record's setup).
    """
    init = read_backbone(BACKBONES[direction]) if args.init == "backbone" else None
    with common.stopwatch() as took:
        det = detector(seed, init, DIRECTIONS[direction][0])
        config = dict(iterations=args.detector_iterations, batch_size=args.batch_size, seed=seed,
                      warmup_iters=min(100, args.detector_iterations // 5), device="cpu", progress=False,
                      log_every=max(1, args.detector_iterations // 10))
        records = train(det, data.CocoDataset(*train_split), TrainConfig(**config, **stage_one_recipe(args)))
    stage1 = {k: v.detach().clone() for k, v in det.state_dict().items()}
    print(f"seed {seed} stage 1 ({direction if init is not None else 'both directions'}): {took['wall_s']} s, "
          f"loss {records[-1]['loss']:.3f}", flush=True)
    return det, stage1, {"stage1_loss": [round(r["loss"], 4) for r in records if "loss" in r], "stage1_s": took["wall_s"]}


def stage_two_inputs(args: argparse.Namespace, det: nn.Module, stage1: dict, train_split, val: data.CocoDataset,
                     num_val: int, seed: int, stage: dict) -> tuple[list[dict], dict, list[dict]]:
    """What every mask branch of a seed trains and is scored on, computed once through the frozen detector:
    the pooled training RoIs, their mask targets per setting ("A", "B", "all": whose masks are kept) and
    the validation inputs. Adds the foreground RoI count and the seconds to ``stage``."""
    num_pooled = min(args.pooled_images, args.train_images)
    mask_roi_pool = variant_model(ORACLE, None, stage1, seed).roi_heads.mask_roi_pool  # no weights
    with common.stopwatch() as took:
        pooled = pool_training_rois(det, mask_roi_pool, data.CocoDataset(*train_split), num_pooled, seed)
        settings = {"A": set(data.SPLIT_A), "B": set(data.SPLIT_B), "all": None}
        targets = {s: mask_targets(pooled, data.CocoDataset(*train_split, mask_classes=c)) for s, c in settings.items()}
        val_inputs = frozen_val_inputs(det, val, num_val)
    stage.update(foreground_rois=sum(len(p["mask_labels"]) for p in pooled), pooling_s=took["wall_s"])
    print(f"seed {seed}: pooled {stage['foreground_rois']} foreground RoIs of {num_pooled} images "
          f"in {took['wall_s']} s", flush=True)
    return pooled, targets, val_inputs


def train_row(name: str, seen, stage1: dict, pooled: list[dict], targets: dict,
              args: argparse.Namespace, seed: int) -> tuple[nn.Module, dict]:
    """The mask branch of variant ``name`` with the masks of ``seen`` only (an oracle, ``seen`` None: of
    every class), trained on the pooled RoIs. Returns the model and its log (loss, train_s)."""
    model, losses = variant_model(name, seen, stage1, seed), []
    joint = name in VARIANTS and VARIANTS[name][3] == "e2e"
    setting = "all" if seen is None else "A" if seen == data.SPLIT_A else "B"
    with common.stopwatch() as took:
        train_heads(model, pooled, targets[setting], joint, args, losses, seed)
    return model, {"loss": losses, "train_s": took["wall_s"]}


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.train_images, args.image_size, args.detector_iterations = 8, 128, 2
        args.pooled_images, args.iterations, args.variants, args.seeds = 8, 2, SMOKE_VARIANTS, args.seeds[:1]
    train_split = data.ensure_split("train", args.train_images, image_size=args.image_size, seed=TRAIN_SEED,
                                    progress=not args.smoke)
    if args.smoke:  # --smoke shows the script runs, not how well: no split to generate
        val, num_val = data.CocoDataset(*data.val_paths()), 2
    else:
        val = data.CocoDataset(*data.ensure_split("val", args.eval_images, image_size=args.image_size, seed=EVAL_SEED,
                                                  progress=False))
        num_val = len(val)
    args.eval_images = num_val  # the record's top-level eval_images: the images actually scored
    image_ids = val.image_ids[:num_val]
    num_pooled = min(args.pooled_images, args.train_images)  # for the setup; stage_two_inputs pools as many
    save = not args.smoke or args.save_models is not None
    folder = Path(args.save_models or common.RESULTS)

    metrics: dict = {
        "setup": {"init": args.init, "stage1": STAGE1[args.init],
                  "joint_box_recipe": JOINT_BOX_RECIPE[args.init], "train_images": args.train_images, "image_size": args.image_size,
                  "train_split": f"generated, {args.train_images} images of {args.image_size} px, seed {TRAIN_SEED}",
                  "eval_split": f"generated val, {num_val} images of {args.image_size} px, seed {EVAL_SEED}"
                  if not args.smoke else f"committed val split (first {num_val} images)", "val_images": num_val,
                  "detector_iterations": args.detector_iterations, "pooled_images": num_pooled,
                  "rois_per_image": ROIS_PER_IMAGE, "iterations": args.iterations,
                  "mask_layers": list(MASK_LAYERS), "mask_rois_per_image": MASK_ROIS_PER_IMAGE,
                  "batch_size": args.batch_size, "lr": args.lr, "split_A": list(data.SPLIT_A),
                  "split_B": list(data.SPLIT_B)},
        "paper": PAPER,
        "directions": list(DIRECTIONS),
        "runs": {r: {} for r in rows(args.variants, args.directions)},
    }
    common.resume_runs(NAME, args, metrics)
    metrics.setdefault("stages", {})

    for seed in args.seeds:
        todo = [r for r in metrics["runs"] if str(seed) not in metrics["runs"][r]]
        if not todo:
            print(f"seed {seed}: every row resumed; stage 1 skipped", flush=True)
            continue
        save_seed = save and seed == args.seeds[0]
        stages = metrics["stages"].setdefault(str(seed), {})
        shared = None  # the stage-1 detector's weights, record, pooled RoIs and oracles
        for direction in args.directions:
            seen, unseen = DIRECTIONS[direction]
            names = [n for n in [*args.variants, *ORACLES] if row_name(direction, n) in todo]
            if not names:
                continue  # resumed
            if shared is None or args.init == "backbone":  # from scratch, both directions share one stage 1
                det, stage1, stage = stage_one(args, train_split, seed, direction)
                if save_seed and direction == "A->B":
                    save_detector(folder, stage1)
                pooled, targets, val_inputs = stage_two_inputs(args, det, stage1, train_split, val, num_val, seed,
                                                               stage)
                shared = (stage1, stage, pooled, targets, val_inputs, {})  # {}: the oracles, once per detector
            stage1, stage, pooled, targets, val_inputs, oracles = shared
            stages[direction] = stage
            for name in names:
                if name in ORACLES and name not in oracles:
                    oracles[name] = train_row(name, None, stage1, pooled, targets, args, seed)
                model, log = oracles[name] if name in ORACLES else train_row(name, seen, stage1, pooled, targets,
                                                                               args, seed)
                with common.stopwatch() as took:
                    row = {**score(model, val_inputs, val, image_ids, seen, unseen), **log}
                row["eval_s"] = took["wall_s"]
                if name in VARIANTS and VARIANTS[name][3] == "e2e":
                    row.update(weight_drift(stage1, model, seen, unseen))
                metrics["runs"][row_name(direction, name)][str(seed)] = row
                if save_seed and direction == "A->B" and name in CHAPTER_BRANCHES:
                    save_mask_branch(folder, CHAPTER_BRANCHES[name], model)
                print(f"seed {seed} {direction} {name:>28}: mask AP on B {row['mask_AP']:5.1f}, with true boxes "
                      f"{row['true_box_mask_AP']:5.1f}, box AP {row['box_AP']:5.1f}  "
                      f"({row['train_s']:.0f} s + {row['eval_s']:.0f} s)", flush=True)
                common.write_partial(NAME, args, metrics)
    if save:  # the chapter's files in the folder, whichever run of this setup wrote them
        metrics["chapter_models"] = [f for f in CHAPTER_FILES if (folder / f).exists()]
    metrics["summary"] = common.summarise(metrics["runs"], args.seeds, METRICS)
    metrics["claims"] = claims(metrics["runs"], args.seeds)
    metrics["drift"] = drift(metrics["runs"], args.seeds)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return common.main_seeded(NAME, run, build_parser, argv)


if __name__ == "__main__":
    main()
