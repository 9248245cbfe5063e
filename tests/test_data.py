import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from fpnbook import data


def mask_box(mask: torch.Tensor) -> list[int]:
    """XYXY box of a mask's pixels, x2/y2 one past the last column/row (COCO's convention)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# ---------------------------------------------------------------- generator


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
