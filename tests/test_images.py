import pytest
import torch

from fpnbook.images import IMAGENET_MEAN, batch_images


def test_batch_pads_to_multiple_of_32_and_normalises():
    images = [torch.rand(3, 50, 70), torch.full((3, 64, 33), 0.5)]
    batch, sizes = batch_images(images)
    assert batch.shape == (2, 3, 64, 96)
    assert sizes == [(50, 70), (64, 33)]
    assert batch[0, :, 50:].abs().sum() == 0 and batch[1, :, :, 33:].abs().sum() == 0
    expected = (0.5 - IMAGENET_MEAN[0]) / 0.229
    assert torch.allclose(batch[1, 0, :64, :33], torch.tensor(expected))


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.rand(2, 3, 32, 32), TypeError),
        ([], TypeError),
        ([torch.rand(1, 32, 32)], ValueError),
        ([torch.zeros(3, 32, 32, dtype=torch.uint8)], TypeError),
        ([torch.rand(3, 0, 32)], ValueError),
    ],
)
def test_batch_rejects_bad_images(bad, error):
    with pytest.raises(error, match="images"):
        batch_images(bad)
