import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from fpnbook.losses import cross_entropy_from_pt, focal_loss_from_pt, prior_bias, sigmoid_focal_loss

# Logits from everyday values to far beyond where float32 sigmoid rounds to 0 or 1.
logit = st.one_of(st.floats(-5, 5), st.floats(-100, 100), st.sampled_from([-100.0, -30.0, 0.0, 30.0, 100.0]))
alphas = st.one_of(st.floats(0, 1), st.just(-1.0))
gammas = st.one_of(st.floats(0, 5), st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]))


@st.composite
def logits_and_targets(draw, soft=False):
    n = draw(st.integers(1, 40))
    x = torch.tensor(draw(st.lists(logit, min_size=n, max_size=n)))
    target = st.floats(0, 1) if soft else st.sampled_from([0.0, 1.0])
    t = torch.tensor(draw(st.lists(target, min_size=n, max_size=n)))
    return x, t


@settings(max_examples=100, deadline=None)
@given(data=logits_and_targets(), alpha=alphas, gamma=gammas, reduction=st.sampled_from(["none", "mean", "sum"]))
def test_equals_torchvision(data, alpha, gamma, reduction):
    x, t = data
    ours = sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    theirs = torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    assert ours.shape == theirs.shape
    assert torch.isfinite(ours).all()
    # torchvision computes 1 - p_t as 1 - sigmoid(x), which loses digits where p_t ~ 1;
    # there both losses are ~0, hence the absolute tolerance.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * max(1, x.numel()))


@settings(max_examples=50, deadline=None)
@given(data=logits_and_targets(soft=True), alpha=alphas, gamma=gammas)
def test_soft_targets_equal_torchvision_in_float64(data, alpha, gamma):
    x, t = (v.double() for v in data)
    torch.testing.assert_close(
        sigmoid_focal_loss(x, t, alpha, gamma), torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma), rtol=1e-9, atol=1e-12
    )


@settings(max_examples=50, deadline=None)
@given(data=logits_and_targets(), alpha=alphas, gamma=gammas)
def test_gradient_is_finite_at_extreme_logits(data, alpha, gamma):
    x, t = data
    x.requires_grad_(True)
    sigmoid_focal_loss(x, t, alpha, gamma, "sum").backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, 0.75), (0.0, -1.0), (5.0, 0.5)])
def test_gradcheck(gamma, alpha):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = (torch.rand(6, 5, generator=g, dtype=torch.float64) > 0.7).double()
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, t, alpha, gamma), (x,))
    soft = torch.rand(6, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma, "mean"), (x, soft.requires_grad_()))


def test_gamma_zero_without_alpha_is_binary_cross_entropy():
    x = torch.linspace(-100, 100, 101)
    t = (torch.arange(101) % 3 == 0).float()
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            sigmoid_focal_loss(x, t, alpha=-1, gamma=0, reduction=reduction),
            F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
        )
    # Any negative alpha turns the weighting off; alpha itself weights positives, 1 - alpha negatives.
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=-0.5, gamma=0), sigmoid_focal_loss(x, t, alpha=-1, gamma=0))
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.25, gamma=0), torch.where(t == 1, 0.25, 0.75) * bce)


def test_easy_examples_are_down_weighted():
    # p_t = 0.9: FL with gamma 2 is 100x smaller than CE; p_t ~ 0.968: ~1000x (the paper's Sec. 3.2).
    x = torch.tensor([math.log(9.0)])
    ratio = sigmoid_focal_loss(x, torch.ones(1), alpha=-1, gamma=2) / sigmoid_focal_loss(x, torch.ones(1), alpha=-1, gamma=0)
    torch.testing.assert_close(ratio, torch.tensor([0.01]))


def test_probability_formulas_match_the_logit_version():
    p_t = torch.tensor([0.01, 0.3, 0.5, 0.9, 0.999])
    torch.testing.assert_close(cross_entropy_from_pt(p_t), -torch.log(p_t))
    x = torch.log(p_t / (1 - p_t))  # logits whose sigmoid is p_t, with target 1
    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        torch.testing.assert_close(focal_loss_from_pt(p_t, gamma), sigmoid_focal_loss(x, torch.ones(5), -1, gamma))
        torch.testing.assert_close(
            focal_loss_from_pt(p_t, gamma, alpha=0.25), sigmoid_focal_loss(x, torch.ones(5), 0.25, gamma)
        )
    assert focal_loss_from_pt(0.5, 0.0).item() == pytest.approx(math.log(2))


def test_prior_bias():
    assert prior_bias(0.01) == pytest.approx(-math.log(99))
    for pi in (0.01, 0.1, 0.5, 0.9):
        assert torch.sigmoid(torch.tensor(prior_bias(pi))).item() == pytest.approx(pi)
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="pi"):
            prior_bias(bad)


def test_bad_input_raises():
    x, t = torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, t, reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        sigmoid_focal_loss(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape"):
        sigmoid_focal_loss(x, torch.zeros(4))  # no silent broadcasting
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, t, gamma=-1)
    with pytest.raises(TypeError, match="targets"):
        sigmoid_focal_loss(x, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="inputs"):
        sigmoid_focal_loss([0.0, 1.0], t)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss_from_pt(0.5, gamma=-2)
