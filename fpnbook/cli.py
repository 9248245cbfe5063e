"""`python -m fpnbook VERB ...`: the book's command line. Each verb has --help.

    python -m fpnbook data    --out DIR --train N --val M --size S --seed K
    python -m fpnbook pretrain --out runs/backbone   (the backbone every detector can start from)
    python -m fpnbook train   --model mask_rcnn --out runs/mrcnn [--init checkpoints/backbone.pt] [--train-ann F ...]
    python -m fpnbook eval    --checkpoint runs/mrcnn/last.pt [--ann F --images D] [--analyse DIR]
    python -m fpnbook predict --checkpoint runs/mrcnn/last.pt --images D --out DIR
    python -m fpnbook bench   --model retinanet --size 256 --batch-size 2
    python -m fpnbook export  --checkpoint checkpoints/mask_rcnn.pt --onnx mask_rcnn.onnx [--image-size 256 256]

Several GPUs: ``torchrun --nproc_per_node=N -m fpnbook train ...`` (DDP; each process
takes its share of every global batch of ``--batch-size`` x N images).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from pathlib import Path

import torch


def _int_at_least(low: int):
    """An argparse type: an int >= ``low``; argparse's message then names the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"int >= {low}"
    return parse


def _float_in(low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite float in ``[low, high]`` (``(low, ...`` with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        ok = value == value and abs(value) != float("inf") and (value > low if low_open else value >= low)
        if not ok or (high is not None and value > high):
            where = f"{'>' if low_open else '>='} {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be a finite number {where}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


POSITIVE, NON_NEGATIVE, IMAGE_SIZE = _int_at_least(1), _int_at_least(0), _int_at_least(32)


class UsageError(Exception):
    """A bad command line: :func:`main` prints it as one line and returns 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option, not a usage block and a SystemExit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def add_dataset_args(parser: argparse.ArgumentParser, prefix: str = "", what: str = "") -> None:
    dash = f"--{prefix}-" if prefix else "--"
    parser.add_argument(f"{dash}ann", type=Path, default=None, help=f"{what}COCO annotations JSON (default: the committed val split)")
    parser.add_argument(f"{dash}images", type=Path, default=None, help=f"{what}image folder of that JSON")


# ---------------------------------------------------------------- verbs


def parse_labels(text: str | None, flag: str = "--mask-classes") -> tuple[int, ...] | None:
    """``"1,3,6"`` -> ``(1, 3, 6)``; None or empty -> None. ValueError naming ``flag`` otherwise."""
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integer labels such as 1,3,6, got {text!r}") from None


def cmd_data(args: argparse.Namespace) -> int:
    if args.from_labelme is not None:
        from .labelme import labelme_to_coco

        out = labelme_to_coco(args.from_labelme, args.out, overwrite=args.overwrite)
        print(f"wrote {out}; train with --train-ann {out} --train-images {args.from_labelme}")
        return 0
    from .shapes import generate_dataset

    start = time.perf_counter()
    written = generate_dataset(args.out, args.train, args.val, args.size, args.seed, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    count = args.train + args.val
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"{count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} images/s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from torchvision.transforms import v2

    from .shapes import ensure_split
    from .files import atomic_write_text
    from .checkpoint import build_from_backbone, check_run_folder
    from .data import open_dataset
    from .models import TORCHVISION_LAYOUT, ModelConfig, build
    from .train import FINETUNE_LR, TrainConfig, evaluate_model, setup_distributed, train

    rank, device = setup_distributed()
    if args.device != "auto":
        device = args.device
    # Every argument is checked before any work is done or any file is touched.
    mask_classes = parse_labels(args.mask_classes)
    layout = {}
    if args.init_torchvision is not None:
        if args.init is not None:
            raise ValueError("give --init (a book backbone) or --init-torchvision (torchvision's weights), not both")
        if args.model == "mask_x_rcnn":
            raise ValueError("--init-torchvision starts retinanet, faster_rcnn or mask_rcnn, not mask_x_rcnn")
        if (args.backbone, args.fpn_channels) != ("tiny", 64):
            raise ValueError("--init-torchvision sets torchvision's layout (ResNet-50, 256-channel FPN): "
                             "leave out --backbone and --fpn-channels")
        layout = dict(layout="torchvision", **TORCHVISION_LAYOUT)
        if args.lr is None:
            args.lr = FINETUNE_LR[args.optimizer]
    model_config = ModelConfig(kind=args.model, num_classes=args.num_classes,
                               **(layout or dict(backbone=args.backbone, fpn_channels=args.fpn_channels)),
                               mask_classes=mask_classes, rpn_pre_nms_top_n_train=args.rpn_pre_nms_top_n,
                               rpn_post_nms_top_n_train=args.rpn_post_nms_top_n,
                               box_batch_size_per_image=args.rois_per_image)
    config = TrainConfig(iterations=args.iterations, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         weight_decay=args.weight_decay, decay_norm_and_bias=args.decay_norm_and_bias,
                         schedule=args.schedule, seed=args.seed,
                         ema_decay=args.ema_decay or None, warmup_iters=min(args.warmup, args.iterations), device=device,
                         num_workers=args.workers, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         out_dir=str(args.out), log_every=args.log_every)
    for flag, path in (("--resume", args.resume), ("--init", args.init), ("--init-torchvision", args.init_torchvision)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} file not found: {path}")
    check_run_folder(args.out, args.resume, args.overwrite)
    flip = v2.RandomHorizontalFlip(0.5)
    if args.train_ann is None and args.train_images is None:
        args.train_images, args.train_ann = ensure_split("train", args.synthetic, image_size=args.size,
                                                         seed=args.data_seed, progress=rank == 0)
    train_set = open_dataset(args.train_ann, args.train_images, transforms=flip,
                             mask_classes=set(mask_classes) if mask_classes else None)
    if train_set.num_classes != model_config.num_classes:
        raise ValueError(f"--num-classes is {model_config.num_classes} but {args.train_ann} has {train_set.num_classes} categories")
    val_set = open_dataset(args.val_ann, args.val_images)
    torch.manual_seed(args.seed)
    if args.init is None:
        model = build(model_config)
    else:
        model, parts = build_from_backbone(model_config, args.init)
        if rank == 0:
            print(f"initialised the {' and '.join(parts)} from {args.init}", file=sys.stderr)
    if args.init_torchvision is not None:
        from .interop import init_from_torchvision
        fresh = init_from_torchvision(model, args.init_torchvision, args.model)
        if rank == 0:
            print(f"initialised from torchvision's weights in {args.init_torchvision}; started afresh for "
                  f"--num-classes {args.num_classes}: {', '.join(fresh) or 'nothing'}", file=sys.stderr)
    start = time.perf_counter()
    records = train(model, train_set, config, val_dataset=val_set if rank == 0 else None, resume=args.resume,
                    model_config=model_config.to_dict(), overwrite=args.overwrite)
    if rank == 0:
        results = records[-1]["eval"] if records and "eval" in records[-1] else evaluate_model(model, val_set)
        summary = {"command": "python -m fpnbook " + " ".join(args.argv), "seed": args.seed,
                   "train_seconds": round(time.perf_counter() - start, 1), "val": results}
        atomic_write_text(json.dumps(summary, indent=1) + "\n", Path(args.out) / "summary.json")
        print_results(results)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .shapes import SHAPE_CLASSES
    from .pretrain import SemanticFromInstances, SemanticPretrainer, ShapesSemantic, export_backbone
    from .train import TrainConfig, train

    out = Path(args.out) / "backbone.pt"
    if out.exists() and not args.overwrite and args.resume is None:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    mask_classes = parse_labels(args.mask_classes)
    if args.train_ann is not None or args.train_images is not None:
        from torchvision.transforms import v2

        instances = open_dataset(args.train_ann, args.train_images, transforms=v2.RandomHorizontalFlip(0.5),
                                 mask_classes=set(mask_classes) if mask_classes else None)
        images, num_classes = SemanticFromInstances(instances), instances.num_classes
    else:
        # Fresh images: the run sees iterations x batch-size generated images, each once.
        images = ShapesSemantic(args.iterations * args.batch_size, image_size=args.size, seed=args.data_seed,
                                mask_classes=mask_classes)
        num_classes = len(SHAPE_CLASSES)
    torch.manual_seed(args.seed)
    model = SemanticPretrainer(backbone=args.backbone, fpn_channels=args.fpn_channels, objects=not args.no_objects,
                               num_classes=num_classes)
    config = TrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup_iters=min(args.warmup, args.iterations), ema_decay=None, device=args.device,
                         num_workers=args.workers, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                         out_dir=str(args.out))
    model_config = {**model.config.to_dict(), "kind": "semantic_pretrainer", "mask_classes": mask_classes}
    train(model, images, config, resume=args.resume, model_config=model_config, overwrite=args.overwrite)
    command = re.sub(r" --(resume \S+|overwrite)", "", "python -m fpnbook " + " ".join(args.argv))
    state = export_backbone(Path(args.out) / "last.pt", out, command=command, images_seen=args.iterations * args.batch_size)
    print(f"wrote {out} ({state['train_seconds']:.0f} s of training)")
    return 0


def print_results(results: dict) -> None:
    from .evaluate import format_table

    print(format_table(results))


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import open_dataset
    from .train import evaluate_model

    if args.overwrite and args.analyse is None:
        raise ValueError("--overwrite replaces the files of --analyse DIR; give --analyse too")
    if args.analyse is not None:  # refused before the model is loaded, not after the predictions
        from .analysis import check_out_dir

        check_out_dir(args.analyse, overwrite=args.overwrite)
    model, _ = load_model(args.checkpoint)
    dataset = open_dataset(args.ann, args.images)
    if args.analyse is None:
        print_results(evaluate_model(model, dataset, batch_size=args.batch_size, device=args.device))
        return 0
    from .analysis import analyse, format_category_table, format_errors, write_analysis
    from .evaluate import to_coco_results
    from .train import predict

    outputs = predict(model, dataset, args.batch_size, args.device)
    results = to_coco_results(outputs, dataset.image_ids, dataset.label_to_cat_id)
    if not results:
        raise ValueError(f"{args.checkpoint} detects nothing on the {len(dataset)} images: nothing to analyse")
    analyses = analyse(dataset.coco, results, ("bbox", "segm") if "segmentation" in results[0] else ("bbox",))
    print_results({iou_type: analysis.stats for iou_type, analysis in analyses.items()})
    print(f"\n{format_category_table(analyses)}\n\n{format_errors(analyses)}")
    written = write_analysis(analyses, args.analyse, overwrite=args.overwrite,
                             command="python -m fpnbook " + " ".join(args.argv))
    print(f"\nwrote {', '.join(path.name for path in written)} to {args.analyse}")
    return 0


def list_images(path: Path) -> list[Path]:
    suffixes = {".png", ".jpg", ".jpeg", ".bmp"}
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no image or image folder at {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"no .png/.jpg images in {path}")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    from .checkpoint import load_model
    from .evaluate import to_coco_results
    from .files import atomic_write_text
    from .viz import draw_detections

    model, state = load_model(args.checkpoint)
    files = list_images(args.images)
    targets = [args.out / f"{path.stem}_pred.png" for path in files] + [args.out / "results.json"]
    taken = [t for t in targets if t.exists()]
    if taken and not args.overwrite:  # refuse before any work, not halfway through the folder
        raise FileExistsError(f"{taken[0]} exists ({len(taken)} of the outputs do); pass --overwrite to replace them")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with torch.no_grad():
        for image_id, path in enumerate(files, start=1):
            try:
                with Image.open(path) as pil:
                    image = pil_to_tensor(pil.convert("RGB")).float() / 255
            except OSError as error:  # PIL's UnidentifiedImageError and truncated files
                raise ValueError(f"{path} is not a readable image ({error})") from None
            output = {k: v.cpu() for k, v in model([image])[0].items()}
            keep = output["scores"] >= args.score_threshold
            output = {k: v[keep] for k, v in output.items()}
            drawn = draw_detections(image, output, score_threshold=args.score_threshold)
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(args.out / f"{path.stem}_pred.png")
            for r in to_coco_results([output], [image_id]):
                results.append({**r, "file_name": path.name})
    atomic_write_text(json.dumps(results) + "\n", args.out / "results.json")
    print(f"{len(files)} images, {len(results)} detections above {args.score_threshold}: {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .models import ModelConfig, build
    from .timing import best_times
    from .train import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    from .shapes import SPLIT_A

    mask_classes = SPLIT_A if args.model == "mask_x_rcnn" else None
    model = build(ModelConfig(kind=args.model, mask_classes=mask_classes)).to(device)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, args.size, args.size, generator=generator).to(device) for _ in range(args.batch_size)]
    box = torch.tensor([[0.2, 0.2, 0.6, 0.7]]) * args.size
    masks = torch.zeros(1, args.size, args.size, dtype=torch.uint8)
    masks[:, int(box[0, 1]):int(box[0, 3]), int(box[0, 0]):int(box[0, 2])] = 1
    targets = [{"boxes": box.to(device), "labels": torch.tensor([1], device=device), "masks": masks.to(device)}
               for _ in images]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step():
        model.train()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer():
        model.eval()
        model(images)

    best = best_times({"train": train_step, "inference": infer}, args.repeats, device)
    for name, seconds in best.items():
        print(f"{args.model} {name}: {args.batch_size / seconds:.1f} images/s "
              f"({args.size}px, batch {args.batch_size}, {device}, {args.threads} threads)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import importlib.util

    from .checkpoint import load_checkpoint, load_model
    from .export import EXPORT_KINDS, check_image_size, export_onnx

    # Every option is checked before the model is built or anything is written.
    image_size = check_image_size(tuple(args.image_size), "--image-size")
    if args.onnx.is_dir():
        raise ValueError(f"--onnx {args.onnx} is a directory; give the .onnx file to write")
    if args.onnx.exists() and not args.overwrite:
        raise FileExistsError(f"{args.onnx} exists; pass --overwrite to replace it")
    kind = (load_checkpoint(args.checkpoint).get("model_config") or {}).get("kind")
    if kind not in EXPORT_KINDS:
        raise ValueError(f"--checkpoint {args.checkpoint} holds a {kind!r} model; ONNX export takes "
                         f"{', '.join(EXPORT_KINDS)} checkpoints (written by `fpnbook train`)")
    if importlib.util.find_spec("onnx") is None:
        raise ValueError("ONNX export needs the onnx package: pip install -e '.[export]' (onnx, onnxruntime)")
    model, _ = load_model(args.checkpoint)
    out = export_onnx(model, args.onnx, image_size, overwrite=args.overwrite)
    outputs = "boxes, labels, scores" + (", masks" if kind in ("mask_rcnn", "mask_x_rcnn") else "")
    print(f"wrote {out}: {kind}, input image float32 [3, {image_size[0]}, {image_size[1]}] in 0..1; outputs {outputs}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .models import BACKBONES, KINDS
    from .train import OPTIMIZERS, SCHEDULES

    parser = Parser(prog="fpnbook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="generate a synthetic COCO-format shapes dataset, or convert labelme files")
    data.add_argument("--out", type=Path, required=True, help="output folder (DIR/train/, DIR/train.json, DIR/val/, "
                      "DIR/val.json); with --from-labelme, the COCO JSON file to write")
    data.add_argument("--train", type=NON_NEGATIVE, default=0, help="training images (0 skips the split)")
    data.add_argument("--val", type=NON_NEGATIVE, default=48, help="validation images")
    data.add_argument("--size", type=IMAGE_SIZE, default=256, help="image side in pixels (32..2048)")
    data.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed; the same seed writes identical files")
    data.add_argument("--from-labelme", type=Path, default=None, metavar="DIR",
                      help="convert the labelme *.json files in DIR into one COCO file instead")
    data.add_argument("--overwrite", action="store_true", help="replace existing output")
    data.set_defaults(run=cmd_data)

    tr = verbs.add_parser("train", help="train a detector; writes OUT/metrics.jsonl, OUT/last.pt, OUT/summary.json")
    tr.add_argument("--model", choices=KINDS, default="mask_rcnn")
    tr.add_argument("--out", type=Path, required=True, help="run folder")
    tr.add_argument("--num-classes", type=POSITIVE, default=8, help="object classes in the data (background not counted)")
    tr.add_argument("--backbone", choices=BACKBONES, default="tiny")
    tr.add_argument("--fpn-channels", type=POSITIVE, default=64)
    tr.add_argument("--mask-classes", default=None, help="mask_x_rcnn: comma-separated labels that keep their masks")
    add_dataset_args(tr, "train", "training ")
    add_dataset_args(tr, "val", "validation ")
    tr.add_argument("--synthetic", type=POSITIVE, default=2000, help="without --train-ann: images of a generated, cached split")
    tr.add_argument("--size", type=IMAGE_SIZE, default=256, help="image size of the generated split")
    tr.add_argument("--data-seed", type=NON_NEGATIVE, default=0, help="seed of the generated split")
    tr.add_argument("--iterations", type=POSITIVE, default=3000)
    tr.add_argument("--batch-size", type=POSITIVE, default=4, help="images per step per process")
    tr.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    tr.add_argument("--lr", type=_float_in(0, low_open=True), default=None, help="peak learning rate (default: 1e-3 for adamw, 0.02 for sgd)")
    tr.add_argument("--weight-decay", type=_float_in(0), default=None, help="on weights, not norms or biases "
                    "(default: 0.05 for adamw, 1e-4 for sgd)")
    tr.add_argument("--decay-norm-and-bias", action="store_true", help="weight-decay norm layers and biases too "
                    "(the first edition's recipe did)")
    tr.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="after warmup: cosine to 0, "
                    "or step (x0.1 at 2/3 and 8/9 of the iterations)")
    tr.add_argument("--ema-decay", type=_float_in(0, 1), default=0.999, help="evaluate and export an EMA of the weights "
                    "with this decay (0: no EMA)")
    tr.add_argument("--warmup", type=NON_NEGATIVE, default=200)
    tr.add_argument("--rpn-pre-nms-top-n", type=POSITIVE, default=600, help="two-stage models, training: proposals "
                    "kept per level before NMS")
    tr.add_argument("--rpn-post-nms-top-n", type=POSITIVE, default=300, help="two-stage models, training: proposals "
                    "kept per image after NMS")
    tr.add_argument("--rois-per-image", type=POSITIVE, default=128, help="two-stage models: RoIs sampled per image "
                    "for the box and mask heads")
    tr.add_argument("--seed", type=NON_NEGATIVE, default=0)
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    tr.add_argument("--workers", type=NON_NEGATIVE, default=2, help="DataLoader worker processes")
    tr.add_argument("--log-every", type=POSITIVE, default=20)
    tr.add_argument("--eval-every", type=NON_NEGATIVE, default=0, help="COCO evaluation every N steps (0: at the end)")
    tr.add_argument("--checkpoint-every", type=NON_NEGATIVE, default=500)
    tr.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="start afresh in an OUT that already holds a run")
    tr.add_argument("--init", type=Path, default=None, help="start the body (and FPN) from a pretrained backbone "
                    "file, e.g. checkpoints/backbone.pt (python -m fpnbook pretrain)")
    tr.add_argument("--init-torchvision", type=Path, default=None, metavar="FILE",
                    help="fine-tune torchvision's published ResNet-50 FPN weights of --model (a state dict file; "
                         "README: 'Starting from COCO weights'): the torchvision layout, new class-specific "
                         "predictors for --num-classes, stem and layer1 frozen, --lr 1e-4 (adamw) / 0.005 (sgd)")
    tr.set_defaults(run=cmd_train)

    pt = verbs.add_parser("pretrain", help="pretrain a backbone (body + FPN) by segmenting freshly generated shapes")
    pt.add_argument("--out", type=Path, required=True, help="run folder; the result is OUT/backbone.pt")
    pt.add_argument("--train-ann", type=Path, default=None, help="pretrain on your own COCO data (JSON) instead of "
                    "generated shapes")
    pt.add_argument("--train-images", type=Path, default=None, help="image folder of --train-ann")
    pt.add_argument("--backbone", choices=BACKBONES, default="tiny")
    pt.add_argument("--fpn-channels", type=POSITIVE, default=64)
    pt.add_argument("--size", type=IMAGE_SIZE, default=256, help="side of the generated images")
    pt.add_argument("--data-seed", type=NON_NEGATIVE, default=0, help="seed of the generated images")
    pt.add_argument("--mask-classes", default=None, help="for a Mask^X R-CNN backbone: comma-separated labels whose "
                    "shapes the labels may show; other objects are ignored over their boxes")
    pt.add_argument("--no-objects", action="store_true", help="per-pixel labels only: no per-object branch "
                    "(and so no box head for the detectors)")
    pt.add_argument("--iterations", type=POSITIVE, default=1000)
    pt.add_argument("--batch-size", type=POSITIVE, default=8)
    pt.add_argument("--lr", type=_float_in(0, low_open=True), default=2e-3, help="peak AdamW learning rate (warmup, then cosine)")
    pt.add_argument("--warmup", type=NON_NEGATIVE, default=100)
    pt.add_argument("--seed", type=NON_NEGATIVE, default=0)
    pt.add_argument("--device", default="auto")
    pt.add_argument("--workers", type=NON_NEGATIVE, default=0, help="DataLoader worker processes (they render the images)")
    pt.add_argument("--log-every", type=POSITIVE, default=20)
    pt.add_argument("--checkpoint-every", type=NON_NEGATIVE, default=250)
    pt.add_argument("--resume", type=Path, default=None, help="continue from OUT/last.pt")
    pt.add_argument("--overwrite", action="store_true", help="replace an existing OUT/backbone.pt")
    pt.set_defaults(run=cmd_pretrain)

    ev = verbs.add_parser("eval", help="print the COCO AP table of a checkpoint (--analyse: where its AP is lost)")
    ev.add_argument("--checkpoint", type=Path, required=True)
    add_dataset_args(ev)
    ev.add_argument("--batch-size", type=POSITIVE, default=4)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--analyse", "--analyze", type=Path, default=None, metavar="DIR",
                    help="also print AP per category and TIDE's error breakdown, and write their figures (PNG: "
                         "AP per category, PR curves, errors, confusion matrix) and analysis.json into DIR")
    ev.add_argument("--overwrite", action="store_true", help="with --analyse: replace the files it finds in DIR")
    ev.set_defaults(run=cmd_eval)

    pr = verbs.add_parser("predict", help="draw detections on images and write COCO-format results.json")
    pr.add_argument("--checkpoint", type=Path, required=True)
    pr.add_argument("--images", type=Path, required=True, help="an image file or a folder of .png/.jpg images")
    pr.add_argument("--out", type=Path, required=True, help="folder for NAME_pred.png and results.json")
    pr.add_argument("--score-threshold", type=_float_in(0, 1), default=0.5)
    pr.add_argument("--overwrite", action="store_true", help="replace existing NAME_pred.png files and results.json")
    pr.set_defaults(run=cmd_predict)

    be = verbs.add_parser("bench", help="images per second of a model's training step and inference")
    be.add_argument("--model", choices=KINDS, default="mask_rcnn")
    be.add_argument("--size", type=IMAGE_SIZE, default=256)
    be.add_argument("--batch-size", type=POSITIVE, default=2)
    be.add_argument("--threads", type=POSITIVE, default=2)
    be.add_argument("--repeats", type=POSITIVE, default=3)
    be.add_argument("--device", default="auto")
    be.set_defaults(run=cmd_bench)

    ex = verbs.add_parser("export", help="write a checkpoint's detector to ONNX, post-processing included "
                          "(one fixed-size image in; boxes, labels, scores and masks out)")
    ex.add_argument("--checkpoint", type=Path, required=True, help="a retinanet, faster_rcnn, mask_rcnn or "
                    "mask_x_rcnn checkpoint (e.g. checkpoints/mask_rcnn.pt)")
    ex.add_argument("--onnx", type=Path, required=True, help="the .onnx file to write")
    ex.add_argument("--image-size", type=IMAGE_SIZE, nargs=2, default=[256, 256], metavar=("H", "W"),
                    help="the one input size the graph takes (default 256 256)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    ex.set_defaults(run=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    args.argv = argv
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if _main_thread() else None
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as error:  # OSError: FileNotFoundError, FileExistsError, ...
        print(f"fpnbook {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM: the verbs clean up their temporary files on the way out
        print(f"fpnbook {args.verb}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
