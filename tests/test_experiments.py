"""Every experiment's --smoke mode runs and writes a well-formed record."""

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem not in {"__init__", "common"})


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


def test_fpn_table1_record_verdicts_follow_from_its_runs():
    from experiments import fpn_table1
    from experiments.common import mean_sd, paired_verdict

    path = ROOT / "experiments" / "results" / "fpn_table1.json"
    record = json.loads(path.read_text())
    if "runs" not in record["metrics"]:
        pytest.skip("the committed fpn_table1 record predates the seeded rerun")
    seeds = [str(s) for s in record["seeds"]]
    assert len(seeds) >= 3 and record["eval_images"] >= 256
    metrics = record["metrics"]
    assert set(metrics["runs"]) == set(fpn_table1.VARIANTS)
    for claim in metrics["claims"]:
        better, worse, metric = claim["better"], claim["worse"], claim["metric"]
        expected = paired_verdict([metrics["runs"][better][s][metric] for s in seeds],
                                  [metrics["runs"][worse][s][metric] for s in seeds])
        assert {k: claim[k] for k in expected} == expected
        assert claim["paper_gap"] == round(fpn_table1.PAPER[better][metric] - fpn_table1.PAPER[worse][metric], 2)
    for variant, rows in metrics["summary"].items():
        for metric, value in rows.items():
            assert value == mean_sd(metrics["runs"][variant][s][metric] for s in seeds)
