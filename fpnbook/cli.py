"""`python -m fpnbook VERB ...`: the book's command line.

    python -m fpnbook data --out DIR --train N --val M --size S --seed K
"""

from __future__ import annotations

import argparse
import sys
import time


def cmd_data(args: argparse.Namespace) -> int:
    from .data import generate_dataset

    start = time.perf_counter()
    written = generate_dataset(args.out, args.train, args.val, args.size, args.seed, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    count = args.train + args.val
    for split, path in written.items():
        print(f"{split}: {path}")
    print(f"{count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} images/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpnbook", description="The fpnbook command line.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="generate a synthetic COCO-format shapes dataset")
    data.add_argument("--out", required=True, help="output folder: DIR/train/, DIR/train.json, DIR/val/, DIR/val.json")
    data.add_argument("--train", type=int, default=0, help="training images (0 skips the split)")
    data.add_argument("--val", type=int, default=64, help="validation images")
    data.add_argument("--size", type=int, default=256, help="image side in pixels (32..2048)")
    data.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    data.add_argument("--overwrite", action="store_true", help="replace existing splits in --out")
    data.set_defaults(run=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"fpnbook {args.verb}: error: {error}", file=sys.stderr)
        return 2
