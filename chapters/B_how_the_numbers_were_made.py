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
# # Appendix B. How the numbers were made
#
# Every paper table in chapters 2 to 6, the recipe and the torchvision comparison of
# appendix A are read from a record an experiment wrote, `experiments/results/NAME.json`,
# committed with the book. Every shipped model has a card in `checkpoints/cards.json`.
# The chapters show what the numbers say; this appendix shows how each was made, for a
# reader who wants to make one again or check it. **To remake a number, find its record
# in section 1: the table gives its seeds, and the list below it the one command that
# makes it again.**
#
# 1. **The records at a glance** (`experiments.provenance`): chapter, seeds, command.
# 2. **How to rerun an experiment**: the flags every experiment shares.
# 3. **FPN, Table 1** (chapter 2).
# 4. **Focal loss, Table 1** (chapter 3).
# 5. **Mask R-CNN, Table 2c/2d** (chapter 4).
# 6. **Mask R-CNN, Table 2b** (chapter 5).
# 7. **Learning to Segment Every Thing, Table 1** (chapter 6), with everything the chapter
#    leaves out: the other rows, the finer orderings, the drift of the box weights and a
#    first record made with detectors trained from scratch.
# 8. **The training recipe and torchvision** (appendix A).
# 9. **The shipped checkpoints** (`checkpoints/cards.json`).
#
# Sections 3 to 8 say in a few lines how each record was made, then print it: the
# command to make it again, the machine, the seeds, the split it was scored on, the time
# it took, every command that actually wrote rows into it, in order, and every seed's
# row. Nothing below is typed in by hand: `experiments.provenance` reads the files, and
# `provenance.check` recomputes each record's means and verdicts from its per-seed rows.

# %%
# %matplotlib inline
import json
import sys
from pathlib import Path

import fpnbook

ROOT = Path(fpnbook.__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, for experiments/
from experiments import common, lse_table1, provenance  # noqa: E402

print("fpnbook", fpnbook.__version__)

# %% [markdown]
# ## 1. The records at a glance (`experiments.provenance`)
#
# One line per record: where the book shows it, what it measures, its seeds, the section
# of this appendix that tells how it was made, and how many of its numbers
# `provenance.check` recomputed from its per-seed rows (every mean, sd and paired verdict;
# the last two records keep no seeded rows). Below the table, the command that makes each
# record again, every row and seed in one process (`provenance.remake`), run from the
# repository root; the recipe's record was built up by several commands, listed in
# section 8.

# %%
records = {name: provenance.read(name) for name in provenance.SHOWN_IN}
checked = {name: provenance.check(record) for name, record in records.items()}
SECTION = {"fpn_table1": 3, "focal_table1": 4, "roialign_table2": 5, "mask_table2b": 6, "lse_table1": 7,
           "lse_table1_scratch": 7, "recipe": 8, "torchvision_compare": 8}
print(provenance.table(["record", "shown in", "what it measures", "seeds", "section", "rechecked"],
                       [[f"{name}.json", where, what, dict(provenance.facts(records[name]))["seeds"],
                         SECTION[name], checked[name]]
                        for name, (where, _, what) in provenance.SHOWN_IN.items()]))
print("\nto make a record again:")
for name, record in records.items():
    print(f"  {name + ':':<21}{provenance.remake(record, name) or 'the commands of section 8, in order'}")
assert [name for name, record in records.items() if provenance.remake(record, name) is None] == ["recipe"]
# Every committed record is listed (a record is a file with the command that wrote it), and none is a smoke run.
on_disk = {p.stem for p in common.RESULTS.glob("*.json") if "command" in json.loads(p.read_text())}
assert on_disk == set(records) and not any(r["smoke"] for r in records.values())

# %% [markdown]
# ## 2. How to rerun an experiment
#
# Each experiment is a module of `experiments/`, run from the repository root as
# `python -m experiments.NAME`. Its docstring gives the whole setup; the flags they share
# (the commands of section 1 need only the first two):
#
# - `--seeds 0 1 2`: every seed trains every row from the same weights and feeds it the
#   same images in the same order, so two rows of one seed differ by the row alone.
# - `--threads N`: torch threads per process; each record's command says what it used.
# - `--smoke`: a few steps on a handful of images, through every code path, written to a
#   temporary folder (or `--out`), never over the committed record. Each record's section
#   gives its smoke command.
# - `--out PATH`: where the record goes (by default, `experiments/results/NAME.json`).
# - `--resume`: a run stopped part way leaves its finished rows in `NAME.partial.json`;
#   the same command with `--resume` trains only the rest.
# - `--merge RECORD ...`: keeps the rows of other records of the same setup (a record of
#   another setup is refused), so that processes running side by side (one per seed, or
#   one per direction) make one table. The record lists in `metrics.taken_rows` which rows
#   came from where, and the command that made them.
#
# A verdict reads as in the chapters: "reproduced" when the paper's ordering holds in
# every seed, or the mean of the per-seed differences exceeds twice its standard error;
# "did not reproduce" when the same holds the other way round; "inconclusive" otherwise.

# %% [markdown]
# ## 3. FPN, Table 1 (`experiments/fpn_table1.py`, chapter 2)
#
# An RPN on one map (C4, C5, the pyramid's finest level P2) or on the pyramid, and the
# pyramid without its top-down path or without its lateral connections, scored by the
# average recall (AR) of its proposals. One process trained every row of every seed.

# %%
fpn = records["fpn_table1"]
print(provenance.report(fpn, name="fpn_table1"))
assert "taken_rows" not in fpn["metrics"] and "--merge" not in fpn["command"]

# %% [markdown]
# ## 4. Focal loss, Table 1 (`experiments/focal_table1.py`, chapter 3)
#
# RetinaNet trained with cross entropy, α-balanced cross entropy and focal loss of several
# γ, scored by box AP. Two processes made the rows: the record's own command, stopped
# part way and continued with `--resume`, and a second one that trained the last seed of
# three rows beside it; the final command kept both and trained nothing. The first line
# gives the one command that trains them all.

# %%
focal = records["focal_table1"]
print(provenance.report(focal, name="focal_table1"))
assert [t["flag"] for t in focal["metrics"]["taken_rows"]] == ["--resume", "--merge"]
assert provenance.commands(focal)[-1][1].endswith("training none itself")

# %% [markdown]
# ## 5. Mask R-CNN, Table 2c/2d (`experiments/roialign_table2.py`, chapter 4)
#
# The same mask branch on RoIPool or RoIAlign features, at stride 16 and 32, given the true
# boxes, scored by mask AP. The rows were trained by an earlier run of the same setup; the
# record's last command kept them (`--merge` of the record itself) and scored chapter 4's
# class-mean reference, so its wall time is a small part of the rows' training time. The
# first line gives the one command that trains the rows and scores the reference.

# %%
roialign = records["roialign_table2"]
print(provenance.report(roialign, name="roialign_table2"))
print("class-mean masks, no features (AP, AP50, AP75):", roialign["metrics"]["class_mean_masks"])
assert roialign["wall_time_s"] < roialign["train_s_all_rows"] / 10

# %% [markdown]
# ## 6. Mask R-CNN, Table 2b (`experiments/mask_table2b.py`, chapter 5)
#
# The same mask head trained with a per-pixel softmax over the classes or with one sigmoid
# per class, given the true boxes, scored by mask AP. One process trained both rows of
# every seed. The record also keeps two other readings of each softmax model, printed last.

# %%
table2b = records["mask_table2b"]
print(provenance.report(table2b, name="mask_table2b"))
print(provenance.table(*provenance.per_seed(table2b, ["AP", "AP_softmax_p", "AP_softmax_fg"], rows=["softmax"])))
assert "taken_rows" not in table2b["metrics"]

# %% [markdown]
# ## 7. Learning to Segment Every Thing, Table 1 (`experiments/lse_table1.py`, chapter 6)
#
# Masks for classes trained with boxes only, in both directions: `A->B` trains masks of
# the shapes of set `A` and scores mask AP on set `B`, and `B->A` the other way round. For
# each seed and direction a stage-1 detector learns every class's boxes and freezes, then
# each row trains its mask branch on the frozen detector's features. The record was made
# in two rounds, each as one process per direction side by side; the second round reran
# the two joint rows and kept the others. The record's note and the commands below tell
# it in full.

# %%
lse = records["lse_table1"]
print(provenance.report(lse, name="lse_table1", rows=[lse_table1.row_name(d, r) for d in lse["metrics"]["directions"]
                                   for r in provenance.LSE_ROWS]))
assert provenance.commands(lse)[-1][1].endswith("training none itself")

# %% [markdown]
# ### The stage-1 detectors
#
# Each direction's detector starts from a backbone the book pretrained with the masks of
# that direction's seen set only, so no mask of the unseen set reaches it. Per seed: the
# detector's training time, the time to pool every training image's RoIs once through
# it, how many foreground RoIs that gave, and its last logged loss.

# %%
setup = lse["metrics"]["setup"]
for direction, how in setup["stage1"].items():
    print(f"stage 1, {direction}: {how}")
print(f"{setup['train_images']} training images, {setup['detector_iterations']} detector steps, "
      f"{setup['iterations']} steps per mask branch, RoIs pooled from {setup['pooled_images']} images\n")
print(provenance.table(["seed", "direction", "stage1_s", "pooling_s", "foreground RoIs", "last loss"],
                       [[seed, d, provenance.cell(s["stage1_s"], "_s"), provenance.cell(s["pooling_s"], "_s"),
                         s["foreground_rois"], s["stage1_loss"][-1]]
                        for seed, stages in lse["metrics"]["stages"].items() for d, s in stages.items()]))

# %% [markdown]
# ### All ten rows, both directions
#
# Mean ± sd over the seeds, in AP points. `mask_AP` is the paper's metric: mask AP on the
# unseen classes with the detector's boxes. `true_box_mask_AP` gives the mask branch the
# true boxes instead. `box_AP` is the detector's box AP on the unseen classes (the joint
# rows retrain the box parts, so theirs moves), and `seen_mask_AP` is mask AP on the seen
# classes.

# %%
COLUMNS = ["mask_AP", "mask_AP75", "true_box_mask_AP", "box_AP", "seen_mask_AP"]
for direction in lse["metrics"]["directions"]:
    header, rows = provenance.summary(lse, [lse_table1.row_name(direction, r) for r in provenance.LSE_ROWS], COLUMNS)
    print(provenance.table(header, rows) + "\n")
print("paper, final Mask^X R-CNN (ResNet-101-FPN), mask AP on the unseen classes:",
      lse["metrics"]["paper"]["final_model_r101_mask_AP"])

# %% [markdown]
# ### The paper's finer orderings, seed by seed
#
# The record computes the two headline claims (printed above). The paper's ablations
# order more of the rows; here each is a paired verdict over the same seeds, with the
# detector's boxes and with the true boxes. The last two are not in the paper: whether the
# unseen classes' masks help a class-agnostic head at all, and the class-specific oracle
# against the class-agnostic one, both trained with every mask, which asks what knowing the
# class is worth once every mask is given.

# %%
ablations = {}
for metric in lse_table1.CLAIM_METRICS:
    ablations[metric] = provenance.lse_ablations(lse, metric)
    print(f"{metric}:\n{provenance.table(*provenance.verdicts(ablations[metric]))}\n")
# With the detector's boxes, the class-specific oracle is no better than the class-agnostic one in either direction.
assert all(c["mean"] <= 0 for c in ablations["mask_AP"] if c["claim"].startswith("class-specific"))

# %% [markdown]
# With the detector's boxes, the class-specific oracle is no better than the class-agnostic
# one in either direction (its mean difference is at most zero): once every mask is given,
# knowing the class did not raise mask AP on the detector's boxes here.

# %% [markdown]
# ### The drift of the box weights in the joint rows
#
# The two joint rows ("e2e") train the box head and predictor with the mask branch. How
# far do the box weights `ω_det` move from where the detector left them? The relative change,
# averaged over the rows of the seen classes and over those of the unseen ones, mean ± sd
# over the seeds. Two paired verdicts: does stop-gradient keep the seen rows closer to
# where they were, and does it keep seen and unseen rows moving alike (the paper's argument:
# `T` is fitted on seen rows and must meet unseen rows of the same kind)?

# %%
(header, rows), drift = provenance.lse_drift(lse)
print(provenance.table(header, rows) + "\n")
print(provenance.table(*provenance.verdicts(drift)))
assert all(c["verdict"] == "reproduced" and min(c["diffs"]) > 0 for c in drift if "alike" in c["claim"])
assert all(c["verdict"] == "did not reproduce" and max(c["diffs"]) < 0 for c in drift if "closer" in c["claim"])

# %% [markdown]
# Stop-gradient keeps the seen and unseen rows moving alike in both directions, in every
# seed; without it the seen rows move *less*, not more, so the first check goes the other
# way. AdamW scales each weight's step by the running size of its gradient, so more
# gradient need not mean a longer way travelled.
#
# ### The first record: detectors trained from scratch
#
# The table was first run with stage-1 detectors trained from random weights, one per seed
# for both directions, and the Detectron recipe. That record is kept,
# `lse_table1_scratch.json`. Side by side with the current one for the rows chapter 6 shows:
# a detector with a far higher box AP raised every row, not the gaps between them.

# %%
scratch = records["lse_table1_scratch"]
SHOWN = ["class-agnostic", "transfer cls+box", "transfer+MLP", "oracle (all masks)"]
pair = {"scratch": scratch, "pretrained": lse}
for direction in lse["metrics"]["directions"]:
    print(direction)
    print(provenance.table(*provenance.side_by_side(pair, [lse_table1.row_name(direction, r) for r in SHOWN],
                                                    ["box_AP", "mask_AP", "true_box_mask_AP"])) + "\n")
for direction in lse["metrics"]["directions"]:
    before, after = ({r: record["metrics"]["summary"][lse_table1.row_name(direction, r)] for r in SHOWN}
                     for record in pair.values())
    assert after["class-agnostic"]["box_AP"]["mean"] > 1.5 * before["class-agnostic"]["box_AP"]["mean"]
    assert all(after[r]["mask_AP"]["mean"] > before[r]["mask_AP"]["mean"] + 5 for r in SHOWN)  # every row up
    gap = after["transfer cls+box"]["mask_AP"]["mean"] - after["class-agnostic"]["mask_AP"]["mean"]
    assert abs(gap) < 1  # the gap stays under a point

# %% [markdown]
# How that record was made, and its rows:

# %%
print(provenance.report(scratch, name="lse_table1_scratch", rows=[lse_table1.row_name(d, r) for d in scratch["metrics"]["directions"]
                                       for r in provenance.LSE_ROWS]))
assert scratch["metrics"]["setup"]["init"] == "scratch" and lse["metrics"]["setup"]["init"] == "backbone"

# %% [markdown]
# ## 8. The training recipe and torchvision (`experiments/recipe.py`, `experiments/torchvision_compare.py`, appendix A)
#
# The recipe record is cumulative: each command adds its runs to the same file and skips a
# run already in it, so the record lists every command that wrote to it, and running them
# in order makes it again. Its AP values are fractions (0 to 1), as pycocotools gives
# them, scored on a decision split that nothing else uses.

# %%
recipe = records["recipe"]
print(provenance.report(recipe, name="recipe"))
runs = recipe["metrics"]["runs"]
assert len({(r["variant"], r["seed"]) for r in runs}) == len(runs)  # no run twice

# %% [markdown]
# The comparison with torchvision trains torchvision's Mask R-CNN from the same weights on
# the same data and schedule as the book's. For the book's side the record's command
# reused a training run (`--fpnbook-run`, the note says which); without that flag, the
# first line's command, the script trains it too. Its APs are fractions, after a schedule
# far too short to detect anything: the point is that both libraries train alike, and
# how fast each runs.

# %%
compare_record = records["torchvision_compare"]
print(provenance.report(compare_record, name="torchvision_compare"))
print("schedule:", compare_record["metrics"]["schedule"])
assert compare_record["metrics"]["schedule"]["iterations"] < 100
assert all(v["bbox"]["AP"] < 0.01 for v in compare_record["metrics"]["val"].values())

# %% [markdown]
# ## 9. The shipped checkpoints (`checkpoints/cards.json`)
#
# Each file in `checkpoints/` has a card, kept in `checkpoints/cards.json` and rendered as
# `checkpoints/NAME.md`: the command that trained it, its seed, data, training time,
# machine, versions and COCO AP on the committed validation split (the backbones are
# pretrained, not detectors, so they have no AP). `python -m fpnbook eval --checkpoint
# checkpoints/NAME.pt` scores a detector again.

# %%
cards = provenance.cards()
print(provenance.table(*provenance.cards_table(cards)) + "\n")
for name, card in cards.items():
    print(f"{card['file']}: fpnbook {card['fpnbook_version']}, torch {card['torch_version']}\n  {card['command']}")
    print(f"  machine: {card['hardware']}")
    if card.get("note"):
        print(f"  note: {card['note']}")
assert all(card["command"].startswith("python -m fpnbook ") for card in cards.values())
