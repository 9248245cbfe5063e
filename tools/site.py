"""`make site`: the book as a static website, from the stored notebooks (nothing re-executes).

    python tools/site.py            # -> build/site/index.html
    python tools/site.py --out DIR

Steps:
1. Vendor what the pages load in the browser, so that the site reads offline: MathJax
   and the Jupyter widget manager, pinned npm-registry
   tarballs checked against their published sha512. They are downloaded once into
   ``.cache/site-vendor/`` (git-ignored); later builds need no network.
2. Stage the Sphinx sources in a folder beside the output (``build/site-src/``): the stored chapter notebooks, a
   landing page made from the README (its introduction and its chapter table), and
   ``_static/``.
3. ``sphinx-build`` with ``site/conf.py`` (copied into the stage) (Sphinx + myst-nb + sphinx-book-theme).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "site-vendor"
OUT = ROOT / "build" / "site"

# name -> (version, sha512 integrity as the npm registry publishes it, {member prefix in the tarball: folder under _static/vendor})
VENDOR = {
    "mathjax": (
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        {"package/es5/": "mathjax/"},
    ),
    "@jupyter-widgets/html-manager": (
        "1.0.15",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        {"package/dist/": "html-manager/"},
    ),
}
REGISTRY = "https://registry.npmjs.org"
MARKER = ".fpnbook-site-src"

CSS = """\
/* fpnbook: figures as wide as the text column, never wider */
.cell_output img { max-width: 100%; height: auto; }
/* a long code span in a heading wraps instead of running past the column */
h1 code, h2 code, h3 code, h1 code .pre, h2 code .pre, h3 code .pre { overflow-wrap: anywhere; white-space: normal; }
"""


def tarball(name: str, version: str, integrity: str) -> bytes:
    """The package's npm tarball, from the cache or the registry, checked against ``integrity``."""
    path = CACHE / f"{name.replace('/', '+')}-{version}.tgz"
    if path.is_file():
        data = path.read_bytes()
    else:
        url = f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
        print(f"site: downloading {url}", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
        except OSError as error:
            sys.exit(f"site: cannot download {url} ({error}); the first build needs the npm registry, "
                     f"later builds use {CACHE}")
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity:
        path.unlink(missing_ok=True)
        sys.exit(f"site: {name}@{version} does not match its pinned sha512 (got {digest}); removed it, run again")
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def vendor(static: Path) -> None:
    """Unpack the pinned packages' browser files into ``static/vendor``."""
    for name, (version, integrity, members) in VENDOR.items():
        with tarfile.open(fileobj=io.BytesIO(tarball(name, version, integrity)), mode="r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile() or member.name.endswith(".map"):
                    continue
                for prefix, target in members.items():
                    if member.name == prefix or (prefix.endswith("/") and member.name.startswith(prefix)):
                        dest = static / "vendor" / (target + member.name[len(prefix):] if prefix.endswith("/") else target)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(tar.extractfile(member).read())


def landing_page(readme: str) -> str:
    """``index.md``: the README's introduction and its chapter table, with a table of contents."""
    intro = readme.split("\n## ", 1)[0]
    chapters = re.search(r"\n## Chapters\n(.*?)(?=\n## )", readme, re.S)
    if chapters is None:
        sys.exit("site: README.md has no '## Chapters' section to make the landing page from")
    pages = re.findall(r"\]\((chapters/[^)]+\.ipynb)\)", chapters.group(1))
    toc = "\n".join(p[: -len(".ipynb")] for p in pages)
    return (
        f"{intro}\n"
        "## Read it live\n\n"
        "These pages show the notebooks as they are stored, outputs included; the widgets show the "
        "state they were saved in. To run the cells and drag the sliders, clone the repository and "
        "run `make lab` (it sets up `.venv` and opens JupyterLab on `chapters/`).\n\n"
        f"## Chapters\n{chapters.group(1)}\n"
        f"```{{toctree}}\n:hidden:\n:maxdepth: 2\n\n{toc}\n```\n"
    )


def stage(stage_dir: Path) -> None:
    """Fresh Sphinx sources in ``stage_dir``: the stored notebooks, the landing page, _static."""
    if stage_dir.exists():
        if any(stage_dir.iterdir()) and not (stage_dir / MARKER).is_file():
            sys.exit(f"site: {stage_dir} holds files that tools/site.py did not stage; refusing to replace them")
        shutil.rmtree(stage_dir)
    (stage_dir / "chapters").mkdir(parents=True)
    (stage_dir / MARKER).write_text("staged by tools/site.py; rebuilt on every `make site`\n")
    for notebook in [p for pattern in ("[0-9][0-9]_*.ipynb", "[A-Z]_*.ipynb") for p in sorted((ROOT / "chapters").glob(pattern))]:
        shutil.copy2(notebook, stage_dir / "chapters" / notebook.name)
    (stage_dir / "index.md").write_text(landing_page((ROOT / "README.md").read_text(encoding="utf-8")),
                                        encoding="utf-8")
    shutil.copy2(ROOT / "site" / "conf.py", stage_dir / "conf.py")
    static = stage_dir / "_static"
    static.mkdir()
    shutil.copy2(ROOT / "site" / "mathjax2_shim.js", static / "mathjax2_shim.js")
    (static / "fpnbook.css").write_text(CSS, encoding="utf-8")
    vendor(static)


def build(out: Path = OUT) -> float:
    """Stage and build the site into ``out``; returns the seconds it took."""
    start = time.perf_counter()
    out = Path(out).resolve()
    sources = out.with_name(out.name + "-src")
    stage(sources)
    if out.exists():
        if any(out.iterdir()) and not (out / ".buildinfo").is_file():
            sys.exit(f"site: {out} holds files that are not a Sphinx build; refusing to replace them")
        shutil.rmtree(out)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", str(sources), str(out),
               "-d", str(sources / "_doctrees")]
    result = subprocess.run(command)
    if result.returncode:
        sys.exit(f"site: sphinx-build failed with exit code {result.returncode}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    seconds = build(args.out)
    print(f"site: built {args.out / 'index.html'} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
