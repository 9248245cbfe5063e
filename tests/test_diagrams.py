"""The architecture diagrams show the numbers of the modules they are given, and read at a glance."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.figure import Figure
from torch import nn

from fpnbook import diagrams, models, viz
from fpnbook.anchors import ANCHOR_BASE_SIZES, ASPECT_RATIOS, AnchorGenerator, octave_sizes
from fpnbook.backbone import resnet_tiny
from fpnbook.fpn import FPN, LastLevelMaxPool
from fpnbook.rcnn import MaskRCNN, RPNModel, to_mask_x
from fpnbook.retinanet import RetinaNet


def unusual_mask_rcnn(**kwargs) -> MaskRCNN:
    """A Mask R-CNN whose every number differs from the defaults, so a hard-coded one would show."""
    return MaskRCNN(models.fpn_backbone_tiny(48), 5, representation_size=96, mask_layers=(40, 40, 24),
                    mask_dim_reduced=20, **kwargs)


@pytest.fixture(scope="module")
def built():
    retina_backbone = models.build_backbone(models.ModelConfig(kind="retinanet", fpn_channels=40))
    six_anchors = AnchorGenerator(octave_sizes(ANCHOR_BASE_SIZES, 2), (ASPECT_RATIOS,) * 5)  # A = 3 x 2
    return {
        "mask_rcnn": unusual_mask_rcnn(),
        "faster_rcnn": models.build(models.ModelConfig(kind="faster_rcnn", num_classes=3, fpn_channels=32)),
        "retinanet": RetinaNet(retina_backbone, 6, six_anchors, head_norm="gn"),
        "mask_x": models.build(models.ModelConfig(kind="mask_x_rcnn", mask_classes=(1, 3, 6, 8))),
        "mask_x_linear": to_mask_x(unusual_mask_rcnn(), [2, 4], transfer="cls", kind="linear", stop_gradient=False),
    }


def texts(figure: Figure) -> list[str]:
    ax = figure.axes[0]
    return [t.get_text() for t in [ax.title, *ax.texts] if t.get_visible() and t.get_text().strip()]


def shows(figure: Figure, *strings: str) -> None:
    joined = "\n".join(texts(figure))
    missing = [s for s in strings if s not in joined]
    assert not missing, f"{missing} not among the figure's texts:\n{joined}"


def check_reads(figure: Figure) -> None:
    """The figure standard, plus: no two labels overlap and every label lies inside the figure."""
    assert isinstance(figure, Figure)
    assert viz.figure_problems(figure) == []
    assert figure.get_figwidth() <= 9.5 and figure.axes[0].get_title()
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in [ax.title, *ax.texts] if t.get_text().strip()]
    assert all(t.get_fontsize() >= 9 for t in [ax.title, *ax.texts])
    page = figure.bbox
    for text, box in boxes:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, text
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"


def test_pipeline_shows_the_models_numbers(built):
    model = built["mask_rcnn"]
    numbers = diagrams.describe(model)
    assert numbers["channels"] == 48 and [m["channels"] for m in numbers["body"]] == model.backbone.backbone.out_channels
    assert numbers["num_classes"] == 5 and numbers["cls_logits"] == 6 and numbers["box_deltas"] == 24
    assert numbers["box_head"] == [(48 * 7 * 7, 96), (96, 96)]
    assert numbers["anchors"]["per_location"] == 3 and numbers["rpn"]["deltas"] == 12
    mask = numbers["mask"]
    assert [c["out_channels"] for c in mask["convs"]] == [40, 40, 24] and mask["deconv"]["out_channels"] == 20
    assert (mask["pool"], mask["resolution"], mask["logits"]) == (14, 28, 6)
    figure = diagrams.pipeline(model)
    check_reads(figure)
    shows(figure, "C5: 128 ch, stride 32", "48 ch each", "P2, P3, P4, P5, P6", "objectness A = 3", "4A = 12",
          "fc 2352 → 96", "K+1 = 6", "4(K+1) = 24", "3 × conv 3×3, 24 ch", "28×28×20", "6 masks")


def test_pipeline_of_a_faster_rcnn_has_no_mask_row(built):
    numbers = diagrams.describe(built["faster_rcnn"])
    assert numbers["mask"] is None and numbers["channels"] == 32 and numbers["cls_logits"] == 4
    figure = diagrams.pipeline(built["faster_rcnn"])
    check_reads(figure)
    shows(figure, "32 ch each", "K+1 = 4")
    assert not any("mask" in t for t in texts(figure))


def test_fpn_block_reads_the_convs(built):
    numbers = diagrams.describe(built["mask_rcnn"].backbone.fpn)  # a bare FPN: inputs taken to be C2..C5
    assert [m["name"] for m in numbers["outputs"]] == ["p2", "p3", "p4", "p5", "p6"]
    assert [c["in_channels"] for c in numbers["laterals"]] == [16, 32, 64, 128]
    assert numbers["extra"]["kind"] == "maxpool"
    figure = diagrams.fpn_block(built["mask_rcnn"])
    check_reads(figure)
    shows(figure, "1×1 conv, 128→48", "3×3 conv, 48→48", "P6: 48 ch, stride 64", "2× up", "max-pool")
    retina = diagrams.fpn_block(built["retinanet"])  # RetinaNet's: C2 unused, P6 and P7 from C5
    check_reads(retina)
    shows(retina, "C2: 16 ch, stride 4, unused", "3×3 conv, stride 2, 128→40", "P7: 40 ch, stride 128")


def test_fpn_block_drops_what_an_ablation_removes():
    bottom_up = RPNModel(resnet_tiny(), features="bottom_up", fpn_channels=24)
    figure = diagrams.fpn_block(bottom_up)
    check_reads(figure)
    shows(figure, "without the top-down pathway", "1×1 conv, 64→24")
    assert not any("2× up" in t for t in texts(figure))
    bare = diagrams.fpn_block(FPN([8, 16, 32], 12, LastLevelMaxPool()))  # no body: inputs are C3..C5
    shows(bare, "C3: 8 ch, stride 8", "P6: 12 ch, stride 64")


def test_retinanet_reads_A_K_and_the_subnets(built):
    numbers = diagrams.describe(built["retinanet"])
    assert (numbers["anchors_per_location"], numbers["num_classes"]) == (6, 6)
    assert (numbers["cls_out"], numbers["box_out"], numbers["norm"]) == (36, 24, "GroupNorm")
    assert len(numbers["cls_convs"]) == len(numbers["box_convs"]) == 4
    assert all(c["out_channels"] == 40 for c in numbers["cls_convs"])
    figure = diagrams.retinanet(built["retinanet"])
    check_reads(figure)
    shows(figure, "W×H×40", "×4", "K·A = 6·6", "= 36 channels", "4A = 4·6", "= 24 channels", "A = 6 anchors",
          "3 aspect ratios × 2 scales", "P7, stride 128", "+ GN + ReLU")


def test_mask_rcnn_heads_shows_heads_and_five_losses(built):
    figure = diagrams.mask_rcnn_heads(built["mask_rcnn"])
    check_reads(figure)
    shows(figure, "7×7×48", "14×14×48", "fc6\n96", "fc7\n96", "K+1 = 6", "×3", "14×14×24", "28×28×20",
          "28×28×6", "L_obj", "L_rpn_box", "L_cls", "L_box", "L_mask", "over 512 RoIs")


def test_mask_x_reads_the_transfer(built):
    t = diagrams.describe(built["mask_x"])["mask"]["transfer"]
    assert t == dict(inputs="cls+box", kind="mlp", sizes=[5 * 256, 64, 64], stop_gradient=True, num_logits=9)
    figure = diagrams.mask_x(built["mask_x"])
    check_reads(figure)
    shows(figure, "cls+box weights", "[K+1, 5R] = [9, 1280]", "1280 → 64 → 64", "stop-gradient",
          "class-agnostic MLP", "(A): 1, 3, 6, 8", "(B): 2, 4, 5, 7")
    linear = built["mask_x_linear"]
    t = diagrams.describe(linear)["mask"]["transfer"]
    assert t == dict(inputs="cls", kind="linear", sizes=[96, 20], stop_gradient=False, num_logits=6)
    figure = diagrams.mask_x(linear)
    check_reads(figure)
    shows(figure, "[K+1, R] = [6, 96]", "T: linear\n96 → 20", "28×28×6")
    assert not any("stop-gradient" in s or "MLP:" in s for s in texts(figure))


@pytest.mark.parametrize("function, model, error", [
    ("mask_x", "retinanet", TypeError), ("mask_x", "mask_rcnn", ValueError), ("retinanet", "mask_rcnn", TypeError),
    ("pipeline", "retinanet", TypeError), ("mask_rcnn_heads", "faster_rcnn", ValueError),
    ("mask_rcnn_heads", "retinanet", TypeError),
])
def test_a_wrong_model_is_refused_by_name(built, function, model, error):
    with pytest.raises(error, match="model"):
        getattr(diagrams, function)(built[model])


def test_fpn_block_refuses_a_module_without_an_fpn():
    with pytest.raises(TypeError, match="model_or_fpn"):
        diagrams.fpn_block(nn.Linear(2, 2))
