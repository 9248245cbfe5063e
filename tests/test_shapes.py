"""The shapes generator (fpnbook.shapes): deterministic, COCO-valid, hard in the ways the book is about."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fpnbook import data, shapes


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- generator


def test_classes_and_chapter_4_splits():
    assert len(shapes.SHAPE_CLASSES) == 8 == len(set(shapes.SHAPE_CLASSES))
    assert len(shapes.SPLIT_A) == len(shapes.SPLIT_B) == 4
    assert sorted(shapes.SPLIT_A + shapes.SPLIT_B) == list(range(1, 9))


def test_same_seed_gives_identical_bytes(tmp_path):
    shapes.generate_dataset(tmp_path / "a", train=3, val=2, image_size=64, seed=7, progress=False)
    shapes.generate_dataset(tmp_path / "b", train=3, val=2, image_size=64, seed=7, progress=False)
    shapes.generate_dataset(tmp_path / "c", train=3, val=2, image_size=64, seed=8, progress=False)
    a, b, c = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    train_files = [f"train/00000{i}.png" for i in range(3)]
    assert sorted(a) == ["train.json", *train_files, "val.json", "val/000000.png", "val/000001.png"]
    assert a == b
    assert a["train/000000.png"] != c["train/000000.png"]
    assert a["train/000000.png"] != a["val/000000.png"]  # train and val never share images


def test_image_depends_only_on_seed_split_and_index(tmp_path):
    shapes.generate_split(tmp_path / "few", "train", 2, 64, seed=1, progress=False)
    shapes.generate_split(tmp_path / "more", "train", 4, 64, seed=1, progress=False)
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "few/train" / name).read_bytes() == (tmp_path / "more/train" / name).read_bytes()


def test_json_is_coco_and_loads_with_pycocotools(small_split):
    image_dir, ann_file = small_split
    coco = COCO(str(ann_file))
    assert [coco.cats[i]["name"] for i in range(1, 9)] == list(shapes.SHAPE_CLASSES)
    assert {c["supercategory"] for c in coco.cats.values()} == {"shape"}
    assert len(coco.imgs) == 12
    for image in coco.imgs.values():
        assert (image["width"], image["height"]) == (64, 64)
        assert Image.open(image_dir / image["file_name"]).size == (64, 64)
    assert len({a["id"] for a in coco.anns.values()}) == len(coco.anns) > 0
    assert all(a["iscrowd"] == 0 and 1 <= a["category_id"] <= 8 for a in coco.anns.values())


def test_bbox_and_area_are_those_of_the_rle(small_split):
    _, ann_file = small_split
    coco = COCO(str(ann_file))
    for a in coco.anns.values():
        mask = mask_utils.decode(a["segmentation"])
        ys, xs = np.nonzero(mask)
        assert a["area"] == mask.sum() >= shapes.MIN_VISIBLE_PIXELS
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_occlusion_leaves_disjoint_masks(small_split):
    _, ann_file = small_split
    coco = COCO(str(ann_file))
    for image_id in coco.imgs:
        masks = [mask_utils.decode(a["segmentation"]) for a in coco.imgToAnns[image_id]]
        if masks:
            assert np.stack(masks).sum(0).max() <= 1


def test_later_shapes_hide_earlier_ones():
    back = shapes._shape_mask("square", 40.0, 0.0, (30.0, 30.0))
    front = shapes._shape_mask("circle", 20.0, 0.0, (40.0, 40.0))
    instance_map = shapes._paint([back, front], [0, 1], 64)

    def full(shape):
        mask, x0, y0 = shape
        canvas = np.zeros((64, 64), bool)
        canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
        return canvas

    np.testing.assert_array_equal(instance_map == 2, full(front))
    np.testing.assert_array_equal(instance_map == 1, full(back) & ~full(front))
    assert (full(back) & full(front)).sum() > 100  # they did overlap


def test_shapes_have_holes_and_the_smallest_still_have_pixels():
    mask, _, _ = shapes._shape_mask("ring", 30.0, 0.3, (32.0, 32.0))
    assert mask.any() and not mask[mask.shape[0] // 2, mask.shape[1] // 2]  # a ring has a hole
    rng = np.random.default_rng(0)
    for name in shapes.SHAPE_CLASSES:
        small, _, _ = shapes._shape_mask(name, 8.0, float(rng.uniform(0, 6)), (10.3, 10.7))
        assert small.sum() >= shapes.MIN_VISIBLE_PIXELS, name


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(shapes.SHAPE_CLASSES),
    diameter=st.floats(8, 200),
    angle=st.floats(0, 7),
    x=st.floats(-50, 300),
    y=st.floats(-50, 300),
)
def test_a_shape_fits_inside_its_canvas(name, diameter, angle, x, y):
    # A shape touching the canvas edge would have been cut off.
    mask, x0, y0 = shapes._shape_mask(name, diameter, angle, (x, y))
    assert mask.shape[0] == mask.shape[1] >= diameter
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert mask.sum() > 0.2 * diameter**2
    assert x0 <= x <= x0 + mask.shape[1] and y0 <= y <= y0 + mask.shape[0]


def test_sizes_include_many_small_objects_and_some_large():
    areas = []
    for index in range(40):
        _, masks, _ = shapes.render_image(256, shapes._image_rng(0, "sizes", index))
        areas += masks.reshape(len(masks), -1).sum(1).tolist()
    areas = np.array(areas)
    assert (areas < 32**2).mean() > 0.35  # COCO "small"
    assert (areas > 96**2).sum() > 0  # COCO "large"
    assert len(areas) > 150


def test_empty_images_are_written(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "EMPTY_IMAGE_PROBABILITY", 1.0)
    ann_file = shapes.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    coco = json.loads(ann_file.read_text())
    assert len(coco["images"]) == 2 and coco["annotations"] == []
    dataset = data.CocoDataset(tmp_path / "val", ann_file)
    image, target = dataset[0]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 32, 32)
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_refuses_to_overwrite(tmp_path):
    ann_file = shapes.generate_split(tmp_path, "val", 1, 32, seed=0, progress=False)
    with pytest.raises(FileExistsError, match="val.json"):
        shapes.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    ann_file.unlink()
    with pytest.raises(FileExistsError, match="val"):  # a leftover image folder also counts
        shapes.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    shapes.generate_split(tmp_path, "val", 2, 32, seed=0, overwrite=True, progress=False)
    assert len(json.loads(ann_file.read_text())["images"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val", "val.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_midway_leaves_no_partial_split(tmp_path, monkeypatch, overwrite):
    if overwrite:
        old = shapes.generate_split(tmp_path, "val", 1, 32, seed=5, progress=False).read_bytes()
    real_write_png, calls = shapes._write_png, []

    def failing_write_png(pixels, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write_png(pixels, path)

    monkeypatch.setattr(shapes, "_write_png", failing_write_png)
    with pytest.raises(KeyboardInterrupt):
        shapes.generate_split(tmp_path, "val", 5, 32, seed=0, overwrite=overwrite, progress=False)
    if overwrite:  # the old split is untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["val", "val.json"]
        assert (tmp_path / "val.json").read_bytes() == old
    else:
        assert list(tmp_path.iterdir()) == []


def test_failure_writing_json_leaves_nothing(tmp_path, monkeypatch):
    def failing_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shapes.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        shapes.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"num_images": -1}, ValueError, "num_images"),
        ({"num_images": 2.0}, TypeError, "num_images"),
        ({"image_size": 31}, ValueError, "image_size"),
        ({"image_size": 2049}, ValueError, "image_size"),
        ({"image_size": 64.0}, TypeError, "image_size"),
        ({"image_size": True}, TypeError, "image_size"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": -1}, ValueError, "seed"),
        ({"split": "../val"}, ValueError, "split"),
        ({"split": ""}, ValueError, "split"),
    ],
)
def test_generate_split_rejects_bad_arguments(tmp_path, kwargs, error, name):
    arguments = {"out_dir": tmp_path, "split": "val", "num_images": 1, "image_size": 64, "seed": 0, **kwargs}
    with pytest.raises(error, match=name):
        shapes.generate_split(**arguments, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_generate_dataset_checks_counts_and_skips_empty_train(tmp_path):
    with pytest.raises(ValueError, match="train"):
        shapes.generate_dataset(tmp_path, train=-1, val=1, image_size=32, seed=0, progress=False)
    with pytest.raises(ValueError, match="val"):
        shapes.generate_dataset(tmp_path, train=1, val=-1, image_size=32, seed=0, progress=False)
    written = shapes.generate_dataset(tmp_path, train=0, val=1, image_size=32, seed=0, progress=False)
    assert written == {"val": tmp_path / "val.json"}
    assert not (tmp_path / "train").exists()


def test_ensure_split_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNBOOK_CACHE", str(tmp_path / "cache"))
    assert shapes.default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FPNBOOK_CACHE")
    assert shapes.default_cache_dir() == Path.home() / ".cache" / "fpnbook"
    monkeypatch.setenv("FPNBOOK_CACHE", str(tmp_path / "cache"))

    image_dir, ann_file = shapes.ensure_split("train", 3, image_size=32, seed=2, progress=False)
    assert image_dir.is_dir() and ann_file.is_file() and tmp_path / "cache" in ann_file.parents
    calls = []
    monkeypatch.setattr(shapes, "generate_split", lambda *a, **k: calls.append(a))
    assert shapes.ensure_split("train", 3, image_size=32, seed=2, progress=False) == (image_dir, ann_file)
    assert calls == []  # reused
    shapes.ensure_split("train", 4, image_size=32, seed=2, progress=False)
    assert len(calls) == 1  # another count is another split
    monkeypatch.undo()
    # The cached split is exactly what generate_split writes.
    reference = shapes.generate_split(tmp_path / "ref", "train", 3, 32, seed=2, progress=False)
    assert reference.read_bytes() == ann_file.read_bytes()


# ---------------------------------------------------------------- CocoDataset
