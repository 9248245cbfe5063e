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
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

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
        for key in ("imagePath", "imageHeight", "imageWidth", "shapes"):
            if key not in record:
                raise ValueError(f"{source} is not a labelme file: no {key!r}")
        records.append((source, record))
    found = sorted({s.get("label") for _, r in records for s in r["shapes"]})
    names = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {names}")
    cat_ids = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, (source, record) in enumerate(records, start=1):
        height, width = int(record["imageHeight"]), int(record["imageWidth"])
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
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out_file.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(f.name, out_file)
    return out_file
