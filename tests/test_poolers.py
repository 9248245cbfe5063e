"""fpnbook.poolers against torchvision.ops.poolers."""

from collections import OrderedDict

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops.poolers import LevelMapper

from fpnbook.poolers import MultiScaleRoIAlign, assign_levels

NAMES = ["p2", "p3", "p4", "p5"]


def random_boxes(count: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    """XYXY boxes in [0, extent] pixels, sides from ~1 pixel to the whole image (log-uniform)."""
    start = torch.rand(count, 2, generator=generator) * extent * 0.8
    side = torch.exp(torch.rand(count, 2, generator=generator) * torch.log(torch.tensor(extent)))
    return torch.cat([start, (start + side).clamp(max=extent)], 1)


def pyramid(image_size, channels=3, batch=2, levels=(2, 3, 4, 5), seed=0):
    """Feature maps P_k of stride 2**k over an image of (height, width), rounded up like a padded batch."""
    generator = torch.Generator().manual_seed(seed)
    h, w = image_size
    return OrderedDict(
        (f"p{k}", torch.randn(batch, channels, -(-h // 2**k), -(-w // 2**k), generator=generator)) for k in levels
    )


# --- assign_levels ---------------------------------------------------------------------

SQUARE_SIDES = [224 * 2.0**j for j in range(-4, 4)]  # exactly on level boundaries: eps decides


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    k_range=st.sampled_from([(2, 5), (3, 7), (2, 6), (4, 4)]),
    exact=st.lists(st.sampled_from(SQUARE_SIDES), max_size=3),
)
def test_assign_levels_matches_level_mapper(seed, counts, k_range, exact):
    generator = torch.Generator().manual_seed(seed)
    boxes = [random_boxes(n, 1600.0, generator) for n in counts]
    side = torch.tensor(exact).reshape(-1, 1)
    boxes[0] = torch.cat([boxes[0], torch.cat([torch.zeros(len(side), 2), side.expand(-1, 2)], 1)])
    expected = LevelMapper(*k_range)(boxes)
    assert torch.equal(assign_levels(boxes, *k_range), expected)
    assert torch.equal(assign_levels(torch.cat(boxes), *k_range), expected)


def test_assign_levels_by_hand():
    # sqrt(w*h) = 224 -> k0 = 4; 112 -> 3; 448 -> 5; 1 -> 4 + log2(1/224) = -3.8 -> clamped to 2;
    # zero area -> log2(0) = -inf -> 2; 8000 -> 9.2 -> clamped to 5. Counted from k_min = 2.
    boxes = torch.tensor(
        [[0, 0, 224, 224], [10, 10, 122, 122], [0, 0, 448, 448], [0, 0, 1, 1], [5, 5, 5, 9], [0, 0, 8000, 8000.0]]
    )
    assert assign_levels(boxes, 2, 5).tolist() == [2, 1, 3, 0, 0, 3]
    # A 56 x 896 box has the area of a 224 x 224 one: level from area, not shape.
    assert assign_levels(torch.tensor([[0, 0, 56, 896.0]]), 2, 5).tolist() == [2]
    # A smaller canonical box moves everything one level up: 224 -> 4 + log2(224/112) = 5.
    assert assign_levels(boxes, 2, 5, canonical_scale=112).tolist() == [3, 2, 3, 0, 0, 3]


@pytest.mark.parametrize(
    "boxes, k_min, k_max, error, match",
    [
        (torch.tensor([[10.0, 0, 5, 5]]), 2, 5, ValueError, "x1 <= x2"),
        (torch.tensor([[0.0, 0, 5, 5]]), 5, 2, ValueError, "k_min"),
        (torch.zeros(2, 5), 2, 5, ValueError, "boxes"),
        ([torch.zeros(1, 4), torch.zeros(2, 3)], 2, 5, ValueError, r"boxes\[1\]"),
        ([], 2, 5, ValueError, "boxes"),
        (torch.tensor([[0.0, 0, float("nan"), 5]]), 2, 5, ValueError, "NaN"),
        (torch.zeros(1, 4, dtype=torch.long), 2, 5, TypeError, "floating"),
    ],
)
def test_assign_levels_bad_input(boxes, k_min, k_max, error, match):
    with pytest.raises(error, match=match):
        assign_levels(boxes, k_min, k_max)


# --- MultiScaleRoIAlign -------------------------------------------------------------------


@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 2), ((14, 14), -1), ((3, 5), 0)])
def test_multiscale_matches_torchvision(output_size, sampling_ratio):
    generator = torch.Generator().manual_seed(1)
    image_shapes = [(200, 260), (180, 250)]
    features = pyramid((200, 260))
    boxes = [random_boxes(40, 250.0, generator), random_boxes(25, 200.0, generator)]
    ours = MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)(features, boxes, image_shapes)
    theirs = torchvision.ops.MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)(features, boxes, image_shapes)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_multiscale_gradients_match_torchvision():
    generator = torch.Generator().manual_seed(2)
    image_shapes = [(128, 128), (128, 96)]
    boxes = [random_boxes(20, 128.0, generator), random_boxes(15, 96.0, generator)]
    grad_out = torch.randn(35, 3, 7, 7, generator=generator)
    grads = []
    for module in (MultiScaleRoIAlign(NAMES, 7, 2), torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)):
        features = pyramid((128, 128))
        leaves = [f.requires_grad_() for f in features.values()]
        # A level without boxes gets no gradient here (zeros, once materialised); torchvision
        # runs its kernel on zero boxes and returns zeros.
        grads.append(torch.autograd.grad(module(features, boxes, image_shapes), leaves, grad_out, materialize_grads=True))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_single_level_and_name_filtering():
    generator = torch.Generator().manual_seed(3)
    features = pyramid((96, 128))
    boxes = [random_boxes(10, 96.0, generator), random_boxes(7, 96.0, generator)]
    shapes = [(96, 128), (96, 128)]
    for names in (["p3"], ["p3", "p5"], ["p5", "p2"]):  # x's order wins over featmap_names' order
        ours = MultiScaleRoIAlign(names, 5, 2)(features, boxes, shapes)
        theirs = torchvision.ops.MultiScaleRoIAlign(names, 5, 2)(features, boxes, shapes)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool, aligned", [("pool", False), ("align", True)])
def test_pool_and_aligned_options(pool, aligned):
    """The same level assignment, then torchvision's roi_pool or aligned roi_align per level."""
    generator = torch.Generator().manual_seed(4)
    features = pyramid((160, 160))
    boxes = [random_boxes(30, 160.0, generator), random_boxes(12, 160.0, generator)]
    ours = MultiScaleRoIAlign(NAMES, 7, 2, aligned=aligned, pool=pool)(features, boxes, [(160, 160)] * 2)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    levels = LevelMapper(2, 5)(boxes)
    for level, name in enumerate(NAMES):
        here = levels == level
        scale = 2.0 ** -(level + 2)
        if pool == "pool":
            expected = torchvision.ops.roi_pool(features[name], rois[here], 7, scale)
        else:
            expected = torchvision.ops.roi_align(features[name], rois[here], 7, scale, 2, aligned=True)
        torch.testing.assert_close(ours[here], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("names", [["p3"], NAMES])
def test_multiscale_without_boxes(names):
    features = pyramid((64, 64))
    pooler = MultiScaleRoIAlign(names, (7, 6), 2)
    assert pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)], [(64, 64)] * 2).shape == (0, 3, 7, 6)
    assert pooler(features, [], [(64, 64)]).shape == (0, 3, 7, 6)


def test_multiscale_bad_input():
    features = pyramid((64, 64))
    boxes = [torch.tensor([[0.0, 0, 10, 10]])]
    with pytest.raises(ValueError, match="p6"):
        MultiScaleRoIAlign(["p2", "p6"], 7, 2)(features, boxes, [(64, 64)])
    with pytest.raises(ValueError, match="image_shapes"):
        MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, [])
    with pytest.raises(TypeError, match="boxes"):
        MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes[0], [(64, 64)])
    with pytest.raises(ValueError, match="x1 <= x2"):
        MultiScaleRoIAlign(NAMES, 7, 2)(features, [torch.tensor([[10.0, 0, 0, 10]])], [(64, 64)])
    with pytest.raises(ValueError, match="pool"):
        MultiScaleRoIAlign(NAMES, 7, 2, pool="max")
    with pytest.raises(ValueError, match="featmap_names"):
        MultiScaleRoIAlign([], 7, 2)
    with pytest.raises(ValueError, match="output_size"):
        MultiScaleRoIAlign(NAMES, 0, 2)
