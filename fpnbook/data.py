"""Data: any COCO-format dataset as tensors, and the book's committed validation split.

:class:`CocoDataset` reads any COCO dataset (the book's generated shapes, see
:mod:`fpnbook.shapes`, or real COCO) into tensors: images float ``[3, H, W]`` in 0..1,
boxes ``(x1, y1, x2, y2)`` in pixels, contiguous labels ``1..K`` with 0 kept for
background, masks ``uint8 [N, H, W]``. :func:`open_dataset` opens an annotations file and
its image folder, or the committed val split when given neither.

The generator's names (``generate_dataset``, ``ensure_split``, ``SHAPE_CLASSES``,
``SPLIT_A``, ...) are also reachable from here, as chapters have always called them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision import tv_tensors

from .boxes import xywh_to_xyxy
from .evaluate import load_coco
from .shapes import (  # noqa: F401  (the generator's public names, as fpnbook.data has always offered them)
    GENERATOR_VERSION,
    MIN_VISIBLE_PIXELS,
    SHAPE_CLASSES,
    SPLIT_A,
    SPLIT_B,
    default_cache_dir,
    ensure_split,
    generate_dataset,
    generate_split,
    render_image,
)

# The committed validation split: repo root / data.
VAL_DIR = Path(__file__).resolve().parent.parent / "data"


def val_paths() -> tuple[Path, Path]:
    """(image_dir, ann_file) of the validation split committed under the repository's ``data/``."""
    image_dir, ann_file = VAL_DIR / "val", VAL_DIR / "val.json"
    if not ann_file.is_file() or not image_dir.is_dir():
        raise FileNotFoundError(
            f"committed validation split not found at {ann_file}; is fpnbook installed from the repository?"
        )
    return image_dir, ann_file


# ---------------------------------------------------------------- reading COCO


def check_segmentation(annotation: dict, height: int, width: int, source) -> None:
    """Raise a ValueError naming the annotation unless its segmentation fits an image of ``height x width``.

    Polygons: lists of at least 3 (x, y) points; RLE (compressed or not): ``size == [height, width]``.
    """
    segmentation = annotation["segmentation"]
    name = f"annotation {annotation.get('id')!r} (image {annotation['image_id']!r}) in {source}"
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(f"{name}: a polygon needs at least 3 (x, y) points as a flat list, got {polygon!r}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in polygon):
                raise ValueError(f"{name}: polygon coordinates must be finite numbers")
    elif isinstance(segmentation, dict):
        size = segmentation.get("size")
        if list(size or []) != [height, width] or "counts" not in segmentation:
            raise ValueError(f"{name}: its RLE has size {size!r} but the image is {height}x{width} "
                             "(an RLE needs 'size' [height, width] and 'counts')")
    else:
        raise ValueError(f"{name}: segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")


class CocoDataset(torch.utils.data.Dataset):
    """Any COCO-format detection / instance-segmentation dataset, as tensors.

    ``dataset[i]`` is ``(image, target)``: ``image`` a tv_tensors.Image float32
    [3, H, W] in 0..1 (grey and RGBA images become RGB), and ``target`` a dict with
    ``boxes`` tv_tensors.BoundingBoxes [N, 4] XYXY pixels, ``labels`` int64 [N] in 1..K,
    ``masks`` tv_tensors.Mask uint8 [N, H, W], ``image_id`` int, ``area`` float32 [N],
    ``iscrowd`` int64 [N]. Crowd annotations and zero-size boxes are skipped;
    annotations without a segmentation get an all-zero mask.

    Category ids (which may have gaps, as in COCO) map to contiguous labels 1..K in
    increasing id order: ``label_to_cat_id``, ``cat_id_to_label``, ``class_names``
    (index 0 is "background"). ``transforms`` is called as ``transforms(image, target)``,
    so torchvision.transforms.v2 pipelines move boxes and masks with the image.

    ``mask_classes`` (a set of labels) keeps masks only for those classes, for
    partial mask supervision: the other masks are zeroed and ``target["has_mask"]``
    (bool [N]) says which objects carry one.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms=None,
        mask_classes: set[int] | None = None,
    ) -> None:
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.image_dir}")
        self.coco = load_coco(self.ann_file)
        for image in self.coco.dataset["images"]:
            if not isinstance(image.get("file_name"), str):
                raise ValueError(f"{self.ann_file}: image {image['id']!r} has no 'file_name'")
        self.transforms = transforms
        cat_ids = sorted(self.coco.cats)
        self.label_to_cat_id = {label: cat_id for label, cat_id in enumerate(cat_ids, start=1)}
        self.cat_id_to_label = {cat_id: label for label, cat_id in self.label_to_cat_id.items()}
        self.class_names = ["background"] + [self.coco.cats[c].get("name", str(c)) for c in cat_ids]
        self.image_ids = sorted(self.coco.imgs)
        self.mask_classes = None
        if mask_classes is not None:
            mask_classes = set(mask_classes)
            unknown = sorted(c for c in mask_classes if c not in self.label_to_cat_id)
            if unknown:
                raise ValueError(f"mask_classes must be labels in 1..{len(cat_ids)}, got unknown {unknown}")
            self.mask_classes = mask_classes

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels run 1..K; 0 is background)."""
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int) -> tv_tensors.Image:
        """Image ``index`` as float32 [3, H, W] in 0..1."""
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (image id {info['id']} in {self.ann_file})")
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"), dtype=np.uint8)
        except OSError as error:  # PIL's UnidentifiedImageError, a truncated file
            raise ValueError(f"{path} is not a readable image ({error}); image id {info['id']} in {self.ann_file}") from None
        return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255))

    def load_target(self, index: int, height: int, width: int) -> dict:
        """The target dict of image ``index`` (see the class docstring), before transforms."""
        image_id = self.image_ids[index]
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        if annotations:
            boxes = xywh_to_xyxy(torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32))
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        else:
            boxes = torch.zeros((0, 4), dtype=torch.float32)
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        annotations = [a for a, k in zip(annotations, keep) if k]
        boxes = boxes[torch.tensor(keep, dtype=torch.bool)]
        labels = torch.tensor([self.cat_id_to_label[a["category_id"]] for a in annotations], dtype=torch.int64)
        masks = torch.zeros((len(annotations), height, width), dtype=torch.uint8)
        with_mask = [j for j, a in enumerate(annotations) if a.get("segmentation")]
        for j in with_mask:
            check_segmentation(annotations[j], height, width, self.ann_file)
        if with_mask:  # polygons and both kinds of RLE -> one compressed RLE each, decoded in one call
            rles = [self.coco.annToRLE(annotations[j]) for j in with_mask]
            masks[with_mask] = torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": labels,
            "masks": None,
            "image_id": int(image_id),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in annotations], dtype=torch.float32),
            "iscrowd": torch.zeros(len(annotations), dtype=torch.int64),
        }
        if self.mask_classes is not None:
            has_mask = torch.tensor([int(label) in self.mask_classes for label in labels], dtype=torch.bool)
            masks[~has_mask] = 0
            target["has_mask"] = has_mask
        target["masks"] = tv_tensors.Mask(masks)
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image = self.load_image(index)
        info = self.coco.imgs[self.image_ids[index]]
        height, width = image.shape[-2:]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise ValueError(
                f"image {info['file_name']} is {height}x{width} pixels but {self.ann_file} says "
                f"{info.get('height')}x{info.get('width')}"
            )
        target = self.load_target(index, height, width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def open_dataset(ann: str | os.PathLike | None, images: str | os.PathLike | None, transforms=None,
                 mask_classes=None) -> CocoDataset:
    """The :class:`CocoDataset` of ``ann`` (COCO JSON) and its image folder ``images``; both None: the committed val split.

    What the CLI's ``--ann``/``--images`` pairs open. ValueError when only one of the two is given.
    """
    if (ann is None) != (images is None):
        raise ValueError("give both an annotations file and its image folder, or neither")
    if ann is None:
        images, ann = val_paths()
    return CocoDataset(images, ann, transforms=transforms, mask_classes=mask_classes)


def collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """DataLoader collate_fn: images and targets stay lists, because sizes and object counts differ."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
