"""Time fpnbook's RetinaNet against torchvision's, same backbone, anchors, head weights and images.

    python benchmarks/retinanet.py [--threads 2] [--device auto] [--size 256] [--batch 2] [--quick]

Both models get an identical copy of one fpnbook BackboneWithFPN (tiny ResNet, P3..P7),
the same anchors and the same head weights (torchvision's head has one extra,
never-firing background channel: its ``num_classes`` counts background). torchvision's
transform is set to the image size and our mean/std, so it does not resize.
Rows: a training step (forward, backward, SGD step); inference of the freshly
initialised model (no score passes 0.05, so this is backbone + head); and inference with
the classifier bias at 0 ("dense scores": every (anchor, class) scores ~0.5, so top-k,
decoding and NMS run at full load). Warm-up first, then the best of N, the two
models alternating. Prints images/second and the ratio fpnbook / torchvision.
"""

from __future__ import annotations

import torch

from fpnbook.interop import retinanet_head_state_dict, to_torchvision
from fpnbook.models import retinanet_tiny
from fpnbook.retinanet import RetinaNet
from common import model_benchmark_args
from fpnbook.timing import best_times

NUM_CLASSES = 8


def build_models(num_classes: int, image_size: int, device: torch.device) -> tuple[RetinaNet, torch.nn.Module]:
    ours = retinanet_tiny(num_classes)
    theirs = to_torchvision(ours, image_size)
    return ours.to(device), theirs.to(device)


def make_batch(batch: int, image_size: int, num_classes: int, device: torch.device) -> tuple[list, list]:
    """Random images and 1..8 random boxes (8 px to half the image) per image."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(batch):
        n = int(torch.randint(1, 9, (1,), generator=g))
        size = 8 + torch.rand(n, 2, generator=g) * (image_size / 2 - 8)
        corner = torch.rand(n, 2, generator=g) * (image_size - size)
        boxes = torch.cat([corner, corner + size], dim=1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=g)
        images.append(torch.rand(3, image_size, image_size, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def train_step(model, optimizer, images, targets) -> None:
    losses = model(images, targets)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


@torch.no_grad()
def infer(model, images) -> None:
    model(images)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args, device = model_benchmark_args(__doc__.splitlines()[0], 10, "smoke run: 128 px, 1 warm-up, 2 repeats", argv)
    size, warmup, repeats = (128, 1, 2) if args.quick else (args.size, 3, args.repeats)
    torch.manual_seed(0)
    ours, theirs = build_models(NUM_CLASSES, size, device)
    images, targets = make_batch(args.batch, size, NUM_CLASSES, device)
    print(f"RetinaNet (tiny ResNet + FPN P3-P7, {NUM_CLASSES} classes), {args.batch} x {size}px, "
          f"device {device}, {torch.get_num_threads()} threads, best of {repeats}")
    ours_sgd = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    theirs_sgd = torch.optim.SGD(theirs.parameters(), lr=1e-3, momentum=0.9)

    ratios = {}
    print(f"{'':<26}{'fpnbook img/s':>15}{'torchvision img/s':>19}{'ratio':>8}")
    for row in ("train step", "inference", "inference (dense scores)"):
        if row == "train step":
            ours.train(), theirs.train()
            fns = {"ours": lambda: train_step(ours, ours_sgd, images, targets),
                   "theirs": lambda: train_step(theirs, theirs_sgd, images, targets)}
        else:
            ours.eval(), theirs.eval()
            if row.startswith("inference (dense"):
                with torch.no_grad():
                    ours.head.cls_logits.bias.zero_()
                theirs.head.load_state_dict(retinanet_head_state_dict(ours.head))
            fns = {"ours": lambda: infer(ours, images), "theirs": lambda: infer(theirs, images)}
        best = best_times(fns, repeats, device, warmup)
        ours_ips, theirs_ips = args.batch / best["ours"], args.batch / best["theirs"]
        ratios[row] = ours_ips / theirs_ips
        print(f"{row:<26}{ours_ips:>15.1f}{theirs_ips:>19.1f}{ratios[row]:>7.2f}x")
    return ratios


if __name__ == "__main__":
    main()
