"""The command line the model benchmarks share (``retinanet.py``, ``train_throughput.py``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from fpnbook.train import resolve_device


def model_benchmark_args(description: str, repeats: int, quick_help: str, argv: list[str] | None = None,
                         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                         ) -> tuple[argparse.Namespace, torch.device]:
    """Parse ``--threads --device --size --batch --repeats --quick``, set torch's threads; return the args and device.

    ``add_arguments(parser)``, if given, adds a script's own options first.
    """
    parser = argparse.ArgumentParser(description=description)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=2, help="images per batch")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (best is kept)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)
