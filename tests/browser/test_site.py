"""The static website (`make site`) in Chromium: it builds, and every page reads offline.

The site is built once per session into a temporary folder with `tools/site.py` (as
`make site` does), served from 127.0.0.1, and every request that leaves 127.0.0.1 is
refused and counted: a page that needs the network fails here.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, save_screenshot

# Numbered chapters first, then the lettered appendices (the README's order).
CHAPTERS = [p.stem for pattern in ("[0-9][0-9]_*.ipynb", "[A-Z]_*.ipynb")
            for p in sorted((REPO / "chapters").glob(pattern))]
# Chapters with display math in their prose, and those that store widget state.
WITH_MATH = {"01_pipeline", "02_pyramids", "03_focal_loss", "04_roi_align", "05_second_stage", "06_weight_transfer"}
WITH_WIDGETS = {"03_focal_loss", "04_roi_align", "08_where_the_ap_goes"}


def stored_figures(chapter: str) -> int:
    """How many image outputs the stored notebook has outside widgets: the figures the page must show."""
    notebook = json.loads((REPO / "chapters" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    return sum(
        any(kind.startswith("image/") for kind in output.get("data", {}))
        for cell in notebook["cells"] if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    )


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "html"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "tools" / "site.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    print(f"site: built in {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, f"tools/site.py failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="session")
def site_url(site: Path):
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


class Visit:
    """One page in a fresh context: its console errors, failed and refused requests."""

    def __init__(self, browser, base: str, path: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.external: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url) if not r.url.startswith("data:") else None)
        self.page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        self.page.route("**/*", functools.partial(self._route, base))
        self.page.goto(f"{base}/{path}", wait_until="networkidle")

    def _route(self, base: str, route) -> None:
        url = route.request.url
        if url.startswith(base) or url.startswith("data:"):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, site_url):
    opened = []

    def open_page(path: str) -> Visit:
        opened.append(Visit(browser, site_url, path))
        return opened[-1]

    yield open_page
    for v in opened:
        v.close()


def test_site_builds_every_chapter(site: Path):
    assert (site / "index.html").is_file()
    for chapter in CHAPTERS:
        assert (site / "chapters" / f"{chapter}.html").is_file(), chapter
    assert (site / "_static" / "vendor" / "mathjax" / "tex-chtml.js").is_file()
    assert (site / "_static" / "vendor" / "html-manager" / "embed.js").is_file()


def test_landing_page_is_the_readme_chapter_table(visit):
    v = visit("index.html")
    links = v.page.locator("article table a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert links == [f"chapters/{c}.html" for c in CHAPTERS]
    assert "make lab" in v.page.locator("article").inner_text()
    assert not v.errors and not v.failed and not v.external, (v.errors, v.failed, v.external)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_reads_offline(visit, screenshot_dir, chapter):
    v = visit(f"chapters/{chapter}.html")
    page = v.page
    if chapter in WITH_MATH:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        page.evaluate("() => MathJax.startup.promise")
        assert page.locator("article mjx-container").count() > 0, "no typeset math"
        assert page.locator("article mjx-merror").count() == 0, "MathJax could not typeset a formula"
    figures = page.locator("div.cell_output > img")
    assert figures.count() == stored_figures(chapter)
    assert all(figures.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(figures.count()))
    # Code is highlighted, papers are linked, chapters are navigable.
    assert page.locator("div.highlight-ipython3 span.k, div.highlight-ipython3 span.kn").count() > 0
    if chapter[0].isdigit():  # the appendices (A, B) are about training and records, not a paper
        assert page.locator("article a[href*='arxiv.org']").count() > 0
    assert page.locator("nav.bd-links a").count() >= len(CHAPTERS)
    # No heading runs past the text column (long code spans in headings wrap).
    wide = page.evaluate("() => [...document.querySelectorAll('article h1, article h2, article h3')]"
                         ".filter(h => h.scrollWidth > h.clientWidth + 1).map(h => h.textContent)")
    assert not wide, f"headings wider than the column: {wide}"
    if chapter in WITH_WIDGETS:
        page.locator(".widget-slider").first.wait_for(timeout=30_000)
    page.wait_for_timeout(300)
    save_screenshot(page, screenshot_dir, f"site-{chapter}")
    assert not v.errors, v.errors
    assert not v.failed, v.failed
    assert not v.external, f"requests that left 127.0.0.1: {v.external}"


@pytest.mark.parametrize("chapter", sorted(WITH_WIDGETS))
def test_saved_widget_renders(visit, screenshot_dir, chapter):
    v = visit(f"chapters/{chapter}.html")
    sliders = v.page.locator(".widget-slider")
    sliders.first.wait_for(timeout=30_000)
    assert sliders.count() >= 2
    # The widget's figure comes back from its saved state, as a decoded image.
    picture = v.page.locator(".jupyter-widgets img").first
    picture.wait_for(timeout=30_000)
    assert picture.evaluate("img => img.complete && img.naturalWidth > 100")
    picture.scroll_into_view_if_needed()
    save_screenshot(v.page, screenshot_dir, f"site-widget-{chapter}")
    assert not v.errors, v.errors


def test_search_finds_roialign(visit):
    v = visit("search.html?q=RoIAlign")
    results = v.page.locator("ul.search li a")
    results.first.wait_for(timeout=30_000)
    hrefs = results.evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert any("04_roi_align" in h for h in hrefs), hrefs
    assert not v.errors and not v.external, (v.errors, v.external)
