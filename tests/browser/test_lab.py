"""The server a reader starts with `make lab`: token required, and chapter 0 runs clean in it."""

import urllib.request

import pytest

pytestmark = pytest.mark.browser


def test_requests_without_the_token_are_refused(lab, browser, screenshot_dir):
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
        page.goto(f"{lab.url}/lab")
        assert "/login" in page.url
        page.locator("input[type=password]").first.wait_for()
        assert page.locator(".jp-NotebookPanel, #jp-main-dock-panel").count() == 0
        # With the token the same browser gets JupyterLab itself.
        page.goto(f"{lab.url}/lab?token={lab.token}")
        page.locator("#jp-main-dock-panel").wait_for(timeout=60_000)
        assert "/login" not in page.url
    finally:
        context.close()


def test_chapter_0_runs_without_errors(notebook):
    chapter = notebook("00_start_here.ipynb")
    seconds = chapter.run_all()
    print(f"00_start_here: Run All Cells took {seconds:.1f} s")
    chapter.screenshot("00_start_here-after-run-all")
    chapter.assert_ran_cleanly()
    # The first figure (the dataset grid) is there, rendered by matplotlib.
    images = chapter.page.locator(".jp-NotebookPanel .jp-OutputArea-output img")
    assert images.count() >= 1
    images.first.scroll_into_view_if_needed()
    chapter.screenshot("00_start_here-first-figure", images.first)


PROBE = '''\
import ipywidgets as widgets
import matplotlib.pyplot as plt

size = widgets.IntSlider(value=3, min=1, max=9, description="size")
mode = widgets.ToggleButtons(options=["RoIPool", "RoIAlign"], description="mode")
colour = widgets.Dropdown(options=["C0", "C3"], description="colour")
readout = widgets.HTML()
figure = widgets.Output()

def draw(*_):
    with figure:
        figure.clear_output(wait=True)
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot(range(size.value + 1), color=colour.value)
        ax.set_title(mode.value)
        plt.show()
    readout.value = f"<b>size {size.value}, {mode.value}</b>"

for control in (size, mode, colour):
    control.observe(draw, "value")
draw()
widgets.VBox([size, mode, colour, readout, figure])
'''


def test_widgets_render_and_respond(lab, notebook):
    """ipywidgets 8 + jupyterlab_widgets in this lab: controls show, and moving them redraws.

    A probe notebook written into the temporary copy, independent of any chapter, so a
    broken widget set-up is told apart from a broken chapter.
    """
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, lab.chapters / "widget_probe.ipynb")
    probe = notebook("widget_probe.ipynb")
    probe.run_all()
    probe.assert_ran_cleanly()
    area = probe.page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
    text = probe.page.locator(".jp-NotebookPanel .widget-html-content").first
    image = lambda: probe.page.locator(".jp-NotebookPanel .widget-output img").first.get_attribute("src")  # noqa: E731
    assert text.inner_text() == "size 3, RoIPool"
    first = image()
    probe.screenshot("widget_probe-start", area)

    probe.set_slider("size", 7)
    assert probe.wait_for_change(text.inner_text, "size 3, RoIPool") == "size 7, RoIPool"
    assert probe.slider_value("size") == "7"
    probe.nudge_slider("size", "ArrowRight")
    assert probe.wait_for_change(text.inner_text, "size 7, RoIPool") == "size 8, RoIPool"
    probe.choose("mode", "RoIAlign")
    assert probe.wait_for_change(text.inner_text, "size 8, RoIPool") == "size 8, RoIAlign"
    second = probe.wait_for_change(image, first)
    assert second != first
    probe.choose("colour", "C3")
    assert probe.wait_for_change(image, second) != second
    probe.screenshot("widget_probe-moved", area)
