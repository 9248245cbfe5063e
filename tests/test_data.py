import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from fpnbook import data


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """Twelve 64 px images written once for the whole module: (image_dir, ann_file)."""
    out = tmp_path_factory.mktemp("shapes")
    ann_file = data.generate_split(out, "val", 12, 64, seed=3, progress=False)
    return out / "val", ann_file


def mask_box(mask: torch.Tensor) -> list[int]:
    """XYXY box of a mask's pixels, x2/y2 one past the last column/row (COCO's convention)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- generator


def test_classes_and_chapter_4_splits():
    assert len(data.SHAPE_CLASSES) == 8 == len(set(data.SHAPE_CLASSES))
    assert len(data.SPLIT_A) == len(data.SPLIT_B) == 4
    assert sorted(data.SPLIT_A + data.SPLIT_B) == list(range(1, 9))


def test_same_seed_gives_identical_bytes(tmp_path):
    data.generate_dataset(tmp_path / "a", train=3, val=2, image_size=64, seed=7, progress=False)
    data.generate_dataset(tmp_path / "b", train=3, val=2, image_size=64, seed=7, progress=False)
    data.generate_dataset(tmp_path / "c", train=3, val=2, image_size=64, seed=8, progress=False)
    a, b, c = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    train_files = [f"train/00000{i}.png" for i in range(3)]
    assert sorted(a) == ["train.json", *train_files, "val.json", "val/000000.png", "val/000001.png"]
    assert a == b
    assert a["train/000000.png"] != c["train/000000.png"]
    assert a["train/000000.png"] != a["val/000000.png"]  # train and val never share images


def test_image_depends_only_on_seed_split_and_index(tmp_path):
    data.generate_split(tmp_path / "few", "train", 2, 64, seed=1, progress=False)
    data.generate_split(tmp_path / "more", "train", 4, 64, seed=1, progress=False)
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "few/train" / name).read_bytes() == (tmp_path / "more/train" / name).read_bytes()


def test_json_is_coco_and_loads_with_pycocotools(small_split):
    image_dir, ann_file = small_split
    coco = COCO(str(ann_file))
    assert [coco.cats[i]["name"] for i in range(1, 9)] == list(data.SHAPE_CLASSES)
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
        assert a["area"] == mask.sum() >= data.MIN_VISIBLE_PIXELS
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_occlusion_leaves_disjoint_masks(small_split):
    _, ann_file = small_split
    coco = COCO(str(ann_file))
    for image_id in coco.imgs:
        masks = [mask_utils.decode(a["segmentation"]) for a in coco.imgToAnns[image_id]]
        if masks:
            assert np.stack(masks).sum(0).max() <= 1


def test_later_shapes_hide_earlier_ones():
    back = data._shape_mask("square", 40.0, 0.0, (30.0, 30.0))
    front = data._shape_mask("circle", 20.0, 0.0, (40.0, 40.0))
    instance_map = data._paint([back, front], [0, 1], 64)

    def full(shape):
        mask, x0, y0 = shape
        canvas = np.zeros((64, 64), bool)
        canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
        return canvas

    np.testing.assert_array_equal(instance_map == 2, full(front))
    np.testing.assert_array_equal(instance_map == 1, full(back) & ~full(front))
    assert (full(back) & full(front)).sum() > 100  # they did overlap


def test_shapes_have_holes_and_the_smallest_still_have_pixels():
    mask, _, _ = data._shape_mask("ring", 30.0, 0.3, (32.0, 32.0))
    assert mask.any() and not mask[mask.shape[0] // 2, mask.shape[1] // 2]  # a ring has a hole
    rng = np.random.default_rng(0)
    for name in data.SHAPE_CLASSES:
        small, _, _ = data._shape_mask(name, 8.0, float(rng.uniform(0, 6)), (10.3, 10.7))
        assert small.sum() >= data.MIN_VISIBLE_PIXELS, name


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(data.SHAPE_CLASSES),
    diameter=st.floats(8, 200),
    angle=st.floats(0, 7),
    x=st.floats(-50, 300),
    y=st.floats(-50, 300),
)
def test_a_shape_fits_inside_its_canvas(name, diameter, angle, x, y):
    # A shape touching the canvas edge would have been cut off.
    mask, x0, y0 = data._shape_mask(name, diameter, angle, (x, y))
    assert mask.shape[0] == mask.shape[1] >= diameter
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert mask.sum() > 0.2 * diameter**2
    assert x0 <= x <= x0 + mask.shape[1] and y0 <= y <= y0 + mask.shape[0]


def test_sizes_include_many_small_objects_and_some_large():
    areas = []
    for index in range(40):
        _, masks, _ = data.render_image(256, data._image_rng(0, "sizes", index))
        areas += masks.reshape(len(masks), -1).sum(1).tolist()
    areas = np.array(areas)
    assert (areas < 32**2).mean() > 0.35  # COCO "small"
    assert (areas > 96**2).sum() > 0  # COCO "large"
    assert len(areas) > 150


def test_empty_images_are_written(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "EMPTY_IMAGE_PROBABILITY", 1.0)
    ann_file = data.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    coco = json.loads(ann_file.read_text())
    assert len(coco["images"]) == 2 and coco["annotations"] == []
    dataset = data.CocoDataset(tmp_path / "val", ann_file)
    image, target = dataset[0]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 32, 32)
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_refuses_to_overwrite(tmp_path):
    ann_file = data.generate_split(tmp_path, "val", 1, 32, seed=0, progress=False)
    with pytest.raises(FileExistsError, match="val.json"):
        data.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    ann_file.unlink()
    with pytest.raises(FileExistsError, match="val"):  # a leftover image folder also counts
        data.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
    data.generate_split(tmp_path, "val", 2, 32, seed=0, overwrite=True, progress=False)
    assert len(json.loads(ann_file.read_text())["images"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val", "val.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_midway_leaves_no_partial_split(tmp_path, monkeypatch, overwrite):
    if overwrite:
        old = data.generate_split(tmp_path, "val", 1, 32, seed=5, progress=False).read_bytes()
    real_write_png, calls = data._write_png, []

    def failing_write_png(pixels, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write_png(pixels, path)

    monkeypatch.setattr(data, "_write_png", failing_write_png)
    with pytest.raises(KeyboardInterrupt):
        data.generate_split(tmp_path, "val", 5, 32, seed=0, overwrite=overwrite, progress=False)
    if overwrite:  # the old split is untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["val", "val.json"]
        assert (tmp_path / "val.json").read_bytes() == old
    else:
        assert list(tmp_path.iterdir()) == []


def test_failure_writing_json_leaves_nothing(tmp_path, monkeypatch):
    def failing_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        data.generate_split(tmp_path, "val", 2, 32, seed=0, progress=False)
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
        data.generate_split(**arguments, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_generate_dataset_checks_counts_and_skips_empty_train(tmp_path):
    with pytest.raises(ValueError, match="train"):
        data.generate_dataset(tmp_path, train=-1, val=1, image_size=32, seed=0, progress=False)
    with pytest.raises(ValueError, match="val"):
        data.generate_dataset(tmp_path, train=1, val=-1, image_size=32, seed=0, progress=False)
    written = data.generate_dataset(tmp_path, train=0, val=1, image_size=32, seed=0, progress=False)
    assert written == {"val": tmp_path / "val.json"}
    assert not (tmp_path / "train").exists()


def test_ensure_split_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNBOOK_CACHE", str(tmp_path / "cache"))
    assert data.default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FPNBOOK_CACHE")
    assert data.default_cache_dir() == Path.home() / ".cache" / "fpnbook"
    monkeypatch.setenv("FPNBOOK_CACHE", str(tmp_path / "cache"))

    image_dir, ann_file = data.ensure_split("train", 3, image_size=32, seed=2, progress=False)
    assert image_dir.is_dir() and ann_file.is_file() and tmp_path / "cache" in ann_file.parents
    calls = []
    monkeypatch.setattr(data, "generate_split", lambda *a, **k: calls.append(a))
    assert data.ensure_split("train", 3, image_size=32, seed=2, progress=False) == (image_dir, ann_file)
    assert calls == []  # reused
    data.ensure_split("train", 4, image_size=32, seed=2, progress=False)
    assert len(calls) == 1  # another count is another split
    monkeypatch.undo()
    # The cached split is exactly what generate_split writes.
    reference = data.generate_split(tmp_path / "ref", "train", 3, 32, seed=2, progress=False)
    assert reference.read_bytes() == ann_file.read_bytes()


# ---------------------------------------------------------------- CocoDataset


def test_dataset_types_and_shapes(small_split):
    dataset = data.CocoDataset(*small_split)
    coco = COCO(str(small_split[1]))
    assert len(dataset) == 12 and dataset.image_ids == sorted(coco.imgs)
    assert dataset.class_names == ["background", *data.SHAPE_CLASSES]
    assert dataset.label_to_cat_id == {i: i for i in range(1, 9)} == dataset.cat_id_to_label
    assert dataset.num_classes == 8
    for index in range(len(dataset)):
        image, target = dataset[index]
        n = len(coco.imgToAnns[dataset.image_ids[index]])
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert 0 <= image.min() and image.max() <= 1
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
        assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY and target["boxes"].canvas_size == (64, 64)
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert isinstance(target["masks"], tv_tensors.Mask) and target["masks"].dtype == torch.uint8
        assert target["masks"].shape == (n, 64, 64)
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
        assert target["area"].dtype == torch.float32 and target["iscrowd"].dtype == torch.int64
        assert target["image_id"] == dataset.image_ids[index]
        # Boxes enclose their masks: XYXY with x2 one past the last pixel column.
        for box, mask in zip(target["boxes"], target["masks"]):
            assert box.tolist() == mask_box(mask)
        torch.testing.assert_close(target["area"], target["masks"].flatten(1).sum(1).float())


def test_works_with_v2_transforms(small_split):
    plain = data.CocoDataset(*small_split)
    flipped = data.CocoDataset(*small_split, transforms=v2.RandomHorizontalFlip(p=1.0))
    index = next(i for i in range(len(plain)) if len(plain[i][1]["boxes"]) > 0)
    (image, target), (image_f, target_f) = plain[index], flipped[index]
    torch.testing.assert_close(image_f, image.flip(-1))
    torch.testing.assert_close(target_f["masks"], target["masks"].flip(-1))
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    torch.testing.assert_close(target_f["boxes"].as_subclass(torch.Tensor), torch.stack([64 - x2, y1, 64 - x1, y2], 1))
    # After the flip, each box still encloses its (flipped) mask.
    for box, mask in zip(target_f["boxes"], target_f["masks"]):
        assert box.tolist() == mask_box(mask)

    resized = data.CocoDataset(*small_split, transforms=v2.Compose([v2.Resize(128), v2.ToDtype(torch.float32)]))
    image_r, target_r = resized[index]
    assert image_r.shape == (3, 128, 128) and target_r["masks"].shape[-2:] == (128, 128)
    plain_boxes = target["boxes"].as_subclass(torch.Tensor)
    torch.testing.assert_close(target_r["boxes"].as_subclass(torch.Tensor), plain_boxes * 2)


def test_collate_and_dataloader(small_split):
    dataset = data.CocoDataset(*small_split)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=data.collate)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 5 and images[0].shape == (3, 64, 64)
    assert data.collate([]) == ([], [])


def write_coco(root: Path, dataset: dict, images: dict[str, Image.Image]) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(root / "images" / name)
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(dataset))
    return root / "images", ann_file


def real_coco_like(**changes) -> dict:
    """A tiny COCO file with what real COCO has: id gaps, polygons, RLE, crowds, odd images."""
    square = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]]  # polygon, 8x8 px
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 6), np.uint8), ((5, 11), (3, 11)))))
    dataset = {
        "images": [
            {"id": 10, "file_name": "grey.png", "width": 20, "height": 20},
            {"id": 4, "file_name": "rgba.png", "width": 20, "height": 20},
            {"id": 30, "file_name": "empty.jpg", "width": 20, "height": 20},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 7, "name": "train"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 90, "bbox": [2, 2, 8, 8], "area": 64.0, "iscrowd": 0, "segmentation": square},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [3, 5, 6, 4], "area": 24.0, "iscrowd": 0,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 20, 20], "area": 400.0, "iscrowd": 1,
             "segmentation": {"size": [20, 20], "counts": [0, 400]}},
            {"id": 4, "image_id": 4, "category_id": 7, "bbox": [5, 5, 0, 3], "area": 0.0, "iscrowd": 0, "segmentation": []},
            {"id": 5, "image_id": 4, "category_id": 7, "bbox": [1, 1, 4, 4], "area": 16.0, "iscrowd": 0,
             "segmentation": {"size": [20, 20], "counts": [21, 4, 16, 4, 16, 4, 16, 4, 315]}},
        ],
    }  # fmt: skip
    dataset.update(changes)
    return dataset


def odd_images() -> dict[str, Image.Image]:
    return {
        "grey.png": Image.new("L", (20, 20), 128),
        "rgba.png": Image.new("RGBA", (20, 20), (255, 0, 0, 10)),
        "empty.jpg": Image.new("RGB", (20, 20), (0, 0, 255)),
    }


def test_reads_real_coco_features(tmp_path):
    dataset = data.CocoDataset(*write_coco(tmp_path, real_coco_like(), odd_images()))
    assert dataset.label_to_cat_id == {1: 1, 2: 7, 3: 90}
    assert dataset.cat_id_to_label == {1: 1, 7: 2, 90: 3}
    assert dataset.class_names == ["background", "person", "train", "toothbrush"]
    assert dataset.image_ids == [4, 10, 30]

    image, target = dataset[1]  # grey image: crowd annotation skipped
    assert image.shape == (3, 20, 20) and torch.allclose(image, torch.full_like(image, 128 / 255))
    assert target["labels"].tolist() == [3, 1]
    assert target["boxes"].tolist() == [[2, 2, 10, 10], [3, 5, 9, 9]]
    assert target["masks"][1].sum() == 24 and target["masks"][1][5:9, 3:9].all()
    assert target["masks"][0][2:10, 2:10].sum() >= 49  # polygon rasterised by pycocotools
    assert target["iscrowd"].tolist() == [0, 0] and target["area"].tolist() == [64.0, 24.0]

    image, target = dataset[0]  # RGBA image: the zero-width box is dropped; uncompressed RLE
    assert image.shape == (3, 20, 20)
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[1, 1, 5, 5]]
    assert target["masks"][0].sum() == 16 and target["masks"][0][1:5, 1:5].all()

    image, target = dataset[2]  # no annotations
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 20, 20) and target["area"].shape == (0,)


def test_mask_classes_keep_masks_of_chosen_classes(tmp_path):
    paths = write_coco(tmp_path, real_coco_like(), odd_images())
    dataset = data.CocoDataset(*paths, mask_classes={1})
    _, target = dataset[1]
    assert target["has_mask"].tolist() == [False, True]
    assert target["masks"][0].sum() == 0 and target["masks"][1].sum() == 24
    assert len(target["boxes"]) == 2  # boxes of every class stay
    assert "has_mask" not in data.CocoDataset(*paths)[1][1]
    with pytest.raises(ValueError, match="mask_classes"):
        data.CocoDataset(*paths, mask_classes={0, 4})


def test_missing_paths_are_named(tmp_path, small_split):
    image_dir, ann_file = small_split
    with pytest.raises(FileNotFoundError, match="nope.json"):
        data.CocoDataset(image_dir, tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="no_images"):
        data.CocoDataset(tmp_path / "no_images", ann_file)
    image_dir, ann_file = write_coco(tmp_path, real_coco_like(), odd_images())
    (image_dir / "grey.png").unlink()
    dataset = data.CocoDataset(image_dir, ann_file)
    dataset[0]  # other images still load
    with pytest.raises(FileNotFoundError, match="grey.png"):
        dataset[1]


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    for text in ['{"images": [', "[1, 2]", '{"annotations": []}', '{"images": []}']:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match="bad.json"):
            data.CocoDataset(tmp_path / "images", tmp_path / "bad.json")


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, 4, 5], [1, 2, -3, 4], [1, 2, 3, -0.5], [1, math.nan, 3, 4],
                                  [1, 2, math.inf, 4], ["1", 2, 3, 4], None])  # fmt: skip
def test_bad_bbox_names_the_annotation(tmp_path, bbox):
    coco = real_coco_like()
    coco["annotations"][4]["bbox"] = bbox
    if bbox is None:
        del coco["annotations"][4]["bbox"]
    with pytest.raises(ValueError, match="annotation 5"):
        data.CocoDataset(*write_coco(tmp_path, coco, odd_images()))


def test_unknown_category_names_the_annotation(tmp_path):
    coco = real_coco_like()
    coco["annotations"][1]["category_id"] = 2
    with pytest.raises(ValueError, match="annotation 2"):
        data.CocoDataset(*write_coco(tmp_path, coco, odd_images()))


def test_image_size_disagreeing_with_json_is_an_error(tmp_path):
    coco = real_coco_like()
    coco["images"][0]["width"] = 30
    dataset = data.CocoDataset(*write_coco(tmp_path, coco, odd_images()))
    with pytest.raises(ValueError, match="grey.png"):
        dataset[1]


# ---------------------------------------------------------------- the committed split


def test_committed_val_split_is_small_and_loads():
    image_dir, ann_file = data.val_paths()
    assert image_dir == data.VAL_DIR / "val"
    total = sum(p.stat().st_size for p in data.VAL_DIR.rglob("*") if p.is_file())
    assert total < 2 * 2**20
    dataset = data.CocoDataset(image_dir, ann_file)
    assert len(dataset) >= 40
    assert sorted(p.name for p in image_dir.iterdir()) == [dataset.coco.imgs[i]["file_name"] for i in dataset.image_ids]
    info = dataset.coco.dataset["info"]
    assert (info["image_size"], info["split"], info["generator_version"]) == (256, "val", data.GENERATOR_VERSION)
    image, target = dataset[0]
    assert image.shape == (3, 256, 256) and len(target["boxes"]) == len(target["labels"])
    assert len(dataset.coco.anns) > 5 * len(dataset)
    assert any(not dataset.coco.imgToAnns[i] for i in dataset.image_ids)  # an empty image, on purpose


def test_committed_val_split_matches_the_generator(tmp_path):
    # Regenerating the first images with the documented arguments gives the same bytes.
    image_dir, ann_file = data.val_paths()
    info = json.loads(ann_file.read_text())["info"]
    data.generate_split(tmp_path, "val", 2, info["image_size"], info["seed"], progress=False)
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "val" / name).read_bytes() == (image_dir / name).read_bytes()
