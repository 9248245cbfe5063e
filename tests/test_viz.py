import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fpnbook import viz
from fpnbook.data import CocoDataset, val_paths


@pytest.fixture(scope="module")
def sample():
    dataset = CocoDataset(*val_paths())
    index = next(i for i in range(len(dataset)) if len(dataset[i][1]["boxes"]) >= 2)
    image, target = dataset[index]
    return image, target, dataset.class_names


def test_draw_target(sample):
    image, target, names = sample
    drawn = viz.draw_detections(image, target, class_names=names)
    assert drawn.dtype == torch.uint8 and drawn.shape == image.shape
    plain = viz.to_uint8(image)
    changed = (drawn != plain).any(0)
    x1, y1, x2, y2 = target["boxes"][0].int().tolist()
    assert changed[y1, x1 : x2 - 1].any()  # the box's top edge was drawn
    mask = target["masks"].bool().any(0)
    assert changed[mask].float().mean() > 0.9  # masks are tinted
    assert not changed[~mask].all()


def test_draw_output_keeps_confident_detections(sample):
    image, target, names = sample
    n = len(target["boxes"])
    output = {
        "boxes": target["boxes"].as_subclass(torch.Tensor),
        "labels": target["labels"],
        "scores": torch.linspace(0.9, 0.1, n),
        "masks": target["masks"][:, None].float() * 0.8,
    }
    confident = viz.draw_detections(image, output, names, score_threshold=0.5)
    keep = output["scores"] >= 0.5
    only_kept = {k: v[keep] for k, v in output.items()}
    assert torch.equal(confident, viz.draw_detections(image, only_kept, names, score_threshold=0.5))
    nothing = viz.draw_detections(image, output, names, score_threshold=1.0)
    assert torch.equal(nothing, viz.to_uint8(image))
    # Without class names the labels are numbers; uint8 images work too.
    assert viz.draw_detections(viz.to_uint8(image), target).shape == image.shape


def test_draw_rejects_bad_input(sample):
    image, target, _ = sample
    with pytest.raises(ValueError, match="image"):
        viz.draw_detections(image[0], target)
    with pytest.raises(ValueError, match="labels"):
        viz.draw_detections(image, {"boxes": target["boxes"], "labels": target["labels"][:1]})


def test_show_grid(sample):
    image, target, names = sample
    drawn = viz.draw_detections(image, target, names)
    figure = viz.show_grid([image, drawn, np.zeros((8, 8, 3), np.uint8)], ncols=2, titles=["image", "target", "blank"])
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 4 and [ax.get_title() for ax in figure.axes[:3]] == ["image", "target", "blank"]
    assert len(viz.show_grid([image], ncols=4).axes) == 1
    with pytest.raises(ValueError, match="titles"):
        viz.show_grid([image], ncols=1, titles=["a", "b"])
    with pytest.raises(ValueError, match="ncols"):
        viz.show_grid([image], ncols=0)


def test_plot_detections_draws_readable_labels(sample):
    image, target, names = sample
    figure = Figure(figsize=(4, 4))
    ax = figure.subplots()
    drawn = viz.plot_detections(ax, image, target, names, title="ground truth")
    assert drawn == len(target["boxes"])
    assert [t.get_text() for t in ax.texts] == [names[int(k)] for k in target["labels"]]
    assert viz.figure_problems(figure) == []


def test_plot_detections_keeps_confident_outputs(sample):
    image, target, names = sample
    n = len(target["boxes"])
    output = {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
              "scores": torch.linspace(0.9, 0.1, n)}
    ax = Figure().subplots()
    drawn = viz.plot_detections(ax, image, output, names, score_threshold=0.5)
    assert drawn == int((output["scores"] >= 0.5).sum())
    assert all(t.get_text().split()[-1] >= "0.50" for t in ax.texts)


def test_figure_problems_names_each_defect():
    figure = Figure(figsize=(12, 3))
    left, right = figure.subplots(1, 2)
    left.plot([0, 1, 2], [2, 1, 0], label="curve")
    left.legend(loc="upper left")  # over the curve's first point
    left.tick_params(labelsize=6)
    right.imshow(np.random.default_rng(0).random((4, 4)))
    right.set_title("heat")
    problems = viz.figure_problems(figure)
    assert any("wide" in p for p in problems)
    assert any("under 9 pt" in p for p in problems)
    assert any("panel 0 has no title" in p for p in problems)
    assert any("panel 1 shows a heat map" in p for p in problems)
    assert any("legend covers" in p for p in problems)


def test_figure_problems_passes_a_good_figure():
    figure = Figure(figsize=(8, 3), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot([0, 1, 2], [0, 1, 2], label="curve")
    left.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    left.set_title("a line")
    image = right.imshow(np.random.default_rng(0).random((4, 4)))
    figure.colorbar(image, ax=right)
    right.set_title("heat")
    assert viz.figure_problems(figure) == []
    with pytest.raises(TypeError, match="figure"):
        viz.figure_problems("not a figure")


def test_one_colour_bar_may_serve_a_row_of_heat_maps():
    figure = Figure(figsize=(8, 3), layout="constrained")
    axes = figure.subplots(1, 3)
    rng = np.random.default_rng(0)
    images = [ax.imshow(rng.random((4, 4)), vmin=0, vmax=1) for ax in axes]
    for ax in axes:
        ax.set_title("p")
    assert sum("heat map" in p for p in viz.figure_problems(figure)) == 3
    figure.colorbar(images[-1], ax=list(axes))
    assert viz.figure_problems(figure) == []
    axes[0].images[0].set_clim(0, 2)  # another scale needs its own bar
    assert viz.figure_problems(figure) == ["panel 0 shows a heat map without a colour bar"]


def test_separate_labels_moves_a_label_off_an_earlier_one(sample):
    image, target, names = sample
    boxes = target["boxes"].as_subclass(torch.Tensor)[:1].repeat(2, 1)  # two boxes on one object
    output = {"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}
    figure = Figure(figsize=(4, 4))
    ax = figure.subplots()
    viz.plot_detections(ax, image, output, names, title="two opinions")
    before = ax.texts[0].get_position()
    assert ax.texts[1].get_position() == before
    viz.separate_labels(figure)
    renderer = figure.canvas.get_renderer()
    first, second = (t.get_window_extent(renderer) for t in ax.texts)
    assert not first.overlaps(second) and ax.texts[0].get_position() == before  # the best one stays
    with pytest.raises(TypeError, match="figure"):
        viz.separate_labels(ax)
