"""Convert labelme's per-image polygon files into one COCO annotations file.

labelme (and tools that copy its format) writes one JSON per image:
``{"imagePath": "a.jpg", "imageHeight": H, "imageWidth": W, "shapes": [{"label": "cat",
"shape_type": "polygon", "points": [[x, y], ...]}, ...]}``. COCO wants one file for the
whole dataset with a category table and, per object, a box, an area and a mask. The
masks are stored as RLE made by ``pycocotools.mask`` so area and box agree with the mask.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .files import atomic_write_text

SUPPORTED_SHAPES = ("polygon", "rectangle", "circle")


def shape_to_polygon(shape: dict, source: Path) -> list[float]:
    """A labelme shape as a flat COCO polygon ``[x1, y1, x2, y2, ...]`` in pixels."""
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points")
    if kind not in SUPPORTED_SHAPES:
        raise ValueError(f"{source}: shape {shape.get('label')!r} has shape_type {kind!r}; "
                         f"supported: {', '.join(SUPPORTED_SHAPES)}")
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise ValueError(f"{source}: shape {shape.get('label')!r} has malformed points {points!r}")
    points = np.asarray(points, dtype=np.float64)
    if not np.isfinite(points).all():
        raise ValueError(f"{source}: shape {shape.get('label')!r} has non-finite points")
    if kind == "rectangle":
        if len(points) != 2:
            raise ValueError(f"{source}: rectangle {shape.get('label')!r} needs 2 corner points, got {len(points)}")
        (x1, y1), (x2, y2) = points.min(0), points.max(0)
        points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    elif kind == "circle":
        if len(points) != 2:
            raise ValueError(f"{source}: circle {shape.get('label')!r} needs a centre and a rim point")
        centre, rim = points
        radius = float(np.hypot(*(rim - centre)))
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if len(points) < 3:
        raise ValueError(f"{source}: polygon {shape.get('label')!r} needs at least 3 points, got {len(points)}")
    return points.flatten().tolist()


def check_record(record, source: Path) -> None:
    """Raise a ValueError naming ``source`` unless ``record`` is a labelme annotation file's content."""
    if not isinstance(record, dict):
        raise ValueError(f"{source} is not a labelme file: expected a JSON object")
    for key in ("imagePath", "imageHeight", "imageWidth", "shapes"):
        if key not in record:
            raise ValueError(f"{source} is not a labelme file: no {key!r}")
    if not isinstance(record["imagePath"], str) or not record["imagePath"]:
        raise ValueError(f"{source}: imagePath must be a file name, got {record['imagePath']!r}")
    for key in ("imageHeight", "imageWidth"):
        value = record[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{source}: {key} must be a positive integer of pixels, got {value!r}")
    if not isinstance(record["shapes"], list):
        raise ValueError(f"{source}: shapes must be a list, got {type(record['shapes']).__name__}")
    for i, shape in enumerate(record["shapes"]):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not shape["label"]:
            raise ValueError(f"{source}: shapes[{i}] has no 'label' (a class name)")


def labelme_to_coco(
    input_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert every ``*.json`` labelme file in ``input_dir`` into one COCO file ``out_file``.

    Category ids are 1.. in the order of ``class_names`` (default: sorted labels found);
    a label outside ``class_names`` raises ValueError. ``file_name`` is each
    ``imagePath`` relative to ``input_dir``, so use ``input_dir`` as the image folder.
    The file is written atomically and an existing one is kept unless ``overwrite``.
    """
    input_dir, out_file = Path(input_dir), Path(out_file)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"labelme folder not found: {input_dir}")
    if out_file.is_dir():
        raise ValueError(f"out_file {out_file} is a directory; give the path of the COCO JSON file to write")
    if out_file.exists() and not overwrite:
        raise FileExistsError(f"{out_file} already exists; pass overwrite=True to replace it")
    sources = sorted(input_dir.glob("*.json"))
    if not sources:
        raise ValueError(f"no labelme .json files in {input_dir}")
    records = []
    for source in sources:
        try:
            record = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{source} is not valid JSON: {error}") from None
        check_record(record, source)
        records.append((source, record))
    found = sorted({s.get("label") for _, r in records for s in r["shapes"]})
    names = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {names}")
    cat_ids = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, (source, record) in enumerate(records, start=1):
        height, width = record["imageHeight"], record["imageWidth"]
        images.append({"id": image_id, "file_name": record["imagePath"], "height": height, "width": width})
        for shape in record["shapes"]:
            polygon = shape_to_polygon(shape, source)
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            area = int(mask_utils.area(rle))
            if area == 0:
                continue  # a polygon entirely outside the image, or with no area
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[shape["label"]],
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": area, "iscrowd": 0,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            })
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in cat_ids.items()]}
    return atomic_write_text(json.dumps(coco), out_file)
