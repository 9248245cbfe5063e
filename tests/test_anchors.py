import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fpnbook.anchors import AnchorGenerator, cell_anchors, grid_anchors, octave_sizes

RATIOS = (0.5, 1.0, 2.0)


def feature_maps(image_size, strides, dtype=torch.float32):
    return [torch.zeros(1, 2, math.ceil(image_size[0] / s), math.ceil(image_size[1] / s), dtype=dtype) for s in strides]


def torchvision_anchors(sizes, aspect_ratios, image_size, maps):
    images = ImageList(torch.zeros(2, 3, *image_size, dtype=maps[0].dtype), [tuple(image_size)] * 2)
    per_image = TorchvisionAnchorGenerator(sizes, aspect_ratios)(images, maps)
    assert torch.equal(per_image[0], per_image[1])  # one set of anchors for the whole batch
    return per_image[0]


FPN_CONFIG = (((32,), (64,), (128,), (256,), (512,)), (RATIOS,) * 5, [4, 8, 16, 32, 64])
RETINANET_CONFIG = (octave_sizes(), (RATIOS,) * 5, [8, 16, 32, 64, 128])
TORCHVISION_RETINANET_SIZES = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128, 256, 512])


@pytest.mark.parametrize("config", [FPN_CONFIG, RETINANET_CONFIG], ids=["fpn", "retinanet"])
@pytest.mark.parametrize("image_size", [(256, 256), (192, 320), (320, 96)])
def test_equals_torchvision(config, image_size):
    sizes, ratios, strides = config
    maps = feature_maps(image_size, strides)
    ours = AnchorGenerator(sizes, ratios)(image_size, maps)
    assert torch.equal(ours, torchvision_anchors(sizes, ratios, image_size, maps))
    assert ours.shape == (sum(m.shape[-2] * m.shape[-1] * len(s) * len(r) for m, s, r in zip(maps, sizes, ratios)), 4)


def test_torchvision_retinanet_sizes_and_float64():
    image_size = (128, 192)
    maps = feature_maps(image_size, [8, 16, 32, 64, 128], dtype=torch.float64)
    ours = AnchorGenerator(TORCHVISION_RETINANET_SIZES, (RATIOS,) * 5)(image_size, maps)
    assert ours.dtype == torch.float64
    assert torch.equal(ours, torchvision_anchors(TORCHVISION_RETINANET_SIZES, (RATIOS,) * 5, image_size, maps))


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(16, 200),
    width=st.integers(16, 200),
    num_levels=st.integers(1, 4),
    sizes=st.lists(st.floats(4, 300), min_size=1, max_size=3),
    ratios=st.lists(st.floats(0.2, 5), min_size=1, max_size=3),
)
def test_equals_torchvision_on_random_configs(height, width, num_levels, sizes, ratios):
    # Sizes not divisible by the strides: the stride is image_size // feature_size, as in torchvision.
    strides = [4 * 2**i for i in range(num_levels)]
    maps = feature_maps((height, width), strides)
    level_sizes = tuple(tuple(s * 2**i for s in sizes) for i in range(num_levels))
    level_ratios = (tuple(ratios),) * num_levels
    ours = AnchorGenerator(level_sizes, level_ratios)((height, width), maps)
    assert torch.equal(ours, torchvision_anchors(level_sizes, level_ratios, (height, width), maps))


def test_anchor_layout_and_count():
    generator = AnchorGenerator()
    assert generator.num_anchors_per_location() == [3] * 5
    image_size = (64, 96)
    maps = {f"p{k}": m for k, m in zip(range(2, 7), feature_maps(image_size, [4, 8, 16, 32, 64]))}
    levels = generator.anchors_per_level(image_size, maps)
    assert [len(a) for a in levels] == [m.shape[-2] * m.shape[-1] * 3 for m in maps.values()]
    assert torch.equal(torch.cat(levels), generator(image_size, list(maps.values())))
    # Location-major: the 3 anchors of pixel (y, x) of P3 are centred on (8x, 8y).
    p3 = levels[1].view(8, 12, 3, 4)
    centres = (p3[..., :2] + p3[..., 2:]) / 2
    y, x = torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij")
    torch.testing.assert_close(centres, torch.stack([8 * x, 8 * y], dim=-1)[:, :, None].expand(-1, -1, 3, -1))


def test_cell_anchors_have_the_asked_area_and_ratio():
    cells = cell_anchors((64, 128), (0.5, 2.0))  # ratio-major, then size
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 0.5, 2.0, 2.0]), rtol=0.03, atol=0)
    torch.testing.assert_close((widths * heights).sqrt(), torch.tensor([64.0, 128, 64, 128]), rtol=0.02, atol=0)
    assert torch.equal(cells, cells.round()) and torch.equal(cells[:, :2], -cells[:, 2:])
    assert grid_anchors(cells, (2, 3), (4, 4)).shape == (2 * 3 * 4, 4)


def test_octave_sizes():
    sizes = octave_sizes()
    assert len(sizes) == 5 and all(len(s) == 3 for s in sizes)
    assert sizes[0] == pytest.approx((32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)))
    assert sizes[4][0] == 512
    assert octave_sizes((10,), 2)[0] == pytest.approx((10, 10 * math.sqrt(2)))
    with pytest.raises(ValueError, match="scales_per_octave"):
        octave_sizes(scales_per_octave=0)


def test_cache_returns_fresh_results():
    generator = AnchorGenerator(((16,),), ((1.0,),))
    maps = [torch.zeros(1, 1, 4, 4)]
    first = generator((16, 16), maps)
    first.zero_()  # a caller's in-place edit must not leak into the next call
    second = generator((16, 16), maps)
    assert second.abs().sum() > 0
    assert torch.equal(second, generator((16, 16), maps))
    assert generator((16, 16), [torch.zeros(1, 1, 4, 4, dtype=torch.float64)]).dtype == torch.float64
    assert generator((32, 32), maps)[-1, 0] == 24 - 8  # a new image size, new strides


def test_bad_input_raises():
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(((32,),), ((0.0, 1.0),))
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(((32,),), ((-1.0,),))
    with pytest.raises(ValueError, match="sizes"):
        AnchorGenerator(((0,),), ((1.0,),))
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator(((32,), (64,)), ((1.0,),))
    with pytest.raises(TypeError, match="per level"):
        AnchorGenerator((32, 64), (1.0, 2.0))
    generator = AnchorGenerator()
    with pytest.raises(ValueError, match="levels"):
        generator((64, 64), feature_maps((64, 64), [4, 8, 16, 32]))
    with pytest.raises(ValueError, match="image_size"):
        generator((64,), feature_maps((64, 64), [4, 8, 16, 32, 64]))
    with pytest.raises(ValueError, match="does not fit"):
        AnchorGenerator(((32,),), (RATIOS,))((16, 16), [torch.zeros(1, 1, 32, 32)])
