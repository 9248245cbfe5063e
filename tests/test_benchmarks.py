"""Every benchmark's ``--quick`` mode runs and prints its report (fpnbook / torchvision ratios, or a profile).

No timing is checked here (timings belong in the benchmarks' reports, never in tests):
only that each script still runs against the current library, and that the profile's
stage accounting adds up.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fpnbook.timing import stage

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")


def test_every_benchmark_is_covered():
    assert SCRIPTS == ["onnx_runtime.py", "profile_step.py", "retinanet.py", "roi_ops.py", "roi_widget.py",
                       "time_to_ap.py", "train_throughput.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_runs(script):
    run = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--threads", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    # The side-by-side report or the profile's title (the widget's benchmark times redraws, there is no torchvision twin).
    assert ("redraw" if script == "roi_widget.py" else "fpnbook") in run.stdout, run.stdout


def test_train_throughput_on_generated_data():
    # Both models train on a batch of the generated split instead of random boxes.
    run = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--quick", "--threads", "1", "--data", "generated"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "generated images" in run.stdout and "fpnbook" in run.stdout, run.stdout


def test_profile_stages_partition_the_step():
    spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
    profile_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_step)
    x, kernel = torch.randn(1, 1, 64, 64), torch.randn(1, 1, 3, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with stage("step"):
                with stage("forward"):
                    y = x * 2
                    with stage("inner"):
                        y = torch.nn.functional.conv2d(y, kernel)
                    with stage("inner"):  # a stage entered twice is summed
                        y = y.exp()
                with stage("backward"):
                    y.sum()
    result = profile_step.summarise(prof.events(), steps=2, cuda=False)
    rows = {r["name"]: r for r in result["stages"]}
    assert list(rows) == ["step", "forward", "inner", "backward"]
    assert [r["depth"] for r in rows.values()] == [0, 1, 2, 1]
    # Self times partition the step; a total holds its nested stages.
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1, abs=2e-3)
    assert rows["step"]["total_ms"] == pytest.approx(result["step_ms_profiled"])
    forward = rows["forward"]
    assert forward["total_ms"] == pytest.approx(forward["self_ms"] + rows["inner"]["total_ms"], abs=2e-3)
    assert 0 < result["convolution_share"] < 1
    assert "aten::exp" in {op["name"] for op in result["top_ops"]}


def _time_to_ap():
    spec = importlib.util.spec_from_file_location("time_to_ap", ROOT / "benchmarks" / "time_to_ap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_ap_arguments(tmp_path, capsys):
    time_to_ap = _time_to_ap()
    assert time_to_ap.parse_args([]).eval_at == [5, 10, 15, 20, 30]
    assert time_to_ap.parse_args(["--minutes", "12"]).eval_at == [5, 10, 12]  # the budget is always scored
    for bad in (["--minutes", "0"], ["--minutes", "-3"], ["--minutes", "10", "--eval-at", "5,11"], ["--arms", "detectron"]):
        with pytest.raises(SystemExit):
            time_to_ap.parse_args(bad)
    assert "beyond the budget" in capsys.readouterr().err
    taken = tmp_path / "mine.json"
    taken.write_text("{}")
    with pytest.raises(SystemExit):  # a user's file is never replaced unasked
        time_to_ap.parse_args(["--out", str(taken)])
    assert time_to_ap.parse_args(["--out", str(taken), "--overwrite"]).out == taken
    # torchvision's reference recipe scaled to a batch of 4: lr 0.005, x0.1 at 16/26 and 22/26, warm-up <= 1/10 of the run.
    recipe = time_to_ap.torchvision_recipe(2600, 4)
    assert recipe["lr"] == pytest.approx(0.005) and recipe["milestones"] == (1600, 2200) and recipe["warmup_iters"] == 260


def test_time_to_ap_clock_and_summary(tmp_path, monkeypatch):
    time_to_ap = _time_to_ap()
    now = [0.0]
    monkeypatch.setattr(time_to_ap.time, "perf_counter", lambda: now[0])

    def evaluate(model):  # an evaluation takes 100 s, which the training clock must not count
        now[0] += 100
        return {"bbox": {"AP": 0.1 * len(clock.evals) + 0.1, "AP50": 0, "AP75": 0}, "segm": {"AP": 0, "AP50": 0, "AP75": 0}}

    clock = time_to_ap.BudgetClock([1, 2], 2, iterations=10, evaluate=evaluate, device=torch.device("cpu"),
                                   report=lambda line: None)
    clock.start()
    stops = []
    for step in range(1, 5):
        now[0] += 30  # a 30 s step
        stops.append(clock(step, None))
    assert stops == [False, False, False, True]
    assert [(e["minute"], e["step"], e["train_minutes"]) for e in clock.evals] == [(1, 2, 1.0), (2, 4, 2.0)]
    arms = {"fpnbook-old": {"evals": [{"train_minutes": 10, "bbox": {"AP": 0.1}}, {"train_minutes": 20, "bbox": {"AP": 0.2}}]},
            "fpnbook-new": {"evals": [{"train_minutes": 5, "bbox": {"AP": 0.15}}]}}
    result = time_to_ap.time_to_target(arms, 0.145)
    assert result["arms"]["fpnbook-old"] == {"first_eval": 20, "interpolated": pytest.approx(14.5)}
    assert result["arms"]["fpnbook-new"] == {"first_eval": 5, "interpolated": None}  # reached by the first evaluation
    assert result["ratio_old_over_new"] == pytest.approx(4) and result["ratio_basis"] == "first_eval"
    assert time_to_ap.time_to_target(arms, 0.5)["arms"]["fpnbook-old"] is None
    # A pretrained arm's clock starts at its pretraining minutes: total_minutes, not train_minutes, counts.
    arms["fpnbook-pretrained"] = {"evals": [{"train_minutes": 1, "total_minutes": 5, "bbox": {"AP": 0.1}},
                                            {"train_minutes": 2, "total_minutes": 6, "bbox": {"AP": 0.2}}]}
    result = time_to_ap.time_to_target(arms, 0.145)
    assert result["arms"]["fpnbook-pretrained"]["interpolated"] == pytest.approx(5.45)
    assert result["ratio_old_over_pretrained"] == pytest.approx(14.5 / 5.45, abs=1e-3)
    assert result["ratio_basis_pretrained"] == "interpolated"
    record = {"minutes": 20, "arms": {n: {"evals": [{**e, "segm": e["bbox"]} for e in a["evals"]]} for n, a in arms.items()},
              "time_to_box_ap": {"0.145": result}, "hardware": "test", "threads": 1, "batch_size": 4}
    time_to_ap.plot(record, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_time_to_ap_merges_arms_of_separate_runs(tmp_path):
    time_to_ap = _time_to_ap()
    shared = {k: 1 for k in time_to_ap.SHARED}
    old = {**shared, "command": "a", "date": "d1", "hardware": "h", "arms": {
        "fpnbook-old": {"evals": [{"train_minutes": 10, "bbox": {"AP": 0.1}}, {"train_minutes": 20, "bbox": {"AP": 0.2}}]}}}
    new = {**shared, "command": "b", "date": "d2", "hardware": "h", "arms": {
        "fpnbook-new": {"evals": [{"train_minutes": 5, "bbox": {"AP": 0.15}}]}}}
    merged = time_to_ap.merge_records([new, old], [0.145])
    assert list(merged["arms"]) == ["fpnbook-old", "fpnbook-new"] and merged["command"] == ["b", "a"]
    assert merged["time_to_box_ap"]["0.145"]["ratio_old_over_new"] == pytest.approx(4)
    with pytest.raises(ValueError, match="differ in"):
        time_to_ap.merge_records([new, {**old, "clock": "wall"}], [0.145])
    with pytest.raises(ValueError, match="more than one"):
        time_to_ap.merge_records([new, new], [0.145])
    with pytest.raises(ValueError, match="interrupted"):
        time_to_ap.merge_records([new, {**old, "arms_pending": ["torchvision"]}], [0.145])
    # An interrupted run's missing arm, brought by another record, completes it.
    assert "arms_pending" not in time_to_ap.merge_records([{**new, "arms_pending": ["fpnbook-old"]}, old], [0.145])
    for name, record in (("new", new), ("old", old)):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        time_to_ap.parse_args(["--merge", str(tmp_path / "missing.json")])
