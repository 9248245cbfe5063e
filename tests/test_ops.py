"""fpnbook.ops against torchvision.ops, by hand, and by gradcheck."""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from fpnbook import ops, reference
from fpnbook.ops import RoIAlign, RoIPool, roi_align, roi_pool

# fp32 sums of a few dozen products of O(1) numbers: the two implementations add
# in different orders, which moves the last few bits, nothing more.
ATOL = 1e-5


# Box coordinates are drawn as fractions of the map's side: from half a map before it
# to half a map past it. Snapping them to half feature pixels lands samples and bin
# edges exactly on pixel borders, where an off-by-one would show.
START = st.floats(-0.5, 1.5)
SIDE = st.one_of(st.just(0.0), st.floats(0, 1.2), st.floats(-0.25, 0))  # zero, any, inverted
SNAP = st.booleans()
OUTPUT_SIZE = st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)))


def feature_coordinate(draw, strategy: st.SearchStrategy[float], side: int) -> float:
    value = draw(strategy) * side
    return round(2 * value) / 2 if draw(SNAP) else value


@st.composite
def roi_cases(draw):
    """A small feature map and a few boxes in image pixels, in either of torchvision's box forms.

    Returns (features [N, C, H, W], boxes as passed, the same boxes as Tensor[K, 5], output_size, spatial_scale).
    """
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1.0, 0.25, 0.0625]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    features = torch.randn(n, c, h, w, generator=generator)
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        x1, y1 = feature_coordinate(draw, START, w), feature_coordinate(draw, START, h)
        x2, y2 = x1 + feature_coordinate(draw, SIDE, w), y1 + feature_coordinate(draw, SIDE, h)
        rows.append([draw(st.integers(0, n - 1)), x1 / scale, y1 / scale, x2 / scale, y2 / scale])
    rois = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    if draw(st.booleans()):
        boxes = [rois[rois[:, 0] == i, 1:] for i in range(n)]
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    else:
        boxes = rois
    return features, boxes, rois, draw(OUTPUT_SIZE), scale


@settings(max_examples=500, deadline=None)
@given(case=roi_cases(), sampling_ratio=st.sampled_from([-1, 0, 1, 2, 3]), aligned=st.booleans())
def test_roi_align_matches_torchvision(case, sampling_ratio, aligned):
    features, boxes, rois, output_size, scale = case
    ours = roi_align(features, boxes, output_size, scale, sampling_ratio, aligned)
    if aligned and sampling_ratio <= 0:
        # An inverted box gets a negative adaptive grid: no samples, output 0 (as on
        # torchvision's CUDA kernel; its CPU kernel fails to allocate a negative size).
        inverted = (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])
        assert not ours[inverted].any()
        ours, boxes = ours[~inverted], rois[~inverted]
    theirs = torchvision.ops.roi_align(features, boxes, output_size, scale, sampling_ratio, aligned)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def integer_grad(shape: torch.Size, seed: int) -> torch.Tensor:
    """Small whole numbers: their sums are exact in any order, so gradients compare exactly."""
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()


def check_roi_pool(features, boxes, output_size, scale, seed=0):
    """roi_pool against torchvision: values without autograd (fpnbook's max-only path), then
    values and the gradient with it (the path that tracks the argmax)."""
    theirs = torchvision.ops.roi_pool(features, boxes, output_size, scale)
    ours = roi_pool(features, boxes, output_size, scale)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)  # a max copies a value: exact
    if not len(theirs):
        return
    mine, ref = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours, theirs = roi_pool(mine, boxes, output_size, scale), torchvision.ops.roi_pool(ref, boxes, output_size, scale)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    grad = integer_grad(theirs.shape, seed)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(mine.grad, ref.grad, atol=0, rtol=0)


@settings(max_examples=500, deadline=None)
@given(case=roi_cases(), ties=st.booleans(), seed=st.integers(0, 2**31))
def test_roi_pool_matches_torchvision(case, ties, seed):
    features, boxes, _, output_size, scale = case
    if ties:  # a dozen distinct values: most bins hold several copies of their max
        features = (2 * features).round()
    check_roi_pool(features, boxes, output_size, scale, seed)


# --- by hand: a 4x4 map whose value at (y, x) is 4y + x ------------------------------------
# Bilinear interpolation is exact on a linear map, so every RoIAlign sample inside
# [0, 3] reads 4y + x, and a bin's mean is 4 * mean(y) + mean(x).

GRID = torch.arange(16.0).view(1, 1, 4, 4)


def box(x1, y1, x2, y2):
    return torch.tensor([[0.0, x1, y1, x2, y2]])


def test_roi_align_by_hand_not_aligned():
    # box (0, 0, 2, 2), 1 bin, 2x2 samples at 0 + (0.5, 1.5) * 2 / 2 = 0.5, 1.5:
    # mean y = mean x = 1 -> 4 * 1 + 1 = 5. The box covers pixels 0 and 1, whose mean
    # is 2.5: without the half-pixel shift the patch sits half a pixel down-right.
    assert roi_align(GRID, box(0, 0, 2, 2), 1, sampling_ratio=2).item() == 5.0
    # box (0, 0, 4, 4), 2x2 bins of 2 pixels, 1 sample at each centre: y, x in {1, 3}.
    # 3 = H - 1 is the last pixel; no clamping needed. 4*1+1, 4*1+3, 4*3+1, 4*3+3.
    expected = torch.tensor([[5.0, 7.0], [13.0, 15.0]])
    torch.testing.assert_close(roi_align(GRID, box(0, 0, 4, 4), 2, sampling_ratio=1)[0, 0], expected)
    # adaptive sampling: 1 bin of 4 pixels -> ceil(4 / 1) = 4 samples at 0.5, 1.5, 2.5, 3.5;
    # 3.5 is past the last pixel centre and reads pixel 3. mean = (0.5+1.5+2.5+3)/4 = 1.875,
    # value = 4 * 1.875 + 1.875 = 9.375.
    assert roi_align(GRID, box(0, 0, 4, 4), 1, sampling_ratio=-1).item() == 9.375
    # box (-2, 0, 0, 2), samples x = -1.5 (more than 1 pixel off the map: reads 0) and
    # x = -0.5 (reads the border, x = 0); y = 0.5, 1.5. Sum = (4*0.5 + 0) + (4*1.5 + 0) = 8,
    # divided by all 4 samples: 2.
    assert roi_align(GRID, box(-2, 0, 0, 2), 1, sampling_ratio=2).item() == 2.0


def test_roi_align_by_hand_aligned():
    # aligned shifts the box by -0.5: (0, 0, 2, 2) -> (-0.5, -0.5, 1.5, 1.5); samples at
    # -0.5 + (0.5, 1.5) = 0, 1; mean 0.5 -> 4 * 0.5 + 0.5 = 2.5, the mean of pixels
    # (0,0), (0,1), (1,0), (1,1) = (0 + 1 + 4 + 5) / 4: exactly what the box covers.
    assert roi_align(GRID, box(0, 0, 2, 2), 1, sampling_ratio=2, aligned=True).item() == 2.5
    # box (0, 0, 4, 4) -> (-0.5, ..., 3.5), 2x2 bins, centres at 0.5 and 2.5:
    # 4*0.5+0.5 = 2.5, 4*0.5+2.5 = 4.5, 4*2.5+0.5 = 10.5, 4*2.5+2.5 = 12.5.
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]])
    torch.testing.assert_close(roi_align(GRID, box(0, 0, 4, 4), 2, sampling_ratio=1, aligned=True)[0, 0], expected)
    # A zero-size box is not stretched to one pixel when aligned: no samples, output 0.
    assert roi_align(GRID, box(1, 1, 1, 1), 1, sampling_ratio=-1, aligned=True).item() == 0.0
    # ... but with aligned=False it is: (1, 1, 2, 2), one sample at 1.5 -> 4*1.5+1.5 = 7.5.
    assert roi_align(GRID, box(1, 1, 1, 1), 1, sampling_ratio=-1).item() == 7.5


def test_roi_pool_by_hand():
    # box (0, 0, 3, 3) spans pixels 0..3 (x2 - x1 + 1 = 4), 2 bins of 2 pixels:
    # maxima of the 2x2 blocks: 5, 7, 13, 15.
    expected = torch.tensor([[5.0, 7.0], [13.0, 15.0]])
    torch.testing.assert_close(roi_pool(GRID, box(0, 0, 3, 3), 2)[0, 0], expected)
    # (0.4, 0.4, 1.6, 1.6) rounds to (0, 0, 2, 2): pixels 0..2, max 4*2 + 2 = 10.
    assert roi_pool(GRID, box(0.4, 0.4, 1.6, 1.6), 1).item() == 10.0
    # scale 1/2: (1, 1, 5, 5) -> (0.5, 0.5, 2.5, 2.5); C's round sends halves away from
    # zero -> (1, 1, 3, 3), max 15 (torch.round, half to even, would give (0, 0, 2, 2) -> 10).
    assert roi_pool(GRID, box(1, 1, 5, 5), 1, spatial_scale=0.5).item() == 15.0
    # 3 bins over 4 pixels: bin = 4/3, edges floor(0)=0..ceil(1.33)=2, 1..ceil(2.67)=3, 2..4.
    # Along x on row block 0..3 (max row 3: 12 + x): max x of each bin is 1, 2, 3.
    torch.testing.assert_close(roi_pool(GRID, box(0, 0, 3, 3), (1, 3))[0, 0], torch.tensor([[13.0, 14.0, 15.0]]))
    # A box entirely off the map: every bin is empty -> 0.
    assert roi_pool(GRID, box(10, 10, 12, 12), 1).item() == 0.0


# --- gradients --------------------------------------------------------------------------


def random_rois(n_images: int, count: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    start = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent - extent / 8
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * extent / 1.5
    batch = torch.randint(0, n_images, (count, 1), generator=generator).double()
    return torch.cat([batch, start, start + size], 1)


@pytest.mark.parametrize("sampling_ratio, aligned", [(-1, False), (2, True), (1, False), (0, True)])
def test_roi_align_gradcheck(sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    rois = random_rois(2, 4, 12.0, generator)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (2, 3), 0.5, sampling_ratio, aligned), (features,))


def tie_free(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Distinct values 0.1 apart: no finite-difference step can change a bin's argmax."""
    n = torch.Size(shape).numel()
    return (torch.randperm(n, generator=generator).double() / 10).view(shape).requires_grad_()


def test_roi_pool_gradcheck():
    generator = torch.Generator().manual_seed(0)
    features = tie_free(2, 2, 5, 6, generator=generator)
    rois = random_rois(2, 4, 12.0, generator)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (2, 3), 0.5), (features,))


def test_gradients_match_torchvision():
    generator = torch.Generator().manual_seed(1)
    features = tie_free(3, 4, 9, 11, generator=generator)
    rois = random_rois(3, 12, 40.0, generator)
    grad_out = torch.randn(12, 4, 3, 2, dtype=torch.float64, generator=generator)
    for ours, theirs in [
        (lambda f: roi_align(f, rois, (3, 2), 0.25, -1), lambda f: torchvision.ops.roi_align(f, rois, (3, 2), 0.25, -1)),
        (lambda f: roi_align(f, rois, (3, 2), 0.25, 2, True), lambda f: torchvision.ops.roi_align(f, rois, (3, 2), 0.25, 2, True)),
        (lambda f: roi_pool(f, rois, (3, 2), 0.25), lambda f: torchvision.ops.roi_pool(f, rois, (3, 2), 0.25)),
    ]:
        (mine,) = torch.autograd.grad(ours(features), features, grad_out)
        (ref,) = torch.autograd.grad(theirs(features), features, grad_out)
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("plan", [(False, False), (True, False), (False, True), (True, True)])
def test_roi_pool_window_plans(monkeypatch, plan):
    """Every choice of window sizes (powers of two or exact, per axis), channels split into
    uneven blocks, lookups in several steps; and the reference (bags) implementation."""
    monkeypatch.setattr(ops, "_window_plan", lambda *args: plan)
    monkeypatch.setattr(ops, "_TABLE_BYTES", 1)  # one channel per block
    monkeypatch.setattr(ops, "_LOOKUPS", 50)
    generator = torch.Generator().manual_seed(6)
    features = (2 * torch.randn(2, 3, 13, 11, generator=generator)).round()
    rois = random_rois(2, 20, 60.0, generator).float()
    for output_size in [(2, 3), 5]:
        check_roi_pool(features, rois, output_size, 0.25)
    # Room for the int64 tables of two channels: blocks of 2 and 1 on the argmax path.
    row_lo, rows, col_lo, cols = ops._roi_bins(rois, 3, 3, 0.25, 13, 11)
    row_sizes, col_sizes = ops._bin_windows(row_lo, rows, plan[0])[0], ops._bin_windows(col_lo, cols, plan[1])[0]
    table_rows = 2 * sum(14 - s for s in row_sizes) * sum(12 - s for s in col_sizes) + 1
    monkeypatch.setattr(ops, "_TABLE_BYTES", 2 * table_rows * 8)
    check_roi_pool(features, rois, 3, 0.25)
    reference = ops._roi_pool_bags(features, rois, 3, 4, 0.25)
    torch.testing.assert_close(reference, torchvision.ops.roi_pool(features, rois, (3, 4), 0.25), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_nan_and_inf_as_torchvision(dtype):
    """torchvision's max starts at -FLT_MAX and takes only larger pixels: NaN and -inf never
    win, and a bin of nothing else gives -FLT_MAX, also for float64, and no gradient."""
    generator = torch.Generator().manual_seed(8)
    features = torch.randn(2, 3, 7, 6, dtype=dtype, generator=generator)
    features[0, 0, 1:3, 2] = float("nan")
    features[0, 1] = float("-inf")
    features[1, 2, :4] = float("nan")
    features[1, 2, 5, 1] = -3.4028234663852886e38  # -FLT_MAX itself
    features[1, 0, 5, 5] = -1e300 if dtype == torch.float64 else float("-inf")
    rois = random_rois(2, 12, 28.0, generator).to(dtype)
    check_roi_pool(features, rois, (3, 2), 0.25)


def test_roi_pool_tie_gradient_goes_to_first_pixel():
    features = torch.zeros(1, 1, 3, 3, requires_grad=True)
    roi_pool(features, box(0, 0, 2, 2), 1).sum().backward()
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 0, 0] = 1
    assert torch.equal(features.grad, expected)


def test_no_gradient_to_boxes():
    rois = box(0.5, 0.5, 2.5, 3.0).requires_grad_()
    out = roi_align(GRID, rois, 2) + roi_pool(GRID, rois, 2)
    assert not out.requires_grad


# --- dtypes, layouts, shapes ----------------------------------------------------------


def test_float64_matches_torchvision():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 3, 8, 9, dtype=torch.float64, generator=generator)
    rois = random_rois(2, 10, 36.0, generator)
    torch.testing.assert_close(roi_align(features, rois, 3, 0.25, -1, True), torchvision.ops.roi_align(features, rois, 3, 0.25, -1, True), atol=1e-12, rtol=0)
    torch.testing.assert_close(roi_pool(features, rois, 3, 0.25), torchvision.ops.roi_pool(features, rois, 3, 0.25))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(dtype):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, 3, 8, 8, generator=generator)
    rois = random_rois(1, 5, 8.0, generator).float()
    for op in (lambda f: roi_align(f, rois, 2, 1.0, 2), lambda f: roi_pool(f, rois, 2, 1.0)):
        low = op(features.to(dtype))
        assert low.dtype == dtype
        torch.testing.assert_close(low.float(), op(features), atol=0.05, rtol=0.02)


def test_non_contiguous_input():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 8, 10, generator=generator)
    rois = random_rois(2, 6, 40.0, generator).float()
    for layout in (features.contiguous(memory_format=torch.channels_last), features.transpose(2, 3).contiguous().transpose(2, 3)):
        torch.testing.assert_close(roi_align(layout, rois, 3, 0.25), roi_align(features, rois, 3, 0.25))
        torch.testing.assert_close(roi_pool(layout, rois, 3, 0.25), roi_pool(features, rois, 3, 0.25))
        check_roi_pool(layout, rois, 3, 0.25)


def test_half_precision_roi_pool_gradient():
    """Half features take the argmax path too: the same winners as torchvision on the same values."""
    generator = torch.Generator().manual_seed(7)
    features = (2 * torch.randn(2, 3, 9, 8, generator=generator)).round().half()
    rois = random_rois(2, 8, 36.0, generator).float()
    mine, ref = features.clone().requires_grad_(), features.float().requires_grad_()
    ours, theirs = roi_pool(mine, rois, 3, 0.25), torchvision.ops.roi_pool(ref, rois, 3, 0.25)
    assert ours.dtype == torch.float16
    torch.testing.assert_close(ours.float(), theirs, atol=0, rtol=0)
    grad = integer_grad(theirs.shape, 0)
    ours.backward(grad.half())
    theirs.backward(grad)
    torch.testing.assert_close(mine.grad.float(), ref.grad, atol=0, rtol=0)


@pytest.mark.parametrize("op", [roi_align, roi_pool])
@pytest.mark.parametrize("boxes", [torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)], []])
def test_no_boxes(op, boxes):
    assert op(torch.randn(2, 3, 5, 5), boxes, (2, 3)).shape == (0, 3, 2, 3)


def test_modules():
    rois = box(0.3, 0.2, 3.1, 2.7)
    align = RoIAlign((2, 3), 0.5, 2, aligned=True)
    pool = RoIPool(2, 0.5)
    assert torch.equal(align(GRID, rois), roi_align(GRID, rois, (2, 3), 0.5, 2, True))
    assert torch.equal(pool(GRID, rois), roi_pool(GRID, rois, 2, 0.5))
    assert "aligned=True" in repr(align) and "output_size=(2, 2)" in repr(pool)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_torchvision():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 8, 20, 24, generator=generator).cuda()
    rois = random_rois(2, 50, 90.0, generator).float().cuda()
    torch.testing.assert_close(roi_align(features, rois, 7, 0.25, 2), torchvision.ops.roi_align(features, rois, 7, 0.25, 2), atol=ATOL, rtol=0)
    torch.testing.assert_close(roi_pool(features, rois, 7, 0.25), torchvision.ops.roi_pool(features, rois, 7, 0.25))


# --- bad input ----------------------------------------------------------------------------

MAP = torch.randn(2, 1, 4, 4)
ROI = box(0, 0, 2, 2)


@pytest.mark.parametrize("op", [roi_align, roi_pool])
@pytest.mark.parametrize(
    "input, boxes, output_size, spatial_scale, error, name",
    [
        (torch.randn(1, 4, 4), ROI, 2, 1.0, ValueError, "input"),
        (torch.randn(1, 1, 1, 4, 4), ROI, 2, 1.0, ValueError, "input"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), ROI, 2, 1.0, TypeError, "input"),
        ([[1.0]], ROI, 2, 1.0, TypeError, "input"),
        (MAP, torch.zeros(3, 4), 2, 1.0, ValueError, "boxes"),
        (MAP, torch.zeros(5), 2, 1.0, ValueError, "boxes"),
        (MAP, torch.zeros(1, 2, 5), 2, 1.0, ValueError, "boxes"),
        (MAP, [torch.zeros(2, 5)], 2, 1.0, ValueError, r"boxes\[0\]"),
        (MAP, [torch.zeros(4)], 2, 1.0, ValueError, r"boxes\[0\]"),
        (MAP, [torch.zeros(1, 4)] * 3, 2, 1.0, ValueError, "boxes"),
        (MAP, ((0, 0, 1, 1),), 2, 1.0, ValueError, r"boxes\[0\]"),
        (MAP, "boxes", 2, 1.0, TypeError, "boxes"),
        (MAP, torch.tensor([[2.0, 0, 0, 1, 1]]), 2, 1.0, ValueError, "batch index"),
        (MAP, torch.tensor([[-1.0, 0, 0, 1, 1]]), 2, 1.0, ValueError, "batch index"),
        (MAP, torch.tensor([[0.5, 0, 0, 1, 1]]), 2, 1.0, ValueError, "batch index"),
        (MAP, torch.tensor([[0.0, 0, float("nan"), 1, 1]]), 2, 1.0, ValueError, "boxes"),
        (MAP, [torch.tensor([[0.0, 0, float("inf"), 1]])], 2, 1.0, ValueError, "boxes"),
        (MAP, ROI, 0, 1.0, ValueError, "output_size"),
        (MAP, ROI, -2, 1.0, ValueError, "output_size"),
        (MAP, ROI, (2, 0), 1.0, ValueError, "output_size"),
        (MAP, ROI, (2,), 1.0, ValueError, "output_size"),
        (MAP, ROI, (2, 2, 2), 1.0, ValueError, "output_size"),
        (MAP, ROI, 2.5, 1.0, ValueError, "output_size"),
        (MAP, ROI, 2, 0.0, ValueError, "spatial_scale"),
        (MAP, ROI, 2, -0.25, ValueError, "spatial_scale"),
        (MAP, ROI, 2, float("nan"), ValueError, "spatial_scale"),
    ],
)
def test_bad_input(op, input, boxes, output_size, spatial_scale, error, name):
    with pytest.raises(error, match=name):
        op(input, boxes, output_size, spatial_scale)


def test_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="output_size"):
        RoIAlign(0, 1.0, 2)
    with pytest.raises(ValueError, match="spatial_scale"):
        RoIPool(7, 0)


@settings(max_examples=150, deadline=None)
@given(case=roi_cases(), output_size=st.integers(1, 4), sampling_ratio=st.sampled_from([-1, 0, 1, 2]),
       aligned=st.booleans())
def test_ops_equal_the_readable_references(case, output_size, sampling_ratio, aligned):
    """The oracle that needs no torchvision: fpnbook.reference's loops, one bin and one sample at a time."""
    features, _, rois, _, scale = case
    features, rois = features.double(), rois.double()
    expected_align = reference.roi_align_loops(features, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(roi_align(features, rois, output_size, scale, sampling_ratio, aligned), expected_align,
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(roi_pool(features, rois, output_size, scale),
                               reference.roi_pool_loops(features, rois, output_size, scale), rtol=0, atol=0)


def test_reference_bilinear_is_exact_on_planes():
    plane = torch.tensor([[[3.0 * i + 2.0 * j for j in range(4)] for i in range(4)]], dtype=torch.float64)
    for y, x in ((1.25, 2.6), (0.0, 0.0), (2.999, 0.5)):
        assert float(reference.bilinear(plane, y, x)[0]) == pytest.approx(3 * y + 2 * x)
    assert float(reference.bilinear(plane, -1.5, 0.0)[0]) == 0  # more than a pixel off the map
