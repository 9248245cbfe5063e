import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher

from fpnbook.matching import BalancedSampler, Matcher


@pytest.mark.parametrize("allow_low", [False, True])
@pytest.mark.parametrize("high, low", [(0.7, 0.3), (0.5, 0.4), (0.5, 0.5)])
def test_matcher_equals_torchvision(high, low, allow_low):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        iou = torch.rand(5, 40, generator=g) ** 2
        iou[:, ::7] = 0.0
        ours = Matcher(high, low, allow_low)(iou)
        theirs = TorchvisionMatcher(high, low, allow_low)(iou)
        assert torch.equal(ours, theirs)


def test_matcher_no_ground_truth_is_all_background():
    assert Matcher(0.7, 0.3)(torch.zeros(0, 6)).tolist() == [-1] * 6


def test_matcher_keeps_best_anchor_for_small_object():
    iou = torch.tensor([[0.1, 0.25, 0.2], [0.9, 0.0, 0.1]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [1, 0, -1]


def test_matcher_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="low"):
        Matcher(0.3, 0.7)


def test_sampler_counts():
    torch.manual_seed(0)
    labels = [torch.tensor([1] * 300 + [0] * 1000 + [-1] * 50), torch.tensor([1] * 10 + [0] * 1000)]
    pos, neg = BalancedSampler(256, 0.5)(labels)
    assert pos[0].sum() == 128 and neg[0].sum() == 128
    assert pos[1].sum() == 10 and neg[1].sum() == 246
    assert not (pos[0] & neg[0]).any()
    assert (labels[0][pos[0]] == 1).all() and (labels[0][neg[0]] == 0).all()
    # Same counts as torchvision's sampler.
    tv_pos, tv_neg = BalancedPositiveNegativeSampler(256, 0.5)(labels)
    assert [p.sum() for p in pos] == [p.sum() for p in tv_pos]
    assert [n.sum() for n in neg] == [n.sum() for n in tv_neg]
