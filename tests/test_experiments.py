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
