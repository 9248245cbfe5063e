"""One DDP step over 2 gloo processes equals one single-process step on the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fpnbook import checkpoint
from fpnbook import train as T
from test_train import ToyDataset, ToyDetector


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(out_dir):
    # No warmup and no clipping: the one step (AdamW, then the EMA update) sees only the averaged gradient.
    return T.TrainConfig(iterations=1, batch_size=2, lr=0.1, warmup_iters=0, clip_grad_norm=None,
                         log_every=0, progress=False, device="cpu", out_dir=out_dir)


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ToyDetector()
        T.train(model, ToyDataset(random_flip=False), config(out_dir))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_step_equals_single_process_step(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp = checkpoint.load_checkpoint(tmp_path / "ddp" / "last.pt")

    torch.manual_seed(0)
    model = ToyDetector()
    single = config(str(tmp_path / "single"))
    single.batch_size = 4  # the same global batch as 2 processes x 2 images
    T.train(model, ToyDataset(random_flip=False), single)
    alone = checkpoint.load_checkpoint(tmp_path / "single" / "last.pt")
    for name, value in alone["model"].items():  # the raw weights, then their EMA
        torch.testing.assert_close(value, ddp["model"][name], msg=name)
    for name, value in alone["ema"]["module"].items():
        torch.testing.assert_close(value, ddp["ema"]["module"][name], msg=f"EMA {name}")
