import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from fpnbook.backbone import (
    BasicBlock,
    ResNet,
    TorchvisionBackbone,
    check_image_batch,
    group_norm_groups,
    norm_layer,
    resnet_small,
    resnet_tiny,
)


@pytest.mark.parametrize("norm", ["gn", "bn", "frozen_bn"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_resnet_tiny_gives_c2_to_c5_at_strides_4_to_32(norm, size):
    model = resnet_tiny(norm=norm)
    out = model(torch.randn(2, 3, *size))
    assert list(out) == model.names == ["c2", "c3", "c4", "c5"]
    assert model.strides == [4, 8, 16, 32]
    for x, channels, stride in zip(out.values(), model.out_channels, model.strides):
        assert x.shape == (2, channels, size[0] // stride, size[1] // stride)


def test_resnet_layout_follows_depths_and_widths():
    model = ResNet(depths=(1, 2, 1, 3), widths=(8, 16, 24, 40), stem_width=8, norm="gn")
    assert [len(stage) for stage in model.stages] == [1, 2, 1, 3]
    assert model.out_channels == [8, 16, 24, 40]
    out = model(torch.randn(1, 3, 32, 32))
    assert [x.shape[1] for x in out.values()] == [8, 16, 24, 40]
    assert resnet_small().out_channels == [32, 64, 128, 256]
    assert [len(stage) for stage in resnet_small().stages] == [2, 2, 2, 2]


@pytest.mark.parametrize("norm, kind", [("gn", nn.GroupNorm), ("bn", nn.BatchNorm2d), ("frozen_bn", FrozenBatchNorm2d)])
def test_norm_choice_is_used_everywhere(norm, kind):
    norms = [m for m in resnet_tiny(norm=norm).modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, kind) for m in norms)


def test_group_norm_groups_divide_channels():
    assert [group_norm_groups(c) for c in (4, 16, 32, 64, 128, 256, 512)] == [1, 4, 8, 16, 32, 32, 32]
    for channels in range(1, 300):
        groups = group_norm_groups(channels)
        assert 1 <= groups <= 32 and channels % groups == 0
    assert norm_layer("gn", 30).num_groups == 6


def test_frozen_bn_from_scratch_is_almost_the_identity():
    # Why frozen BN is only for pretrained weights: untrained, it normalises nothing.
    x = torch.randn(2, 8, 5, 5) * 7 + 3
    torch.testing.assert_close(norm_layer("frozen_bn", 8)(x), x, rtol=1e-4, atol=1e-4)


def test_blocks_start_as_their_shortcut():
    # The last norm of every block starts at zero, so at init a block is relu(shortcut(x)).
    model = ResNet(norm="gn")
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        x = torch.randn(1, block.conv1.in_channels, 16, 16)
        torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))


def test_gradients_reach_the_stem():
    model = resnet_tiny()
    out = model(torch.randn(2, 3, 64, 64))
    sum(x.square().mean() for x in out.values()).backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0


def test_bad_images_raise():
    model = resnet_tiny()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images"):
        check_image_batch([torch.randn(3, 64, 64)])


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="depths"):
        ResNet(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="widths"):
        ResNet(widths=(8, 16, 32, 0))
    with pytest.raises(ValueError, match="norm"):
        ResNet(norm="layernorm")
    with pytest.raises(ValueError, match="block"):
        ResNet(block="bottleneck")
    with pytest.raises(ValueError, match="name"):
        TorchvisionBackbone("vgg16")


def test_torchvision_backbone_equals_torchvision_resnet_given_its_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    # Non-trivial running statistics, so a wrong norm mapping would show.
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        for weights in (reference.state_dict(), str(path)):
            ours = TorchvisionBackbone("resnet18", weights=weights).eval()  # frozen BN with weights
            assert isinstance(ours.body.bn1, FrozenBatchNorm2d)
            out = ours(x)
            torch.testing.assert_close(out["c5"], expected, rtol=1e-4, atol=1e-4)
    assert ours.out_channels == [64, 128, 256, 512] and ours.strides == [4, 8, 16, 32]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_torchvision_backbone_defaults_and_bad_weights():
    model = TorchvisionBackbone("resnet50")
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())  # from scratch: GN
    out = model(torch.randn(1, 3, 32, 32))
    assert [x.shape[1] for x in out.values()] == model.out_channels == [256, 512, 1024, 2048]
    with pytest.raises(ValueError, match="weights"):
        TorchvisionBackbone("resnet18", weights={"conv1.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(ValueError, match="weights"):
        TorchvisionBackbone("resnet34", norm="bn", weights=torchvision.models.resnet18().state_dict())
