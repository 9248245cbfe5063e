"""The library's imports point one way, downwards, through the layers CONTRIBUTING.md draws.

Each module may import only modules of a lower layer (function-level imports included),
and nothing under ``chapters/``, ``experiments/`` or ``benchmarks/``. A new module must be
given a layer here, which keeps the diagram in CONTRIBUTING.md honest.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fpnbook"

# Lowest first, as in detectron2: tensors and boxes, ops, layers and heads,
# meta-architectures, builders, checkpoints, then data, training and the front ends.
LAYERS = [
    ("tensors, boxes, files", {"boxes", "files", "timing"}),
    ("ops", {"ops", "anchors", "matching", "losses", "images", "reference"}),
    ("layers and heads", {"poolers", "backbone", "fpn", "rpn", "roi_heads", "weight_transfer"}),
    ("meta-architectures", {"rcnn", "retinanet"}),
    ("builders and the torchvision bridge", {"models", "interop"}),
    ("checkpoints", {"checkpoint"}),
    ("evaluation, pictures, generated data, export", {"evaluate", "viz", "diagrams", "labelme", "shapes", "export"}),
    ("analysis of the evaluation", {"analysis"}),
    ("data", {"data"}),
    ("training", {"train"}),
    ("pretraining", {"pretrain"}),
    ("front ends", {"cli", "widgets.focal", "widgets.roi", "widgets.predictions", "widgets", "exercises", "solutions"}),
    ("python -m fpnbook", {"__main__"}),
]
LAYER = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}
OUTSIDE = ("chapters", "experiments", "benchmarks", "tests")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(fpnbook modules, other top-level packages) that ``path`` imports anywhere in its body."""
    here = module_name(path).split(".")
    package = here[:-1] if path.name != "__init__.py" else here
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            if node.module is None:  # from . import x
                ours |= {".".join([*target, alias.name]) for alias in node.names}
            else:
                ours.add(".".join(target))
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            (ours.add(node.module.removeprefix("fpnbook.")) if top == "fpnbook" else others.add(top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (ours.add(alias.name.removeprefix("fpnbook.")) if top == "fpnbook" else others.add(top))
    return {m for m in ours if m}, others


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_layer():
    missing = sorted(module_name(p) for p in MODULES if module_name(p) not in LAYER)
    assert not missing, f"give these modules a layer in tests/test_layers.py and CONTRIBUTING.md: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_downwards(path):
    name = module_name(path)
    ours, others = imports_of(path)
    upward = sorted(m for m in ours if m in LAYER and LAYER[m] >= LAYER[name] and m != name)
    assert not upward, f"{name} ({LAYERS[LAYER[name]][0]}) imports {upward} from its own layer or above"
    assert not others & set(OUTSIDE), f"{name} imports {sorted(others & set(OUTSIDE))}"


def test_the_check_sees_function_level_imports(tmp_path):
    sample = PACKAGE / "cli.py"  # imports its verbs' modules inside the functions
    ours, _ = imports_of(sample)
    assert {"train", "models", "data"} <= ours
