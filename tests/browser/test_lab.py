"""The server a reader starts with `make lab`: token required, and chapter 0 runs clean in it."""

import urllib.request

import pytest

pytestmark = pytest.mark.browser


def test_requests_without_the_token_are_refused(lab, browser, screenshot):
    assert lab.api("GET", "/api/contents", token=None)[0] == 403
    assert lab.api("GET", "/api/contents", token="not-the-token")[0] == 403
    assert lab.api("GET", "/api/kernels", token=None)[0] == 403
    status, listing = lab.api("GET", "/api/contents")
    assert status == 200 and any(item["name"].endswith(".ipynb") for item in listing["content"])

    # Without the token the lab sends the browser to the login page, not to the book.
    with urllib.request.urlopen(f"{lab.url}/lab", timeout=10) as response:
        assert "/login" in response.url
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{lab.url}/lab/tree/00_start_here.ipynb")
        assert "/login" in page.url
        page.locator("input[type=password]").first.wait_for()
        assert page.locator("#jp-main-dock-panel").count() == 0
        screenshot(page, "login-without-token")
    finally:
        context.close()
    # With the token the same URL serves JupyterLab (the chapter tests then use it in the browser).
    with urllib.request.urlopen(f"{lab.url}/lab/tree/00_start_here.ipynb?token={lab.token}", timeout=10) as response:
        assert response.status == 200 and "/login" not in response.url
        assert "JupyterLab" in response.read().decode()


def test_chapter_0_runs_without_errors(notebook):
    chapter = notebook("00_start_here.ipynb")
    chapter.run_all()
    chapter.screenshot("00_start_here-after-run-all")
    chapter.assert_ran_cleanly()
    # The first figure (the dataset grid) is there, rendered by matplotlib.
    images = chapter.page.locator(".jp-NotebookPanel .jp-OutputArea-output img")
    assert images.count() >= 1
    images.first.scroll_into_view_if_needed()
    chapter.screenshot("00_start_here-first-figure", images.first)

