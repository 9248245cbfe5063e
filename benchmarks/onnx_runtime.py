"""Time the shipped detectors in onnxruntime against PyTorch, one image at a time, post-processing included.

    python benchmarks/onnx_runtime.py [--threads 2] [--size 256] [--repeats 20] [--quick]

Each shipped checkpoint (RetinaNet, Mask R-CNN, Mask^X R-CNN) is exported with
``fpnbook.export.export_onnx`` to a temporary folder and run on the CPU: PyTorch as
``model([image])`` under ``torch.no_grad()`` with ``--threads`` threads, onnxruntime's CPU
provider with as many intra-op threads. The images are the first validation images
(real scenes, so NMS and the mask branch do their usual work), resized to ``--size``.
After a warm-up the two take turns, image by image, so a burst of load from elsewhere hits
both alike; each time is the median over ``--repeats`` images in ms. ``ratio`` is
onnxruntime / PyTorch: below 1 onnxruntime is faster. ``same`` says whether the two gave
the same labels on every timed image.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fpnbook.checkpoint import load_model
from fpnbook.data import CocoDataset, val_paths
from fpnbook.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("retinanet", "mask_rcnn", "mask_x_rcnn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads (default 2)")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels (the exported size)")
    parser.add_argument("--repeats", type=int, default=20, help="timed images per model (the median is kept)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 px, 1 warm-up, 3 repeats")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.size < 32 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1 and --size >= 32")
    return args


def load_images(count: int, size: int) -> list[torch.Tensor]:
    dataset = CocoDataset(*val_paths())
    images = [dataset[i % len(dataset)][0].as_subclass(torch.Tensor) for i in range(count)]
    return [F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False)[0].clamp(0, 1)
            if im.shape[-2:] != (size, size) else im for im in images]


def time_model(kind: str, images: list[torch.Tensor], warmup: int, threads: int, folder: Path) -> dict:
    import onnxruntime as ort

    model, _ = load_model(ROOT / "checkpoints" / f"{kind}.pt")
    size = tuple(images[0].shape[-2:])
    start = time.perf_counter()
    path = export_onnx(model, folder / f"{kind}.onnx", size)
    export_seconds = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @torch.no_grad()
    def torch_run(image):
        return model([image])[0]["labels"].numpy()

    def ort_run(image):
        return session.run(["labels"], {"image": image.numpy()})[0]

    for image in images[:warmup]:
        torch_run(image), ort_run(image)
    times = {"torch": [], "ort": []}
    same = True
    for image in images[warmup:]:
        labels = {}
        for name, fn in (("torch", torch_run), ("ort", ort_run)):
            start = time.perf_counter()
            labels[name] = fn(image)
            times[name].append(time.perf_counter() - start)
        same &= labels["torch"].shape == labels["ort"].shape and bool((labels["torch"] == labels["ort"]).all())
    return {"torch_ms": 1000 * statistics.median(times["torch"]), "ort_ms": 1000 * statistics.median(times["ort"]),
            "same": same, "export_s": export_seconds, "mb": path.stat().st_size / 2**20}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    import onnxruntime as ort

    args = parse_args(argv)
    size, warmup, repeats = (128, 1, 3) if args.quick else (args.size, 3, args.repeats)
    torch.set_num_threads(args.threads)
    images = load_images(warmup + repeats, size)
    print(f"fpnbook detectors, PyTorch {torch.__version__} vs onnxruntime {ort.__version__} (CPU), one {size}px image "
          f"per call, {args.threads} threads, median of {repeats} images after {warmup} warm-up")
    print(f"{'':<14}{'PyTorch ms':>12}{'onnxruntime ms':>16}{'ratio':>8}{'same':>6}{'export s':>10}{'MiB':>6}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in SHIPPED:
            r = results[kind] = time_model(kind, images, warmup, args.threads, Path(folder))
            print(f"{kind:<14}{r['torch_ms']:>12.1f}{r['ort_ms']:>16.1f}{r['ort_ms'] / r['torch_ms']:>7.2f}x"
                  f"{'yes' if r['same'] else 'NO':>6}{r['export_s']:>10.1f}{r['mb']:>6.1f}")
    return results


if __name__ == "__main__":
    main()
