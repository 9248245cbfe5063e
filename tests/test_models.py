"""fpnbook.models: one config builds each detector; the config's sizing reaches the parts."""

import pytest

from fpnbook.models import ModelConfig, build


def test_two_stage_sizing_reaches_the_rpn_and_roi_heads():
    model = build(ModelConfig(kind="mask_rcnn", rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
                              box_batch_size_per_image=32))
    model.train()
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (50, 20)
    assert model.roi_heads.sampler.batch_size_per_image == 32
    model.eval()  # inference keeps torchvision's counts
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (1000, 1000)


def test_defaults_are_sized_for_256_px_images():
    model = build(ModelConfig(kind="faster_rcnn")).train()
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (600, 300)
    assert model.roi_heads.sampler.batch_size_per_image == 128


def test_configs_saved_before_the_sizing_keys_still_load():
    old = {"kind": "mask_rcnn", "num_classes": 8, "backbone": "tiny", "norm": "gn", "fpn_channels": 64,
           "mask_classes": None, "transfer_inputs": "cls+box", "transfer_kind": "mlp", "transfer_mlp_branch": True}
    assert ModelConfig.from_dict(old).box_batch_size_per_image == 128


@pytest.mark.parametrize("bad", [
    dict(rpn_pre_nms_top_n_train=0), dict(rpn_post_nms_top_n_train=-1), dict(box_batch_size_per_image=0),
    dict(box_batch_size_per_image=1.5), dict(fpn_channels=0), dict(fpn_channels="64"), dict(num_classes=True),
])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=f"ModelConfig.{next(iter(bad))}"):
        ModelConfig(**bad)
