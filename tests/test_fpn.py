import math
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops import feature_pyramid_network as tv_fpn

from fpnbook.backbone import ResNet, resnet_tiny
from fpnbook.fpn import (
    FPN,
    BackboneWithFPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    pyramid_name,
)
from fpnbook.interop import fpn_key, load_torchvision_fpn, to_torchvision

CHANNELS = [8, 12, 16, 20]


def features(sizes, channels=CHANNELS, names=("c2", "c3", "c4", "c5"), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(batch, c, h, w, generator=g)) for name, c, (h, w) in zip(names, channels, sizes)
    )


def twin_fpns(extra, out_channels=8):
    """Our FPN and torchvision's, with the same weights."""
    ours_extra, their_extra = {
        "none": (None, None),
        "maxpool": (LastLevelMaxPool(), tv_fpn.LastLevelMaxPool()),
        "p6p7_from_p5": (LastLevelP6P7(out_channels, out_channels), tv_fpn.LastLevelP6P7(out_channels, out_channels)),
        "p6p7_from_c5": (LastLevelP6P7(CHANNELS[-1], out_channels, use_p5=False), tv_fpn.LastLevelP6P7(CHANNELS[-1], out_channels)),
    }[extra]
    theirs = FeaturePyramidNetwork(CHANNELS, out_channels, extra_blocks=their_extra)
    ours = FPN(CHANNELS, out_channels, extra_blocks=ours_extra)
    load_torchvision_fpn(ours, theirs)
    return ours, theirs


def assert_same_as_torchvision(ours, theirs, x):
    out, expected = ours(x), theirs(x)
    assert len(out) == len(expected)
    for value, reference in zip(out.values(), expected.values()):
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-6)
    return out


@pytest.mark.parametrize("extra", ["none", "maxpool", "p6p7_from_p5", "p6p7_from_c5"])
@pytest.mark.parametrize(
    "sizes", [[(32, 32), (16, 16), (8, 8), (4, 4)], [(25, 37), (13, 19), (7, 10), (4, 5)], [(9, 4), (4, 2), (2, 1), (1, 1)]]
)
def test_equals_torchvision_with_the_same_weights(extra, sizes):
    ours, theirs = twin_fpns(extra)
    out = assert_same_as_torchvision(ours, theirs, features(sizes))
    expected_names = {"none": [], "maxpool": ["p6"], "p6p7_from_p5": ["p6", "p7"], "p6p7_from_c5": ["p6", "p7"]}[extra]
    assert list(out) == ["p2", "p3", "p4", "p5"] + expected_names
    for name, (h, w) in zip(out, sizes):
        assert out[name].shape == (2, 8, h, w)
    h, w = sizes[-1]
    for name in expected_names:  # each extra level halves, rounding up
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert out[name].shape[-2:] == (h, w)


@st.composite
def pyramid_sizes(draw):
    """Sizes of four maps, each the previous halved and rounded up or down."""
    sizes = [(draw(st.integers(2, 40)), draw(st.integers(2, 40)))]
    for _ in range(3):
        h, w = sizes[-1]
        sizes.append(tuple(max(1, draw(st.sampled_from([s // 2, math.ceil(s / 2)]))) for s in (h, w)))
    return sizes


@settings(max_examples=20, deadline=None)
@given(sizes=pyramid_sizes(), extra=st.sampled_from(["none", "maxpool", "p6p7_from_p5", "p6p7_from_c5"]))
def test_equals_torchvision_on_random_sizes(sizes, extra):
    torch.manual_seed(0)
    ours, theirs = twin_fpns(extra, out_channels=4)
    assert_same_as_torchvision(ours, theirs, features(sizes, batch=1))


def test_fresh_init_matches_torchvision_statistics():
    torch.manual_seed(0)
    ours = FPN([64], 64)
    assert ours.smooth[0].bias.abs().sum() == 0
    bound = math.sqrt(6 / ((1 + 1) * 64 * 9))  # kaiming_uniform_(a=1), fan_in = 64 * 3 * 3
    assert ours.smooth[0].weight.abs().max() <= bound


def test_other_names_are_kept_like_torchvision():
    x = features([(16, 16), (8, 8)], channels=[4, 4], names=("feat0", "feat1"))
    assert list(FPN([4, 4], 4)(x)) == ["feat0", "feat1"]
    assert list(FPN([4, 4], 4, LastLevelMaxPool())(x)) == ["feat0", "feat1", "pool"]
    assert list(FPN([4, 4], 4, LastLevelP6P7(4, 4))(x)) == ["feat0", "feat1", "p6", "p7"]
    assert pyramid_name("c4") == "p4" and pyramid_name("p4") == "p4" and pyramid_name("layer3") == "layer3"


def test_levels_may_skip_when_named():
    # c3 -> c5 skips a level, so c5 must be a quarter of c3.
    x = features([(32, 32), (8, 8)], channels=[4, 6], names=("c3", "c5"))
    out = FPN([4, 6], 4, LastLevelMaxPool())(x)
    assert list(out) == ["p3", "p5", "p6"]


def test_top_down_pathway_carries_c5_to_p2():
    fpn = FPN(CHANNELS, 8)
    x = features([(16, 16), (8, 8), (4, 4), (2, 2)])
    x["c5"].requires_grad_(True)
    fpn(x)["p2"].sum().backward()
    assert x["c5"].grad.abs().sum() > 0


def test_table1_ablations_remove_one_pathway_each():
    torch.manual_seed(0)
    full = FPN(CHANNELS, 8)
    x = features([(16, 16), (8, 8), (4, 4), (2, 2)])
    bottom_up = FPN(CHANNELS, 8, top_down=False)
    bottom_up.load_state_dict(full.state_dict())
    torch.manual_seed(0)
    no_lateral = FPN(CHANNELS, 8, lateral=False)
    # It keeps only C5's lateral conv, and its other weights start as the full FPN's of the same seed.
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in no_lateral.state_dict().items())
    dropped = no_lateral.load_state_dict(full.state_dict(), strict=False).unexpected_keys
    assert sorted(dropped) == [f"lateral.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    with torch.no_grad():
        # (d): each level is its own 1x1 then 3x3 conv; C5 reaches no finer level.
        expected = [smooth(lat(c)) for lat, smooth, c in zip(full.lateral, full.smooth, x.values())]
        for got, want in zip(bottom_up(x).values(), expected):
            torch.testing.assert_close(got, want)
        # (e): only C5 enters; each finer level is the level above, upsampled, then smoothed.
        merged = [full.lateral[-1](x["c5"])]
        for c in reversed(list(x.values())[:-1]):
            merged.insert(0, torch.nn.functional.interpolate(merged[0], size=c.shape[-2:], mode="nearest"))
        for got, want, smooth in zip(no_lateral(x).values(), merged, full.smooth):
            torch.testing.assert_close(got, smooth(want))
    sum(y.sum() for y in no_lateral(x).values()).backward()
    assert all(p.grad is not None for p in no_lateral.parameters()), "no parameter may go without a gradient"
    with pytest.raises(ValueError, match="top-down pathway"):
        FPN(CHANNELS, 8, top_down=False, lateral=False)


def test_backbone_with_fpn_names_shapes_and_strides():
    backbone = resnet_tiny()
    model = BackboneWithFPN(backbone, FPN(backbone.out_channels, 32, LastLevelMaxPool()))
    assert model.names == ["p2", "p3", "p4", "p5", "p6"]
    assert model.strides == [4, 8, 16, 32, 64]
    assert model.out_channels == 32
    out = model(torch.randn(2, 3, 64, 96))
    assert list(out) == model.names
    for x, stride in zip(out.values(), model.strides):
        assert x.shape == (2, 32, math.ceil(64 / stride), math.ceil(96 / stride))


def test_backbone_with_fpn_for_retinanet():
    backbone = ResNet(widths=(8, 16, 24, 32), stem_width=8)
    fpn = FPN(backbone.out_channels[1:], 16, LastLevelP6P7(16, 16))
    model = BackboneWithFPN(backbone, fpn, in_names=("c3", "c4", "c5"))
    assert model.names == ["p3", "p4", "p5", "p6", "p7"]
    assert model.strides == [8, 16, 32, 64, 128]
    out = model(torch.randn(1, 3, 128, 128))
    assert [tuple(x.shape[-2:]) for x in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_bad_input_raises():
    fpn = FPN(CHANNELS, 8)
    good = [(16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="channels"):
        fpn(features(good, channels=[8, 12, 16, 21]))
    with pytest.raises(ValueError, match="maps"):
        fpn(features(good[:3]))
    with pytest.raises(ValueError, match="half the size"):
        fpn(features([(16, 16), (8, 8), (8, 8), (2, 2)]))
    with pytest.raises(ValueError, match="half the size"):
        fpn(features([(16, 16), (8, 8), (4, 4), (2, 3)]))
    with pytest.raises(ValueError, match="fine to coarse"):
        fpn(features([(16, 16), (4, 4), (2, 2), (1, 1)], names=("c2", "c4", "c3", "c5")))
    with pytest.raises(ValueError, match="batch"):
        x = features(good)
        x["c5"] = x["c5"][:1]
        fpn(x)
    with pytest.raises(TypeError, match="ordered dict"):
        fpn(list(features(good).values()))
    with pytest.raises(ValueError, match=r"Tensor\[B, C, H, W\]"):
        x = features(good)
        x["c3"] = x["c3"][0]
        fpn(x)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="in_channels_list"):
        FPN([], 8)
    with pytest.raises(ValueError, match="in_channels"):
        LastLevelP6P7(16, 8, use_p5=True)
    with pytest.raises(ValueError, match="channels"):
        FPN([8, 16], 8, LastLevelP6P7(32, 8, use_p5=False))
    backbone = resnet_tiny()
    with pytest.raises(ValueError, match="in_channels_list"):
        BackboneWithFPN(backbone, FPN([1, 2, 3, 4], 8))
    with pytest.raises(ValueError, match="in_names"):
        BackboneWithFPN(backbone, FPN(backbone.out_channels[1:], 8), in_names=("c3", "c4", "c6"))
    with pytest.raises(TypeError, match="names"):
        BackboneWithFPN(torch.nn.Identity(), FPN([3], 8))


def test_weight_copy_checks_structure():
    assert fpn_key("lateral.3.weight") == "inner_blocks.3.0.weight"
    assert fpn_key("smooth.0.bias") == "layer_blocks.0.0.bias"
    assert fpn_key("extra_blocks.p6.weight") == "extra_blocks.p6.weight"
    with pytest.raises(ValueError, match="structure"):
        load_torchvision_fpn(FPN(CHANNELS, 8, LastLevelP6P7(8, 8)), FeaturePyramidNetwork(CHANNELS, 8))
    with pytest.raises(ValueError, match="sizes"):
        load_torchvision_fpn(FPN(CHANNELS, 8), FeaturePyramidNetwork(CHANNELS, 16))


@pytest.mark.parametrize("extra", [None, "maxpool", "p6p7_from_c5"])
def test_to_torchvision_is_the_same_fpn(extra):
    ours = FPN(CHANNELS, 8, {None: None, "maxpool": LastLevelMaxPool(),
                              "p6p7_from_c5": LastLevelP6P7(CHANNELS[-1], 8, use_p5=False)}[extra])
    theirs = to_torchvision(ours)
    x = features([(16, 16), (8, 8), (4, 4), (2, 2)])
    for a, b in zip(ours(x).values(), theirs(x).values()):
        torch.testing.assert_close(a, b)
