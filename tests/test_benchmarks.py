"""Every benchmark's ``--quick`` mode runs and prints its fpnbook / torchvision ratios.

No timing is checked here (timings belong in the benchmarks' reports, never in tests):
only that each script still runs against the current library.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")


def test_every_benchmark_is_covered():
    assert SCRIPTS == ["retinanet.py", "roi_ops.py", "roi_widget.py", "train_throughput.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_runs(script):
    run = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--threads", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    # The side-by-side report (the widget's benchmark times redraws, there is no torchvision twin).
    assert ("redraw" if script == "roi_widget.py" else "fpnbook") in run.stdout, run.stdout
