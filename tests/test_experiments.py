"""Every experiment's --smoke mode runs and writes a well-formed record."""

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"__init__", "common", "gt_box_masks", "provenance"}  # modules the experiments (or appendix B) import
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem not in SHARED)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_run_writes_record(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    out = tmp_path / f"{name}.json"
    module.main(["--smoke", "--threads", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["smoke"] is True and record["experiment"] == name
    assert record["metrics"], "an experiment must report metrics"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_committed_result_names_its_command(name):
    path = ROOT / "experiments" / "results" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{name} has no committed full run yet")
    record = json.loads(path.read_text())
    assert record["command"].startswith(f"python -m experiments.{name}") and not record["smoke"]
    assert {"seed", "fpnbook_version", "hardware", "wall_time_s", "metrics"} <= record.keys()


def test_paired_verdict_reads_the_per_seed_differences():
    from experiments.common import mean_sd, paired_verdict

    assert paired_verdict([3.0, 2.5, 4.0], [1.0, 2.0, 1.0])["verdict"] == "reproduced"  # every seed agrees
    assert paired_verdict([1.0, 1.0, 1.0], [2.0, 2.5, 1.5])["verdict"] == "did not reproduce"
    mixed = paired_verdict([1.0, 2.0, 3.0], [2.0, 1.0, 3.5])
    assert mixed["verdict"] == "inconclusive" and mixed["diffs"] == [-1.0, 1.0, -0.5]
    # One seed against, but a mean gap far beyond twice its standard error still counts.
    assert paired_verdict([10.0, 10.0, 10.0, 10.0, 10.0, 9.0], [9.0] * 6)["verdict"] == "reproduced"
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0} and mean_sd([5.0]) == {"mean": 5.0, "sd": 0.0}
    with pytest.raises(ValueError):
        paired_verdict([1.0, 2.0], [1.0])


def test_resume_keeps_the_finished_rows_of_the_same_setup_only(tmp_path):
    import argparse

    from experiments.common import resume_runs, write_partial

    args = argparse.Namespace(out=tmp_path / "t.json", smoke=False, resume=True)
    with pytest.raises(FileNotFoundError, match="no partial record"):
        resume_runs("t", args, {"setup": {"iterations": 10}, "runs": {"a": {}}})
    write_partial("t", args, {"setup": {"iterations": 10}, "runs": {"a": {"0": {"AP": 1.0}}, "b": {}}, "steps": [5, 10]})
    metrics = {"setup": {"iterations": 10}, "runs": {"a": {}, "b": {}}}
    resume_runs("t", args, metrics)
    assert metrics["runs"] == {"a": {"0": {"AP": 1.0}}, "b": {}} and metrics["steps"] == [5, 10]
    with pytest.raises(ValueError, match="another setup"):
        resume_runs("t", args, {"setup": {"iterations": 20}, "runs": {"a": {}}})
    untouched = {"setup": {"iterations": 20}, "runs": {"a": {}}}
    resume_runs("t", argparse.Namespace(out=args.out, smoke=False, resume=False), untouched)
    assert untouched["runs"] == {"a": {}}
    # --merge brings in the rows of other records of the same setup, e.g. another seed run in parallel.
    other = tmp_path / "other.json"
    write_partial("t", argparse.Namespace(out=other, smoke=False), {"setup": {"iterations": 10},
                                                                     "runs": {"b": {"1": {"AP": 2.0}}},
                                                                     "stages": {"0": {"B->A": {"s": 2}}}})
    merged = {"setup": {"iterations": 10}, "runs": {"a": {}, "b": {}}, "stages": {"0": {"A->B": {"s": 1}}}}
    resume_runs("t", argparse.Namespace(out=args.out, smoke=False, resume=True, merge=[other.with_suffix(".partial.json")]),
                merged)
    assert merged["runs"] == {"a": {"0": {"AP": 1.0}}, "b": {"1": {"AP": 2.0}}}
    # what each process logged beside its rows adds up, dict by dict (one direction each here)
    assert merged["stages"] == {"0": {"A->B": {"s": 1}, "B->A": {"s": 2}}}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not an experiment record"):
        resume_runs("t", argparse.Namespace(out=args.out, smoke=False, resume=False, merge=[tmp_path / "bad.json"]), merged)
    with pytest.raises(FileNotFoundError, match="--merge"):
        resume_runs("t", argparse.Namespace(out=args.out, smoke=False, resume=False, merge=[tmp_path / "none.json"]), merged)


def test_mask_table2b_record_verdicts_follow_from_its_runs():
    from experiments.common import mean_sd, paired_verdict

    path = ROOT / "experiments" / "results" / "mask_table2b.json"
    if not path.exists():
        pytest.skip("mask_table2b has no committed full run yet")
    record = json.loads(path.read_text())
    seeds = [str(s) for s in record["seeds"]]
    assert len(seeds) >= 3 and record["eval_images"] >= 256
    runs = record["metrics"]["runs"]
    for metric, claimed in record["metrics"]["sigmoid_minus_softmax"].items():
        assert claimed == paired_verdict([runs["sigmoid"][s][metric] for s in seeds],
                                         [runs["softmax"][s][metric] for s in seeds])
        for variant in ("sigmoid", "softmax"):
            assert record["metrics"]["summary"][variant][metric] == mean_sd(runs[variant][s][metric] for s in seeds)


def seeded_record(name: str) -> dict:
    """The committed record of a seeded experiment, checked for its seeds and evaluation split size."""
    path = ROOT / "experiments" / "results" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{name} has no committed full run yet")
    record = json.loads(path.read_text())
    if "runs" not in record["metrics"]:
        pytest.skip(f"the committed {name} record predates the seeded rerun")
    assert len(record["seeds"]) >= 3 and record["eval_images"] >= 256
    return record


def assert_summary_follows(record: dict) -> None:
    from experiments.common import mean_sd

    runs, seeds = record["metrics"]["runs"], [str(s) for s in record["seeds"]]
    for variant, rows in record["metrics"]["summary"].items():
        for metric, value in rows.items():
            assert value == mean_sd(runs[variant][s][metric] for s in seeds)


@pytest.mark.parametrize("name", ["fpn_table1", "focal_table1"])
def test_ordering_record_verdicts_follow_from_its_runs(name):
    from experiments.common import ordering_claims

    module = importlib.import_module(f"experiments.{name}")
    record = seeded_record(name)
    metrics = record["metrics"]
    assert set(metrics["runs"]) == set(module.VARIANTS)
    assert metrics["claims"] == ordering_claims(metrics["runs"], record["seeds"], module.CLAIMS, module.PAPER)
    assert len(metrics["claims"]) == len(module.CLAIMS)
    assert_summary_follows(record)


def test_roialign_table2_record_verdicts_follow_from_its_runs():
    from experiments import roialign_table2

    record = seeded_record("roialign_table2")
    metrics, seeds = record["metrics"], record["seeds"]
    assert set(metrics["runs"]) == set(roialign_table2.PAPER)
    assert metrics["claims"] == roialign_table2.claims(metrics["runs"], seeds, [16, 32])
    assert metrics["gains"]["s32"] == roialign_table2.gains(metrics["runs"], seeds, 32)
    assert_summary_follows(record)


def test_lse_table1_backbones_never_saw_the_unseen_sets_masks():
    from experiments import lse_table1
    from fpnbook.checkpoint import read_backbone

    for direction, (seen, unseen) in lse_table1.DIRECTIONS.items():
        assert read_backbone(lse_table1.BACKBONES[direction])["mask_classes"] == list(seen)
        lse_table1.detector(0, read_backbone(lse_table1.BACKBONES[direction]), seen)  # loads: it was pretrained for `seen`
        with pytest.raises(ValueError, match="saw the shapes"):
            lse_table1.detector(0, read_backbone(lse_table1.BACKBONES[direction]), unseen)


@pytest.mark.parametrize("name", ["lse_table1", "lse_table1_scratch"])  # the record, and the from-scratch one kept
def test_lse_table1_record_verdicts_follow_from_its_runs(name):
    from experiments import lse_table1

    record = seeded_record(name)
    assert set(record["metrics"]["setup"]["stage1"]) == set(lse_table1.DIRECTIONS)
    assert all(set(stage) == set(lse_table1.DIRECTIONS) for stage in record["metrics"]["stages"].values())
    metrics, seeds = record["metrics"], record["seeds"]
    assert set(metrics["runs"]) == set(lse_table1.rows(lse_table1.VARIANTS))
    assert all(set(rows) == {str(s) for s in seeds} for rows in metrics["runs"].values())
    assert metrics["claims"] == lse_table1.claims(metrics["runs"], seeds)
    assert len(metrics["claims"]) == len(lse_table1.CLAIMS) * len(lse_table1.DIRECTIONS) * len(lse_table1.CLAIM_METRICS)
    assert metrics["drift"] == lse_table1.drift(metrics["runs"], seeds)
    assert set(metrics["summary"]) == set(metrics["runs"])
    assert all(set(row) == set(lse_table1.METRICS) for row in metrics["summary"].values())
    assert_summary_follows(record)


def test_class_mean_masks_pooled_gives_every_class_one_mean_and_mask_ap_restricts_labels(small_split):
    import torch

    from experiments.gt_box_masks import ClassMeanMasks, class_channel, mask_ap
    from fpnbook import data

    dataset = data.CocoDataset(*small_split)
    own = ClassMeanMasks(dataset.num_classes).fit(dataset, len(dataset))
    pooled = ClassMeanMasks(dataset.num_classes).fit(dataset, len(dataset), pooled={1, 2})
    assert all(torch.equal(pooled.means[0], row) for row in pooled.means)
    assert own.means[1].max() > 0 and not torch.equal(own.means[1], own.means[2])
    scored = {label for label in range(1, dataset.num_classes + 1)
              if any(dataset.cat_id_to_label[a["category_id"]] == label for a in dataset.coco.dataset["annotations"])}
    alone = {label: mask_ap(own, class_channel, dataset, len(dataset), labels_only=[label])["AP"] for label in scored}
    every = mask_ap(own, class_channel, dataset, len(dataset))["AP"]
    # COCO's AP is the mean over the categories present, so the per-label scores average to it.
    assert abs(sum(alone.values()) / len(alone) - every) < 1e-6


def test_provenance_table_aligns_and_refuses_ragged_rows():
    from experiments.provenance import table

    text = table(["row", "AP", "verdict"], [["fpn", 41.5, "reproduced"], ["c4", 9.25, "inconclusive"]])
    lines = text.splitlines()
    assert lines[2] == "fpn  41.50  reproduced" and lines[3] == "c4    9.25  inconclusive"  # numbers right, words left
    assert lines[1] == "---  -----  ------------"
    with pytest.raises(ValueError, match="one value per header"):
        table(["a", "b"], [["only one"]])


def test_provenance_commands_follow_the_merges_in_order():
    from experiments.provenance import commands

    runs = {"ce": {"0": {}, "1": {}}, "fl": {"0": {}, "1": {}}}
    taken = [{"flag": "--resume", "record": "/somewhere/experiments/results/t.partial.json", "command": None,
              "rows": {"ce": ["0", "1"], "fl": ["0"]}},
             {"flag": "--merge", "record": "runs/b.json", "rows": {"fl": ["1"]},
              "command": "python -m experiments.t --seeds 1 --out runs/b.json"}]
    record = {"command": "python -m experiments.t --resume --merge runs/b.json",
              "metrics": {"runs": runs, "taken_rows": taken}}
    found = commands(record)
    assert [c for c, _ in found][1:] == [taken[1]["command"], record["command"]]
    assert found[0][0].startswith("(not stored") and "seeds 0 1 of ce; seed 0 of fl" in found[0][1]
    assert found[1][1] == "wrote runs/b.json; kept with --merge: seed 1 of fl"
    assert found[2][1].endswith("training none itself")  # every (row, seed) came from the runs above
    record["metrics"]["taken_rows"] = taken[:1]
    assert commands(record)[-1][1].startswith("trained the rows not kept above")
    alone = {"command": "python -m experiments.t", "metrics": {"runs": runs}}
    assert commands(alone)[-1][1].startswith("trained every")


def test_provenance_remake_drops_the_stitching_and_keeps_the_setup():
    from experiments.provenance import remake

    record = {"experiment": "t", "seeds": [0, 1, 2], "metrics": {"setup": {"init": "scratch"}},
              "command": "python -m experiments.t --threads 1 --resume --merge a.json b.json --seeds 2 --iterations 9 "
                         "--out runs/x.json --save-models runs/m"}
    assert remake(record, "t") == "python -m experiments.t --threads 1 --iterations 9 --init scratch --seeds 0 1 2"
    assert remake(record, "t_scratch").endswith("--seeds 0 1 2 --out experiments/results/t_scratch.json")
    assert remake({**record, "commands": [record["command"]]}, "t") is None  # cumulative: no one command
    # Every committed seeded record: the command parses with its experiment's own parser, to the record's setup.
    from experiments import provenance

    for name in provenance.SHOWN_IN:
        record = provenance.read(name)
        again = remake(record, name)
        if again is None:
            assert "commands" in record
            continue
        words = again.split()
        assert words[:3] == ["python", "-m", f"experiments.{record['experiment']}"]
        args = importlib.import_module(f"experiments.{record['experiment']}").build_parser().parse_args(words[3:])
        assert args.smoke is False and (args.out is None) == (name == record["experiment"])
        if "seeds" in record:
            assert args.seeds == record["seeds"] and args.init == record["metrics"]["setup"]["init"]
            assert not args.merge and not args.resume
        else:  # the torchvision comparison trains fpnbook's side itself instead of reusing a run
            assert args.fpnbook_run is None and args.seed == record["seed"]
            assert args.iterations == record["metrics"]["schedule"]["iterations"]


@pytest.mark.parametrize("name", ["fpn_table1", "focal_table1", "roialign_table2", "mask_table2b", "lse_table1",
                                  "lse_table1_scratch", "recipe", "torchvision_compare"])
def test_provenance_reads_every_committed_record(name):
    from experiments import provenance

    assert name in provenance.SHOWN_IN
    record = provenance.read(name)
    text = provenance.report(record)
    assert record["command"] in text and record["hardware"] in text
    header, rows = provenance.per_seed(record)
    runs = record["metrics"].get("runs")
    if isinstance(runs, dict):  # one line per (row, seed), and check() recomputes every mean and verdict
        assert len(rows) == sum(len(seeds) for seeds in runs.values()) and provenance.check(record) > 0
    # The chapter the appendix names reads the record (where that chapter exists yet).
    where, stem, _ = provenance.SHOWN_IN[name]
    chapter = ROOT / "chapters" / f"{stem}.py"
    if chapter.exists() and where != "appendix B":
        assert name in chapter.read_text(), f"{chapter.name} does not read {name}"


def test_provenance_check_catches_a_summary_or_verdict_that_does_not_follow():
    import copy

    from experiments import provenance

    record = provenance.read("focal_table1")
    wrong = copy.deepcopy(record)
    wrong["metrics"]["summary"]["fl"]["AP"]["mean"] += 1
    with pytest.raises(AssertionError, match="mean ± sd"):
        provenance.check(wrong)
    wrong = copy.deepcopy(record)
    claim = wrong["metrics"]["claims"][0]
    claim["verdict"] = "inconclusive" if claim["verdict"] == "reproduced" else "reproduced"
    with pytest.raises(AssertionError, match="is not"):
        provenance.check(wrong)
    with pytest.raises(AssertionError, match="smoke"):
        provenance.check({**record, "smoke": True})
