"""The chapters as stored: every .ipynb is its .py twin, executed, and small.

nbval (run by `make test` on chapters/) re-executes each notebook and compares outputs;
these tests catch what nbval cannot: a .py edited without `make book`, a notebook
committed without outputs, or one that grew too large to review or clone.
"""

from pathlib import Path

import jupytext
import pytest

CHAPTERS = Path(__file__).resolve().parents[1] / "chapters"
# Numbered chapters, then the lettered appendices.
PATTERNS = ("[0-9][0-9]_*", "[A-Z]_*")
NOTEBOOKS = [p for pattern in PATTERNS for p in sorted(CHAPTERS.glob(pattern + ".ipynb"))]
SOURCES = [p for pattern in PATTERNS for p in sorted(CHAPTERS.glob(pattern + ".py"))]


def cells(path):
    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


def test_every_chapter_is_a_pair():
    assert SOURCES, "no chapters found"
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(notebook):
    assert cells(notebook) == cells(notebook.with_suffix(".py")), (
        f"{notebook.name} differs from its .py; run `make book CHAPTERS=chapters/{notebook.stem}.py`"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_with_outputs_and_small(notebook):
    code = [c for c in jupytext.read(notebook).cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{notebook.name} has unexecuted cells; run `make book`"
    assert any(c.get("outputs") for c in code), f"{notebook.name} was stored without outputs"
    assert notebook.stat().st_size < 2 * 1024 * 1024, f"{notebook.name} is over 2 MiB"
