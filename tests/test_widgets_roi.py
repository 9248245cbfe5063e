"""The RoI explorer: its plain update function, its figure, and the widget driven by its controls."""

import numpy as np
import pytest
import skimage.data
import torch
import torchvision

from fpnbook.ops import roi_align, roi_pool
from fpnbook.widgets.roi import (
    EXAMPLE,
    PANEL_TITLES,
    RoIExplorer,
    RoIFigure,
    feature_map,
    grey_image,
    misalignment_text,
    roi_explorer,
    roi_explorer_state,
)

IMAGE = skimage.data.astronaut()[::2, ::2]  # 256 x 256: keeps the tests fast


def state(**changes):
    return roi_explorer_state(IMAGE, **{"x": 43, "y": 61, "w": 167, "h": 54, "stride": 16, "output_size": 7,
                                        "sampling_ratio": 2, "aligned": True, **changes})


def test_worked_example_roipool_rounds_corners_to_feature_pixels():
    s = state(x=0, y=0)
    # 167 / 16 = 10.4375 -> cell 10, 54 / 16 = 3.375 -> cell 3; both end cells are kept: 11 x 4 cells.
    np.testing.assert_array_equal(s["pool_region"], [0, 0, 176, 64])
    assert s["pool_misalignment"] == {"x1": 0.0, "y1": 0.0, "x2": 9.0, "y2": 10.0}
    assert s["align_misalignment"] == {"x1": 0.0, "y1": 0.0, "x2": 0.0, "y2": 0.0}
    assert s["align_iou"] == pytest.approx(1.0) and s["pool_iou"] == pytest.approx(167 * 54 / (176 * 64))


def test_roialign_bins_are_the_exact_box_split_evenly():
    s = state(output_size=7)
    x1, y1, x2, y2 = s["box"]
    edges_x = x1 + np.arange(8) * (x2 - x1) / 7
    edges_y = y1 + np.arange(8) * (y2 - y1) / 7
    np.testing.assert_allclose(s["align_bins"][0, :, 0], edges_x[:-1])
    np.testing.assert_allclose(s["align_bins"][0, :, 2], edges_x[1:])
    np.testing.assert_allclose(s["align_bins"][:, 0, 1], edges_y[:-1])
    np.testing.assert_allclose(s["align_bins"][:, 0, 3], edges_y[1:])
    assert s["samples"].shape == (7 * 7 * 2 * 2, 2) and s["grid"] == (2, 2)
    inside = (s["samples"] > s["box"][:2]) & (s["samples"] < s["box"][2:])
    assert inside.all()


def test_aligned_false_shifts_everything_by_half_a_feature_pixel():
    for stride in (8, 16, 32):
        s = state(stride=stride, aligned=False)
        assert all(v == pytest.approx(stride / 2) for v in s["align_misalignment"].values())
        assert state(stride=stride, aligned=True)["align_iou"] == pytest.approx(1.0)


def test_adaptive_sampling_is_ceil_of_the_bin_per_axis():
    s = state(stride=4, sampling_ratio=0, output_size=7)  # bins 167/4/7 = 5.96 and 54/4/7 = 1.93 feature px
    assert s["grid"] == (2, 6) and len(s["samples"]) == 7 * 7 * 2 * 6


def test_coarser_stride_misaligns_more():
    errors = {}
    for stride in (4, 8, 16, 32):
        s = state(stride=stride)
        errors[stride] = max(abs(v) for v in s["pool_misalignment"].values())
        assert errors[stride] <= 1.5 * stride  # half a feature pixel of rounding, plus the end cell kept whole
    assert errors[32] > errors[16] > errors[4]
    assert state(stride=32)["pool_iou"] < state(stride=16)["pool_iou"]


def test_pooled_outputs_equal_fpnbook_and_torchvision_ops():
    for stride, size, ratio, aligned in ((16, 7, 2, True), (32, 5, 0, False), (8, 3, 1, True)):
        s = state(stride=stride, output_size=size, sampling_ratio=ratio, aligned=aligned)
        feature = feature_map(grey_image(IMAGE), stride)[None, None]
        rois = torch.tensor([[0.0, *s["box"]]], dtype=torch.float64)
        pooled = roi_pool(feature, rois, size, 1 / stride)[0, 0].numpy()
        aligned_out = roi_align(feature, rois, size, 1 / stride, ratio, aligned)[0, 0].numpy()
        np.testing.assert_allclose(s["pooled_pool"], pooled)
        np.testing.assert_allclose(s["pooled_align"], aligned_out)
        reference = torchvision.ops.roi_align(feature, rois, size, 1 / stride, ratio, aligned)[0, 0].numpy()
        np.testing.assert_allclose(s["pooled_align"], reference, atol=1e-12)
        np.testing.assert_allclose(s["difference"], aligned_out - pooled)


def test_roipool_bins_hold_its_maxima():
    """Each RoIPool output is the max of the feature pixels inside the bin the state draws."""
    s = state(stride=8)
    feature = s["feature"].numpy()
    for i in range(7):
        for j in range(7):
            x1, y1, x2, y2 = (s["pool_bins"][i, j] / 8).astype(int)
            assert s["pooled_pool"][i, j] == feature[y1:y2, x1:x2].max()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="stride"):
        state(stride=12)
    with pytest.raises(ValueError, match="w and h"):
        state(w=0)
    with pytest.raises(ValueError, match="image"):
        roi_explorer_state(np.zeros((2, 3, 4, 5)), 0, 0, 10, 10)
    with pytest.raises(ValueError, match="mode"):
        RoIFigure().draw(state(), mode="neither")


def test_text_names_every_edge():
    text = misalignment_text(state(stride=32))
    assert text.count("misalignment") == 2 and "x1" in text and "y2" in text and "stride 32" in text


def test_widget_controls_redraw_text_and_figure():
    w = roi_explorer(IMAGE, x=43, y=61)
    assert isinstance(w, RoIExplorer)
    described = {c.description for c in (w.x, w.y, w.width, w.height, w.stride, w.output_size, w.sampling_ratio,
                                         w.aligned, w.mode)}
    assert described == {"x", "y", "width", "height", "stride", "output size", "sampling ratio", "aligned", "mode"}
    assert (w.width.value, w.height.value, w.stride.value) == (EXAMPLE["w"], EXAMPLE["h"], 16)
    text, png = w.text.value, w.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "stride 16" in text
    w.stride.value = 32
    assert "stride 32" in w.text.value and w.image.value != png and w.state["stride"] == 32
    assert w.state["pool_iou"] < state()["pool_iou"]
    png = w.image.value
    w.aligned.value = False
    assert "aligned=False" in w.text.value and w.state["align_misalignment"]["x1"] == pytest.approx(16.0)
    w.mode.value = "RoIPool"
    assert w.image.value != png and not w.figure.ax_align.get_visible() and w.figure.ax_pool.get_visible()
    # Every panel has its title above it, hidden with its panel.
    assert [t.value for t in w.titles] == [f"<b>{title}</b>" for title in PANEL_TITLES]
    assert [t.layout.visibility for t in w.titles[1:]] == ["visible", "hidden", "hidden"]
    w.output_size.value = 4
    assert w.state["pooled_pool"].shape == (4, 4) and w.figure.heat["pooled_pool"].get_array().shape == (4, 4)
