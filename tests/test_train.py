import math

import pytest
import torch
from torch import nn

from fpnbook import checkpoint
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
    c = T.TrainConfig(iterations=90, schedule="step", warmup_iters=10, warmup_factor=0.1, milestones=(60, 80))
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


@pytest.mark.parametrize("recipe", [{}, dict(optimizer="sgd", schedule="step", ema_decay=None)],
                         ids=["adamw-cosine-ema", "sgd-step"])
def test_resume_reaches_the_same_weights(tmp_path, recipe):
    torch.manual_seed(0)
    straight = ToyDetector()
    T.train(straight, ToyDataset(), config(tmp_path / "a", **recipe))

    torch.manual_seed(0)
    interrupted = ToyDetector()
    interrupted.blow_up_at = 6  # the run dies during step 6, after the step-5 checkpoint
    with pytest.raises(FloatingPointError):
        T.train(interrupted, ToyDataset(), config(tmp_path / "c", checkpoint_every=5, **recipe))
    resumed = ToyDetector()
    torch.manual_seed(123)  # resuming restores the RNG, whatever it was
    T.train(resumed, ToyDataset(), config(tmp_path / "c", **recipe), resume=tmp_path / "c" / "last.pt")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)  # the EMA, which the model holds at the end
    raw_a, raw_b = (checkpoint.load_checkpoint(tmp_path / run / "last.pt") for run in ("a", "c"))
    for name in raw_a["model"]:
        torch.testing.assert_close(raw_a["model"][name], raw_b["model"][name])
    if recipe.get("ema_decay", 0.999):
        assert raw_a["ema"]["updates"] == raw_b["ema"]["updates"] == 12


def test_resumed_run_continues_the_training_clock(tmp_path):
    model = ToyDetector()
    model.blow_up_at = 6
    with pytest.raises(FloatingPointError):
        T.train(model, ToyDataset(), config(tmp_path, checkpoint_every=5, log_every=1))
    saved = checkpoint.load_checkpoint(tmp_path / "last.pt")["train_seconds"]
    logged = T.read_metrics(tmp_path / "metrics.jsonl")
    assert saved >= logged[4]["train_seconds"] > 0  # the step-5 checkpoint counts the steps before it
    records = T.train(ToyDetector(), ToyDataset(), config(tmp_path, log_every=1), resume=tmp_path / "last.pt")
    assert records[0]["step"] == 6 and records[0]["train_seconds"] >= saved


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = ToyDetector()
    model.blow_up_at = 7
    with pytest.raises(FloatingPointError, match="non-finite loss at step 6.*last.pt"):
        T.train(model, ToyDataset(), config(tmp_path, checkpoint_every=5))
    state = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("bad", [
    dict(iterations=0), dict(batch_size=-1), dict(lr=float("nan")), dict(milestones=(5, 2)),
    dict(optimizer="adam"), dict(schedule="linear"), dict(ema_decay=1.0), dict(ema_decay=0.0), dict(ema_decay=-0.5),
    dict(ema_decay=float("nan")), dict(warmup_factor=-0.1), dict(lr_decay=-1.0), dict(clip_grad_norm=-1.0),
    dict(weight_decay=-1e-4), dict(min_lr_factor=2.0), dict(iterations=True), dict(lr="0.01"),
])
def test_bad_config(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"TrainConfig.{name}"):
        T.TrainConfig(**bad)


def test_defaults_are_the_recipe():
    c = T.TrainConfig()
    assert (c.optimizer, c.schedule, c.lr, c.weight_decay, c.ema_decay) == ("adamw", "cosine", 1e-3, 0.05, 0.999)
    sgd = T.TrainConfig(optimizer="sgd")
    assert (sgd.lr, sgd.weight_decay) == (0.02, 1e-4)
    assert T.TrainConfig(optimizer="sgd", lr=0.1).lr == 0.1


def test_cosine_schedule():
    c = T.TrainConfig(iterations=110, warmup_iters=10, warmup_factor=0.1, min_lr_factor=0.01)
    factors = [T.learning_rate_factor(step, c) for step in range(110)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[10] == pytest.approx(1.0)
    assert factors[109] == pytest.approx(0.01)
    assert factors[60] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_no_weight_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = T.parameter_groups(model, 0.05)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    (everything,) = T.parameter_groups(model, 0.05, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6
    assert isinstance(T.make_optimizer(model, T.TrainConfig()), torch.optim.AdamW)
    assert isinstance(T.make_optimizer(model, T.TrainConfig(optimizer="sgd")), torch.optim.SGD)


def test_ema_follows_the_weights():
    model = nn.Linear(2, 1)
    ema = T.ModelEMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay warms up to min(0.9, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.module.weight, d * start + (1 - d) * model.weight.detach())
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.module.weight, model.weight.detach())
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_is_evaluated_and_exported(tmp_path):
    torch.manual_seed(0)
    model = ToyDetector()
    T.train(model, ToyDataset(), config(tmp_path, ema_decay=0.5))
    state = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert state["ema"]["updates"] == 12
    ema_weights = state["ema"]["module"]
    for name, value in model.state_dict().items():  # the model ends holding the EMA
        torch.testing.assert_close(value, ema_weights[name])
    assert any(not torch.equal(state["model"][k], ema_weights[k]) for k in ema_weights)
    exported = checkpoint.load_checkpoint(checkpoint.export_weights(tmp_path / "last.pt", tmp_path / "shipped.pt"))
    for name, value in ema_weights.items():
        torch.testing.assert_close(exported["model"][name], value)


def test_callback_can_stop_training(tmp_path):
    seen = []

    def stop_at_four(step, evaluated):
        seen.append((step, isinstance(evaluated, nn.Module)))
        return step == 4

    T.train(ToyDetector(), ToyDataset(), config(tmp_path), callback=stop_at_four)
    assert seen == [(1, True), (2, True), (3, True), (4, True)]
    assert checkpoint.load_checkpoint(tmp_path / "last.pt")["step"] == 4
