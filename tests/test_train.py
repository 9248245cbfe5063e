import math

import pytest
import torch
from torch import nn

from fpnbook import train as T


class ToyDetector(nn.Module):
    """The smallest model with torchvision's detection interface: regress each image's mean box."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
        self.blow_up_at = None
        self.calls = 0

    def forward(self, images, targets=None):
        pred = self.net(torch.stack(images))
        if targets is None:
            return [{"boxes": p[None].abs(), "labels": torch.ones(1, dtype=torch.int64), "scores": torch.ones(1)} for p in pred]
        self.calls += 1
        goal = torch.stack([t["boxes"].float().mean(0) for t in targets]) / 32
        loss = ((pred - goal) ** 2).mean()
        if self.blow_up_at is not None and self.calls >= self.blow_up_at:
            loss = loss * float("nan")
        return {"loss_box": loss}


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=10, random_flip=True):
        self.random_flip = random_flip
        g = torch.Generator().manual_seed(0)
        self.images = [torch.rand(3, 16, 16, generator=g) for _ in range(n)]
        self.boxes = [torch.rand(2, 4, generator=g) * 32 for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        flip = self.random_flip and torch.rand(1).item() < 0.5  # drawn from torch's global RNG
        image = self.images[i].flip(-1) if flip else self.images[i]
        return image, {"boxes": self.boxes[i], "labels": torch.ones(2, dtype=torch.int64)}


def config(tmp_path, **kw):
    base = dict(iterations=12, batch_size=3, lr=0.05, warmup_iters=3, log_every=1, progress=False,
                device="cpu", out_dir=str(tmp_path))
    return T.TrainConfig(**{**base, **kw})


def test_learning_rate_schedule():
    c = T.TrainConfig(iterations=90, warmup_iters=10, warmup_factor=0.1, milestones=(60, 80))
    assert T.learning_rate_factor(0, c) == pytest.approx(0.1)
    assert T.learning_rate_factor(5, c) == pytest.approx(0.55)
    assert T.learning_rate_factor(10, c) == 1.0
    assert T.learning_rate_factor(60, c) == pytest.approx(0.1)
    assert T.learning_rate_factor(85, c) == pytest.approx(0.01)
    assert T.TrainConfig(iterations=90).milestones == (60, 80)


def test_batches_are_a_function_of_seed_and_step():
    seen = [i for step in range(4) for i in T.batch_indices(step, 5, 10, seed=1)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert T.batch_indices(3, 5, 10, seed=1) == T.batch_indices(3, 5, 10, seed=1)
    assert T.batch_indices(0, 5, 10, seed=1) != T.batch_indices(0, 5, 10, seed=2)


def test_ranks_split_the_global_batch():
    whole = list(T.StepBatchSampler(10, 4, 0, 0, 3))
    parts = [list(T.StepBatchSampler(10, 2, 0, 0, 3, rank=r, world_size=2)) for r in range(2)]
    for step in range(3):
        assert sorted(parts[0][step] + parts[1][step]) == sorted(whole[step])


def test_training_reduces_loss_and_logs(tmp_path):
    torch.manual_seed(0)
    records = T.train(ToyDetector(), ToyDataset(), config(tmp_path, iterations=30))
    assert records[-1]["loss"] < records[0]["loss"]
    logged = T.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(1, 31))
    assert {"lr", "loss", "loss_box", "images_per_s"} <= logged[0].keys()
    assert (tmp_path / "last.pt").is_file()


def test_resume_reaches_the_same_weights(tmp_path):
    torch.manual_seed(0)
    straight = ToyDetector()
    T.train(straight, ToyDataset(), config(tmp_path / "a"))

    torch.manual_seed(0)
    interrupted = ToyDetector()
    interrupted.blow_up_at = 6  # the run dies during step 6, after the step-5 checkpoint
    with pytest.raises(FloatingPointError):
        T.train(interrupted, ToyDataset(), config(tmp_path / "c", checkpoint_every=5))
    resumed = ToyDetector()
    torch.manual_seed(123)  # resuming restores the RNG, whatever it was
    T.train(resumed, ToyDataset(), config(tmp_path / "c"), resume=tmp_path / "c" / "last.pt")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = ToyDetector()
    model.blow_up_at = 7
    with pytest.raises(FloatingPointError, match="non-finite loss at step 6.*last.pt"):
        T.train(model, ToyDataset(), config(tmp_path, checkpoint_every=5))
    state = T.load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        T.load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        T.load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not an fpnbook checkpoint"):
        T.load_checkpoint(foreign)


@pytest.mark.parametrize("bad", [dict(iterations=0), dict(batch_size=-1), dict(lr=float("nan")), dict(milestones=(5, 2))])
def test_bad_config(bad):
    with pytest.raises(ValueError, match="TrainConfig"):
        T.TrainConfig(**bad)
