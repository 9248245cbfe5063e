"""Chapter 3 in the browser: run it, then move the RoI explorer's box, stride and ops (fpnbook.widgets.roi)."""

import math
import re

import pytest

pytestmark = pytest.mark.browser

CHAPTER = "04_roi_align.ipynb"
EDGES = ("x1", "y1", "x2", "y2")
EDGE = re.compile(r"\b(x1|y1|x2|y2) ([+-]?[\d.]+) px")


def read_misalignment(explorer) -> dict:
    """The explorer's HTML lines as numbers: {'stride', 'aligned', 'RoIPool': {edge: px, 'iou'}, 'RoIAlign': {...}}.

    The text reads: "misalignment at stride 16: RoIPool: x1 +3.0 px y1 ... (IoU 0.830)
    misalignment RoIAlign (aligned=True): x1 +0.0 px ... (IoU 1.000)".
    """
    text = explorer.locator(".widget-html-content").first.inner_text()
    stride = re.search(r"at stride (\d+)", text)
    pool = re.search(r"RoIPool: (.*?)\(IoU ([\d.]+)\)", text, re.S)
    align = re.search(r"RoIAlign \(aligned=(True|False)\): (.*?)\(IoU ([\d.]+)\)", text, re.S)
    assert stride and pool and align, f"explorer text not understood: {text!r}"

    def edges(part: str, iou: str) -> dict:
        return {**{e: float(v) for e, v in EDGE.findall(part)}, "iou": float(iou)}

    return {"stride": int(stride.group(1)), "aligned": align.group(1) == "True",
            "RoIPool": edges(*pool.groups()), "RoIAlign": edges(align.group(2), align.group(3))}


def roipool_misalignment(x: int, y: int, w: int, h: int, stride: int) -> dict:
    """RoIPool's quantisation, worked out here from the box: corners rounded to feature pixels,
    both end pixels included; read edge minus box edge, in image pixels."""
    cell = lambda v: math.floor(v / stride + 0.5)  # noqa: E731  (C's round, boxes are >= 0)
    read = (cell(x) * stride, cell(y) * stride, (cell(x + w) + 1) * stride, (cell(y + h) + 1) * stride)
    return dict(zip(EDGES, (r - b for r, b in zip(read, (x, y, x + w, y + h)))))


def assert_edges(shown: dict, expected: dict) -> None:
    assert {e: shown[e] for e in EDGES} == pytest.approx(expected, abs=0.05)


def test_roi_explorer(notebook):
    chapter = notebook(CHAPTER)
    chapter.run_all()
    chapter.assert_ran_cleanly()

    explorer = chapter.output_holding("slider", "width")
    explorer.scroll_into_view_if_needed()
    image = explorer.locator("img").first
    read = lambda: read_misalignment(explorer)  # noqa: E731
    box = lambda: tuple(int(chapter.slider_value(k)) for k in ("x", "y", "width", "height"))  # noqa: E731

    # It opens on the chapter's example: a 167 x 54 px box on the stride-16 map.
    start = read()
    x, y, w, h = box()
    assert (w, h) == (167, 54) and start["stride"] == 16 and chapter.chosen("stride") == "16"
    assert start["aligned"] and chapter.chosen("mode") == "both"
    assert_edges(start["RoIPool"], roipool_misalignment(x, y, w, h, 16))
    assert_edges(start["RoIAlign"], dict.fromkeys(EDGES, 0.0))  # aligned RoIAlign reads the box itself
    assert start["RoIPool"]["iou"] < start["RoIAlign"]["iou"] == 1.0
    picture = image.screenshot()
    chapter.screenshot("04_roi_align-explorer-start", explorer)

    # One pixel to the right with the keyboard: RoIPool's corners stay put, so its error moves by 1 px.
    chapter.nudge_slider("x", "ArrowRight")
    moved = chapter.wait_for_change(read, start)
    assert box() == (x + 1, y, w, h)
    assert_edges(moved["RoIPool"], roipool_misalignment(x + 1, y, w, h, 16))
    assert_edges(moved["RoIAlign"], dict.fromkeys(EDGES, 0.0))
    new_picture = chapter.wait_for_change(image.screenshot, picture)
    assert new_picture != picture, "the figure did not change when the box moved"
    picture = new_picture

    # A taller box, typed into the height readout.
    chapter.set_slider("height", 80)
    taller = chapter.wait_for_change(read, moved)
    assert box() == (x + 1, y, w, 80)
    assert_edges(taller["RoIPool"], roipool_misalignment(x + 1, y, w, 80, 16))
    picture = chapter.wait_for_change(image.screenshot, picture)

    # A coarser map: stride 32 rounds to 32-pixel cells, so RoIPool's errors change.
    chapter.choose("stride", "32")
    coarse = chapter.wait_for_change(read, taller)
    assert coarse["stride"] == 32 and chapter.chosen("stride") == "32"
    assert_edges(coarse["RoIPool"], roipool_misalignment(x + 1, y, w, 80, 32))
    assert_edges(coarse["RoIAlign"], dict.fromkeys(EDGES, 0.0))
    new_picture = chapter.wait_for_change(image.screenshot, picture)
    assert new_picture != picture, "the figure did not change with the stride"
    picture = new_picture
    chapter.screenshot("04_roi_align-explorer-stride-32", explorer)

    # One op at a time: the overlays and heatmaps change, the numbers do not.
    pictures = {"both": picture}
    for mode in ("RoIPool", "RoIAlign"):
        chapter.choose("mode", mode)
        pictures[mode] = chapter.wait_for_change(image.screenshot, picture)
        assert chapter.chosen("mode") == mode
        assert pictures[mode] not in (pictures["both"], picture), f"the figure did not change for mode {mode}"
        picture = pictures[mode]
        assert read() == coarse
        chapter.screenshot(f"04_roi_align-explorer-{mode}", explorer)

    # aligned=False: every RoIAlign sample sits half a feature pixel (16 px at stride 32) right of and below the box.
    chapter.set_checkbox("aligned", False)
    unaligned = chapter.wait_for_change(read, coarse)
    assert not unaligned["aligned"]
    assert_edges(unaligned["RoIAlign"], dict.fromkeys(EDGES, 16.0))
    assert unaligned["RoIAlign"]["iou"] < 1.0
    assert chapter.wait_for_change(image.screenshot, picture) != picture
    chapter.screenshot("04_roi_align-explorer-unaligned", explorer)
