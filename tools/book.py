"""`make book`: rebuild each chapter notebook from its py:percent twin and execute it.

The ``.py`` is the source of truth; the ``.ipynb`` is regenerated from it and run
top to bottom, so the outputs stored in git are always those of the current code.

    python tools/book.py                         # every chapter
    python tools/book.py chapters/04_roi_align.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def chapter_sources(paths: list[str] | None = None) -> list[Path]:
    """The py:percent chapter files to build: the ones named, or all of ``chapters/``."""
    if not paths:
        # Numbered chapters, then the lettered appendices.
        return [p for pattern in ("[0-9][0-9]_*.py", "[A-Z]_*.py") for p in sorted(CHAPTERS.glob(pattern))]
    sources = []
    for p in paths:
        path = Path(p).with_suffix(".py")
        if not path.is_file():
            raise FileNotFoundError(f"no chapter source {path}")
        sources.append(path.resolve())
    return sources


def build(source: Path, timeout: int = 600) -> float:
    """Execute ``source`` as a notebook and write the paired ``.ipynb`` atomically. Returns seconds."""
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = KERNEL
    notebook.metadata.setdefault("language_info", {"name": "python"})
    start = time.perf_counter()
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(source.parent)}}
    )
    client.execute()
    seconds = time.perf_counter() - start
    target = source.with_suffix(".ipynb")
    with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        nbformat.write(notebook, f)
    os.chmod(f.name, 0o644)
    os.replace(f.name, target)
    # Re-save the text twin through jupytext so both files carry identical cells.
    jupytext.write(jupytext.read(target), source, fmt="py:percent")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", help="chapter .py files (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    for source in chapter_sources(args.chapters):
        seconds = build(source, args.timeout)
        print(f"{source.relative_to(ROOT)}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
