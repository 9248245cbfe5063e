import math

import pytest
import torch
import torchvision
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from fpnbook import boxes as B


def random_boxes(n, seed=0, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_formats_round_trip():
    boxes = random_boxes(20)
    torch.testing.assert_close(B.xywh_to_xyxy(B.xyxy_to_xywh(boxes)), boxes)
    torch.testing.assert_close(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(B.xyxy_to_xywh(boxes), torchvision.ops.box_convert(boxes, "xyxy", "xywh"))
    torch.testing.assert_close(B.xyxy_to_cxcywh(boxes), torchvision.ops.box_convert(boxes, "xyxy", "cxcywh"))


def test_area_and_iou_equal_torchvision():
    a, b = random_boxes(30, seed=1), random_boxes(17, seed=2)
    torch.testing.assert_close(B.box_area(a), torchvision.ops.box_area(a))
    torch.testing.assert_close(B.box_iou(a, b), torchvision.ops.box_iou(a, b))
    assert B.box_iou(a, b[:0]).shape == (30, 0)


def test_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    torch.testing.assert_close(B.box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -5, 50, 50], [10, 10, 10.5, 30]])
    torch.testing.assert_close(B.clip_boxes_to_image(boxes, (40, 30)), torchvision.ops.clip_boxes_to_image(boxes, (40, 30)))
    assert B.remove_small_boxes(boxes, 1.0).tolist() == torchvision.ops.remove_small_boxes(boxes, 1.0).tolist()


coords = st.floats(min_value=0, max_value=500, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=1, max_value=400, allow_nan=False, allow_infinity=False)
box = st.tuples(coords, coords, sizes, sizes)
weights = st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 0.5, 4.0)])


@settings(max_examples=100, deadline=None)
@given(gt=st.lists(box, min_size=1, max_size=8), ref=st.lists(box, min_size=8, max_size=8), w=weights)
def test_decode_inverts_encode(gt, ref, w):
    to_xyxy = lambda bs: B.xywh_to_xyxy(torch.tensor(bs, dtype=torch.float64))
    gt, ref = to_xyxy(gt), to_xyxy(ref)[: len(gt)]
    coder = B.BoxCoder(w)
    # Beyond the dw/dh clamp (1000/16 times the reference) decoding saturates by design.
    size_ratio = (gt[:, 2:] - gt[:, :2]) / (ref[:, 2:] - ref[:, :2])
    assume((size_ratio < 60).all())
    torch.testing.assert_close(coder.decode(coder.encode(gt, ref), ref).double(), gt, rtol=1e-4, atol=1e-3)


@settings(max_examples=50, deadline=None)
@given(gt=st.lists(box, min_size=1, max_size=8), w=weights)
def test_coder_equals_torchvision(gt, w):
    gt = B.xywh_to_xyxy(torch.tensor(gt))
    ref = gt.flip(0) + 1.0
    ours, theirs = B.BoxCoder(w), TorchvisionBoxCoder(w)
    torch.testing.assert_close(ours.encode(gt, ref), theirs.encode_single(gt, ref), rtol=1e-5, atol=1e-3)  # float32 order of operations
    deltas = torch.randn(len(gt), 8, generator=torch.Generator().manual_seed(len(gt))) * 3
    # exp(dw) reaches 1000x: compare relative to the size of the decoded coordinates.
    torch.testing.assert_close(ours.decode(deltas, ref), theirs.decode_single(deltas, ref), rtol=1e-5, atol=1e-3)


def test_decode_clamps_dw_dh():
    coder = B.BoxCoder()
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)
    assert math.isclose(huge[0, 2] - huge[0, 0], 1000.0, rel_tol=1e-4)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.zeros(3, 5), ValueError, r"\[N, 4\]"),
        (torch.zeros(4), ValueError, r"\[N, 4\]"),
        (torch.zeros(2, 4, dtype=torch.int64), TypeError, "floating"),
        (torch.tensor([[0.0, 0, float("nan"), 1]]), ValueError, "NaN"),
        (torch.tensor([[0.0, 0, float("inf"), 1]]), ValueError, "infinite"),
        (torch.tensor([[5.0, 0, 1, 1]]), ValueError, "x1 <= x2"),
        ([[0, 0, 1, 1]], TypeError, "Tensor"),
    ],
)
def test_check_boxes_rejects(bad, error, match):
    with pytest.raises(error, match=match):
        B.check_boxes(bad, "gt_boxes")


def test_check_boxes_degenerate():
    flat = torch.tensor([[0.0, 0, 0, 5]])
    assert B.check_boxes(flat) is flat
    with pytest.raises(ValueError, match="zero width"):
        B.check_boxes(flat, allow_degenerate=False)


def test_coder_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        B.BoxCoder((1.0, 0.0, 1.0, 1.0))
