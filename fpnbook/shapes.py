"""Shapes: the book's synthetic dataset, written as standard COCO files.

The generator draws eight kinds of shape over crops of real photographs (the
images bundled inside scikit-image, so nothing is downloaded). It makes detection
hard in the ways the book is about: sizes from 8 px to most of the image (many
COCO-"small" objects, area < 32**2), occlusion (later shapes hide earlier ones and
every mask, box and area is what stays visible), textured objects on cluttered
backgrounds, and a few images with no objects at all.

Files are standard COCO: ``DIR/<split>/000000.png ...`` and ``DIR/<split>.json``
with RLE masks. Image ``i`` of a split depends only on ``(seed, split, i)``, so
the same arguments always give byte-identical files, and the first 100 images of
a 1000-image split are the 100 images of a 100-image split. :mod:`fpnbook.data`
reads them (or any COCO dataset).
"""

from __future__ import annotations

import colorsys
import json
import math
import numbers
import os
import shutil
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageStat
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

# Category ids 1..8 in the JSON, in this order.
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent")
# Chapter 4 trains masks on one set and transfers them to the other. Each set holds
# a round shape, a polygon, a concave shape and one more, so both are learnable:
# A = circle, triangle, cross, crescent;  B = square, star, hexagon, ring.
SPLIT_A = (1, 3, 6, 8)
SPLIT_B = (2, 4, 5, 7)

# Bump when the generator's output changes; it is part of the cache key.
GENERATOR_VERSION = 1
MIN_OBJECT_SIZE = 8.0  # px, diameter of the shape's circumscribed circle
MAX_OBJECT_FRACTION = 0.75  # largest diameter, as a fraction of the image side
MIN_VISIBLE_PIXELS = 8  # objects hidden down to fewer pixels are dropped ...
MIN_VISIBLE_FRACTION = 0.25  # ... and so are objects with over 75% hidden or off-image
EMPTY_IMAGE_PROBABILITY = 0.02
MAX_OBJECTS = 16
PNG_COMPRESS_LEVEL = 4  # zlib's fastest level with lazy matching: near level 9's size at level 1's speed
# Sensor and JPEG noise make up most of a PNG's bytes. Rounding every channel to 32
# levels halves the files (the committed split must stay small) and looks the same.
LEVELS = 32
_POSTERIZE = (np.arange(256) // (256 // LEVELS) * (256 // LEVELS) + 128 // LEVELS).astype(np.uint8)

# Photographs and textures that ship inside the scikit-image wheel (skimage/data),
# those whose docstrings say public domain, CC0 or no known copyright restrictions.
BACKGROUND_FILES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "grass.png", "gravel.png", "brick.png", "coins.png", "camera.png",
)  # fmt: skip

# ---------------------------------------------------------------- argument checks


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {expected}, got {value}")
    return int(value)


def _check_split_name(split) -> str:
    if not isinstance(split, str):
        raise TypeError(f"split must be a str such as 'train' or 'val', got {type(split).__name__}")
    if not split or split.startswith(".") or "/" in split or os.sep in split:
        raise ValueError(f"split must be a plain folder name such as 'train' or 'val', got {split!r}")
    return split


# ---------------------------------------------------------------- drawing one image

_backgrounds: list[Image.Image] = []


def _load_backgrounds() -> list[Image.Image]:
    """The bundled photographs as RGB PIL images, loaded once per process, never downloaded."""
    if not _backgrounds:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        for name in BACKGROUND_FILES:
            if (folder / name).is_file():
                with Image.open(folder / name) as image:
                    _backgrounds.append(image.convert("RGB"))
        if not _backgrounds:
            raise FileNotFoundError(f"none of the background photographs {BACKGROUND_FILES} are in {folder}")
    return _backgrounds


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of a random photograph, rescaled to ``size``, maybe flipped. uint8 [S, S, 3]."""
    photos = _load_backgrounds()
    photo = photos[rng.integers(len(photos))]
    width, height = photo.size
    side = min(width, height) * rng.uniform(0.25, 1.0)
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    crop = photo.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Grey photographs get a colour cast, and every photo is toned down towards its
    # mean so that the shapes, not the background, carry most of the contrast.
    # One lookup table per channel does both, in PIL.
    tint, keep = rng.uniform(0.6, 1.0, size=3), rng.uniform(0.5, 1.0)
    mean = float(np.dot(ImageStat.Stat(crop).mean, tint)) / 3
    table = keep * np.arange(256)[None, :] * tint[:, None] + (1 - keep) * mean
    return np.array(crop.point(table.clip(0, 255).astype(np.uint8).ravel().tolist()))


def _polygon(name: str, radius: float, angle: float) -> np.ndarray:
    """Vertices [V, 2] of a polygonal shape centred on 0 with circumscribed ``radius``, rotated by ``angle``."""
    if name == "square":
        theta = np.arange(4) * np.pi / 2 + np.pi / 4
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    elif name == "triangle":
        theta = np.arange(3) * 2 * np.pi / 3 - np.pi / 2
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    elif name == "hexagon":
        theta = np.arange(6) * np.pi / 3
        points = np.stack([np.cos(theta), np.sin(theta)], 1)
    elif name == "star":
        theta = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        points = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
    elif name == "cross":
        a = 0.3  # half the arm's width; the corners sit at sqrt(1 + a^2), hence the rescale
        points = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
        ) / math.hypot(1, a)
    else:
        raise ValueError(f"name must be a polygonal shape, got {name!r}")
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return radius * points @ rotation.T


def _shape_mask(name: str, diameter: float, angle: float, centre: tuple[float, float]) -> tuple[np.ndarray, int, int]:
    """Draw one shape on a small canvas around it.

    Returns (bool mask [n, n], x0, y0): the canvas's top-left corner in image pixels.
    ``centre`` is (x, y) in image pixels; the canvas may stick out of the image.
    """
    radius = diameter / 2
    x0, y0 = math.floor(centre[0] - radius) - 1, math.floor(centre[1] - radius) - 1
    n = math.ceil(diameter) + 3
    cx, cy = centre[0] - x0, centre[1] - y0
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)

    def disc(x: float, y: float, r: float, fill: int) -> None:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    if name == "circle":
        disc(cx, cy, radius, 1)
    elif name == "ring":
        disc(cx, cy, radius, 1)
        disc(cx, cy, 0.55 * radius, 0)
    elif name == "crescent":
        disc(cx, cy, radius, 1)
        disc(cx + 0.45 * radius * math.cos(angle), cy + 0.45 * radius * math.sin(angle), 0.85 * radius, 0)
    else:
        points = _polygon(name, radius, angle) + (cx, cy)
        draw.polygon([tuple(p) for p in points.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool), x0, y0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    # Mostly saturated colours, so shapes stand out from the (toned-down) photographs.
    hue, saturation, value = rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random fill: solid, stripes, checker, noise or gradient. uint8 [height, width, 3]."""
    first, second = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(5)
    if kind == 0:
        return np.broadcast_to(first.astype(np.uint8), (height, width, 3))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 1:  # stripes at any angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 10)
        t = x * math.cos(angle) + y * math.sin(angle)
        weight = ((t % period) < period / 2).astype(np.float32)
    elif kind == 2:  # checker
        cell = int(rng.integers(2, 8))
        weight = ((x // cell + y // cell) % 2).astype(np.float32)
    elif kind == 3:  # noise around one colour
        noise = rng.normal(0, 25, size=(height, width, 3)).astype(np.float32)
        return (first + noise).clip(0, 255).astype(np.uint8)
    else:  # linear gradient across the object
        angle = rng.uniform(0, 2 * np.pi)
        t = x * math.cos(angle) + y * math.sin(angle)
        weight = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    weight = weight[..., None]
    return ((1 - weight) * first + weight * second).astype(np.uint8)


def _paint(shapes: Sequence[tuple[np.ndarray, int, int]], keep: Iterable[int], size: int) -> np.ndarray:
    """Instance map uint8 [S, S]: 0 is background, k + 1 where shape k is the front-most."""
    instance_map = np.zeros((size, size), dtype=np.uint8)
    for k in keep:
        mask, x0, y0 = shapes[k]
        n = mask.shape[0]
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + n, size), min(y0 + n, size)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        visible = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        instance_map[iy0:iy1, ix0:ix1][visible] = k + 1
    return instance_map


def render_image(image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Draw one synthetic image.

    Returns ``pixels`` uint8 [S, S, 3], ``masks`` bool [N, S, S] (the visible part of
    each object, back to front, never overlapping) and ``category_ids`` (N ints in 1..8).
    """
    size = _check_int("image_size", image_size, 32, 2048)
    pixels = _background(rng, size)
    num = 0 if rng.random() < EMPTY_IMAGE_PROBABILITY else int(min(1 + rng.poisson(5), MAX_OBJECTS))
    # Log-uniform diameters give as many 8-16 px objects as 64-128 px ones.
    low, high = math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_FRACTION * size)
    diameters = np.exp(rng.uniform(low, high, size=num))
    # Mostly big shapes behind small ones, but the noise lets some big ones in front.
    order = np.argsort(-(np.log(diameters) + rng.normal(0, 0.6, size=num)), kind="stable")
    categories, shapes = [], []
    for k in order:
        category = int(rng.integers(len(SHAPE_CLASSES))) + 1
        angle = rng.uniform(0, 2 * np.pi)
        centre = (rng.uniform(0, size), rng.uniform(0, size))
        categories.append(category)
        shapes.append(_shape_mask(SHAPE_CLASSES[category - 1], float(diameters[k]), angle, centre))

    # Paint, drop what is (nearly) hidden, and repaint without it so that a dropped
    # shape leaves no unlabelled pixels. Removing shapes only uncovers the others,
    # so everything kept after the first pass still passes.
    drawn = np.array([mask.sum() for mask, _, _ in shapes], dtype=np.int64)
    visible = np.bincount(_paint(shapes, range(num), size).ravel(), minlength=num + 1)[1:]
    keep = [k for k in range(num) if visible[k] >= MIN_VISIBLE_PIXELS and visible[k] >= MIN_VISIBLE_FRACTION * drawn[k]]
    instance_map = _paint(shapes, keep, size)

    for k in keep:
        mask, x0, y0 = shapes[k]
        n = mask.shape[0]
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + n, size), min(y0 + n, size)
        region = instance_map[iy0:iy1, ix0:ix1] == k + 1
        pixels[iy0:iy1, ix0:ix1][region] = _texture(rng, iy1 - iy0, ix1 - ix0)[region]
    pixels = _POSTERIZE[pixels]
    masks = instance_map[None] == (np.array(keep, dtype=np.uint8) + 1)[:, None, None]
    return pixels, masks, [categories[k] for k in keep]


# ---------------------------------------------------------------- writing splits


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One generator per image, keyed by (seed, split, index): images are independent
    # of how many came before, and train and val never share an image.
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _write_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _encode_annotations(masks: np.ndarray, category_ids: list[int], image_id: int, first_id: int) -> list[dict]:
    """COCO annotations for non-empty bool masks [N, H, W]; bbox and area come from the RLE."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    boxes = mask_utils.toBbox(rles)
    areas = mask_utils.area(rles)
    annotations = []
    for j, (rle, box, area, category) in enumerate(zip(rles, boxes, areas, category_ids)):
        annotations.append(
            {
                "id": first_id + j,
                "image_id": image_id,
                "category_id": category,
                "bbox": [int(v) for v in box],
                "area": int(area),
                "iscrowd": 0,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            }
        )
    return annotations


def generate_split(
    out_dir: str | os.PathLike,
    split: str,
    num_images: int,
    image_size: int,
    seed: int,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num_images`` synthetic images to ``out_dir/<split>/`` and their COCO JSON to ``out_dir/<split>.json``.

    Everything is written into temporary siblings and moved into place at the end
    (the JSON last), so an interrupted run never leaves a half-written split.
    Raises FileExistsError if the split exists, unless ``overwrite``. Returns the JSON's path.
    """
    split = _check_split_name(split)
    num_images = _check_int("num_images", num_images, 0)
    image_size = _check_int("image_size", image_size, 32, 2048)
    seed = _check_int("seed", seed, 0)
    out_dir = Path(out_dir)
    image_dir, ann_file = out_dir / split, out_dir / f"{split}.json"
    if not overwrite:
        for path in (ann_file, image_dir):
            if path.exists():
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir, tmp_json = out_dir / f".{split}.tmp-{tag}", out_dir / f".{split}.json.tmp-{tag}"
    tmp_dir.mkdir()
    try:
        images, annotations = [], []
        for index in tqdm(range(num_images), desc=f"{split} {image_size}px", unit="img", disable=not progress):
            pixels, masks, category_ids = render_image(image_size, _image_rng(seed, split, index))
            file_name = f"{index:06d}.png"
            _write_png(pixels, tmp_dir / file_name)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            annotations += _encode_annotations(masks, category_ids, image_id, first_id=len(annotations) + 1)
        coco = {
            "info": {
                "description": "fpnbook synthetic shapes",
                "generator_version": GENERATOR_VERSION,
                "image_size": image_size,
                "seed": seed,
                "split": split,
            },
            "licenses": [],
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)
            ],
            "images": images,
            "annotations": annotations,
        }
        with open(tmp_json, "x", encoding="utf-8") as f:
            json.dump(coco, f, sort_keys=True, separators=(",", ":"))
            f.write("\n")
        # Commit: clear the old split (JSON first, so a half-replaced split reads as missing).
        if overwrite:
            ann_file.unlink(missing_ok=True)
            if image_dir.exists():
                trash = out_dir / f".{split}.old-{tag}"
                os.replace(image_dir, trash)
                shutil.rmtree(trash)
        os.replace(tmp_dir, image_dir)
        os.replace(tmp_json, ann_file)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_json.unlink(missing_ok=True)
        raise
    return ann_file


def generate_dataset(
    out_dir: str | os.PathLike,
    train: int,
    val: int,
    image_size: int,
    seed: int,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write a ``train`` split (skipped when 0) and a ``val`` split under ``out_dir``. Returns {split: json path}."""
    _check_int("train", train, 0)
    _check_int("val", val, 0)
    splits = [(split, num) for split, num in (("train", train), ("val", val)) if split == "val" or num]
    if not overwrite:  # refuse before writing anything, not after the first split
        out_dir = Path(out_dir)
        for path in (p for split, _ in splits for p in (out_dir / f"{split}.json", out_dir / split)):
            if path.exists():
                raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    written = {}
    for split, num in splits:
        written[split] = generate_split(out_dir, split, num, image_size, seed, overwrite=overwrite, progress=progress)
    return written


def default_cache_dir() -> Path:
    """Where generated training splits live: ``$FPNBOOK_CACHE`` or ``~/.cache/fpnbook``."""
    return Path(os.environ.get("FPNBOOK_CACHE") or Path.home() / ".cache" / "fpnbook").expanduser()


def ensure_split(
    split: str,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """(image_dir, ann_file) of a synthetic split in the cache, generating it on first use.

    The split is keyed by (generator version, split, num_images, image_size, seed); its
    files equal those of ``generate_split(..., split, num_images, image_size, seed)``.
    """
    split = _check_split_name(split)
    num_images = _check_int("num_images", num_images, 0)
    image_size = _check_int("image_size", image_size, 32, 2048)
    seed = _check_int("seed", seed, 0)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out_dir = root / f"shapes-v{GENERATOR_VERSION}-{split}{num_images}-{image_size}px-seed{seed}"
    image_dir, ann_file = out_dir / split, out_dir / f"{split}.json"
    if not ann_file.is_file():  # the JSON is moved in last, so its presence means complete
        generate_split(out_dir, split, num_images, image_size, seed, overwrite=True, progress=progress)
    return image_dir, ann_file
