"""fpnbook.weight_transfer: T's shapes and checks, the predictor contract, stop-gradient, partial supervision."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fpnbook import models, rcnn
from fpnbook import weight_transfer as wt
from fpnbook.roi_heads import BoxPredictor, mask_loss

SEEN, UNSEEN = (1, 3), (2, 4)  # labels with and without masks in the model tests (4 classes + background)


def box_predictor(num_logits=5, size=16, seed=0):
    torch.manual_seed(seed)
    predictor = BoxPredictor(size, num_logits)
    with torch.no_grad():  # trained-looking weights: distinct rows of a useful size
        predictor.cls_score.weight.normal_(std=0.1)
        predictor.bbox_pred.weight.normal_(std=0.1)
    return predictor


def transfer_predictor(inputs="cls+box", kind="mlp", stop_gradient=True, size=16, num_logits=5, dim=8):
    bp = box_predictor(num_logits, size)
    transfer = wt.WeightTransfer(wt.transfer_input_dim(size, inputs), dim, inputs=inputs, kind=kind)
    return bp, wt.TransferMaskPredictor(bp, transfer, in_channels=6, dim_reduced=dim, stop_gradient=stop_gradient)


# ---------------------------------------------------------------- T and omega


@settings(max_examples=25, deadline=None)
@given(num_classes=st.integers(2, 12), size=st.integers(1, 24), mask_dim=st.integers(1, 16),
       inputs=st.sampled_from(wt.INPUTS), kind=st.sampled_from(wt.KINDS))
def test_transfer_maps_each_class_row_to_mask_weights(num_classes, size, mask_dim, inputs, kind):
    omega = wt.detection_weights(box_predictor(num_classes, size), inputs)
    assert omega.shape == (num_classes, wt.transfer_input_dim(size, inputs))
    transfer = wt.WeightTransfer(omega.shape[1], mask_dim, inputs=inputs, kind=kind)
    tau = transfer(omega)
    assert tau.shape == (num_classes, mask_dim)
    # One theta for all classes: each row is mapped on its own, whatever the others are.
    torch.testing.assert_close(transfer(omega[1:2]), tau[1:2])


def test_detection_weights_layout():
    bp = box_predictor(num_logits=3, size=4)
    cls, box, both = (wt.detection_weights(bp, i) for i in wt.INPUTS)
    torch.testing.assert_close(cls, bp.cls_score.weight)
    for c in range(3):  # class c's four regression rows, concatenated
        torch.testing.assert_close(box[c], bp.bbox_pred.weight[4 * c : 4 * c + 4].flatten())
    torch.testing.assert_close(both, torch.cat([cls, box], dim=1))


def test_linear_transfer_is_affine():
    transfer = wt.WeightTransfer(10, 4, kind="linear", inputs="cls")
    a, b = torch.randn(3, 10), torch.randn(3, 10)
    zero = transfer(torch.zeros(1, 10))
    torch.testing.assert_close(transfer(a + b) - zero, (transfer(a) - zero) + (transfer(b) - zero))


def test_mlp_transfer_uses_leaky_relu():
    transfer = wt.WeightTransfer(10, 4, hidden=7, kind="mlp", inputs="cls")
    layers = list(transfer.layers)
    assert [type(m).__name__ for m in layers] == ["Linear", "LeakyReLU", "Linear"]
    assert layers[0].out_features == 7 and layers[1].negative_slope == wt.LEAKY_SLOPE


@pytest.mark.parametrize("kwargs, match", [
    (dict(det_dim=0, mask_dim=4), "det_dim"),
    (dict(det_dim=8, mask_dim=4, inputs="glove"), "inputs"),
    (dict(det_dim=8, mask_dim=4, kind="3-layer"), "kind"),
    (dict(det_dim=8, mask_dim=4, kind="linear", hidden=3), "hidden"),
])
def test_transfer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wt.WeightTransfer(**kwargs)


def test_transfer_rejects_omega_of_the_wrong_width():
    transfer = wt.WeightTransfer(wt.transfer_input_dim(16, "cls+box"), 8)
    with pytest.raises(ValueError, match=r"omega must be Tensor\[num_logits, 80\]"):
        transfer(torch.zeros(5, 16))


@pytest.mark.parametrize("inputs, wrong", [("cls", "box"), ("box", "cls+box"), ("cls+box", "cls")])
def test_transfer_input_must_match_the_box_head(inputs, wrong):
    bp = box_predictor(size=16)
    transfer = wt.WeightTransfer(wt.transfer_input_dim(16, wrong), 8, inputs=inputs)
    with pytest.raises(ValueError, match="det_dim"):
        wt.TransferMaskPredictor(bp, transfer, in_channels=6, dim_reduced=8)


def test_transfer_output_must_match_dim_reduced():
    bp = box_predictor(size=16)
    with pytest.raises(ValueError, match="dim_reduced"):
        wt.TransferMaskPredictor(bp, wt.WeightTransfer(80, 8), in_channels=6, dim_reduced=12)


# ---------------------------------------------------------------- the predictor contract


@pytest.mark.parametrize("inputs", wt.INPUTS)
def test_predictor_keeps_the_mask_predictor_contract(inputs):
    bp, predictor = transfer_predictor(inputs)
    x = torch.randn(3, 6, 14, 14)
    logits = predictor(x)
    assert logits.shape == (3, 5, 28, 28)
    weight, bias = predictor.class_weights()
    assert weight.shape == (5, 8) and bias.shape == (5,) and not bias.any()
    torch.testing.assert_close(weight, predictor.transfer(wt.detection_weights(bp, inputs)))
    torch.testing.assert_close(logits, F.conv2d(predictor.upsample(x), weight[:, :, None, None], bias))
    assert predictor.upsample(x).shape == (3, 8, 28, 28)


def test_box_predictor_is_a_reference_not_a_parameter_of_the_mask_predictor():
    bp, predictor = transfer_predictor()
    own = {id(p) for p in predictor.parameters()}
    assert not own & {id(p) for p in bp.parameters()}
    assert not any("box_predictor" in k or "cls_score" in k for k in predictor.state_dict())
    with torch.no_grad():  # T reads the box weights as they are now
        bp.cls_score.weight.mul_(2)
    torch.testing.assert_close(predictor.detection_weights(), wt.detection_weights(bp, "cls+box"))


def test_fused_predictor_adds_one_mask_to_every_class():
    _, predictor = transfer_predictor()
    fused = wt.FusedMaskPredictor(predictor, in_channels=6)
    with torch.no_grad():
        fused.mlp.fc.bias.fill_(0.5)
    x = torch.randn(2, 6, 14, 14)
    torch.testing.assert_close(fused(x) - predictor(x), fused.mlp(x).expand(2, 5, 28, 28))
    assert fused.class_weights()[0].shape == (5, 8)


# ---------------------------------------------------------------- stop-gradient


def mask_loss_on(predictor, labels):
    torch.manual_seed(1)
    x = torch.randn(len(labels), 6, 14, 14)
    return mask_loss(predictor(x), torch.tensor(labels), torch.rand(len(labels), 28, 28).round())


def test_stop_gradient_keeps_the_mask_loss_off_the_box_weights():
    bp, predictor = transfer_predictor(stop_gradient=True)
    mask_loss_on(predictor, list(SEEN)).backward()
    assert bp.cls_score.weight.grad is None and bp.bbox_pred.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.transfer.parameters())


def test_without_stop_gradient_only_classes_with_masks_get_a_gradient():
    bp, predictor = transfer_predictor(stop_gradient=False)
    mask_loss_on(predictor, [1, 3, 3]).backward()
    cls_grad = bp.cls_score.weight.grad.abs().sum(1)
    box_grad = bp.bbox_pred.weight.grad.abs().reshape(5, -1).sum(1)
    for grad in (cls_grad, box_grad):
        assert (grad[list(SEEN)] > 0).all()
        assert (grad[[0, *UNSEEN]] == 0).all()  # B's omega never moves for the mask loss: the drift stop-grad prevents


# ---------------------------------------------------------------- partial supervision in the model


def tiny_model(transfer="cls+box", **kwargs):
    torch.manual_seed(0)
    model = models.mask_rcnn_tiny(4, class_agnostic_mask=transfer is None, representation_size=32,
                                mask_layers=(8,), mask_dim_reduced=8)
    return rcnn.to_mask_x(model, SEEN, transfer=transfer, **kwargs)


def scene(b_masks="zeros", has_mask=True):
    """Two 64 px images, each with a seen (A) and an unseen (B) object; B masks zero, NaN or garbage."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [28.0, 20.0, 60.0, 58.0]])
    targets = []
    for labels in ([1, 2], [3, 4]):
        masks = torch.zeros(2, 64, 64)
        masks[0, 8:30, 6:28] = 1  # the A object's mask
        masks[1] = {"zeros": 0.0, "nan": float("nan"), "garbage": 1e6}[b_masks]
        target = {"boxes": boxes.clone(), "labels": torch.tensor(labels), "masks": masks}
        if has_mask:
            target["has_mask"] = torch.tensor([True, False])
        targets.append(target)
    return images, targets


def seeded_losses(model, images, targets):
    torch.manual_seed(0)  # the same proposals and RoI samples each call
    model.train()
    return model(images, targets)


@pytest.mark.parametrize("transfer, has_mask", [("cls+box", True), ("cls+box", False), (None, False)],
                         ids=["transfer-given", "transfer-derived", "agnostic-derived"])
def test_no_b_mask_pixel_reaches_the_loss(transfer, has_mask):
    model = tiny_model(transfer)
    clean = seeded_losses(model, *scene("zeros", has_mask))
    for poison in ("nan", "garbage"):
        poisoned = seeded_losses(model, *scene(poison, has_mask))
        assert torch.isfinite(poisoned["loss_mask"])
        for name in clean:
            torch.testing.assert_close(poisoned[name], clean[name], rtol=0, atol=0)


def test_mask_loss_gradient_is_zero_on_every_unseen_mask_pixel():
    model = tiny_model()
    images, targets = scene("zeros")
    for t in targets:  # B objects with real-looking masks, which the model must still not read
        t["masks"][1, 24:56, 30:58] = 1
        t["masks"].requires_grad_(True)
    seeded_losses(model, images, targets)["loss_mask"].backward()
    for t in targets:
        grad = t["masks"].grad
        assert grad[0].abs().sum() > 0  # the A mask is the target of the loss ...
        assert not grad[1].any()  # ... no pixel of the B mask contributes anything


def test_box_losses_still_cover_every_class():
    model = tiny_model()
    images, targets = scene("zeros")
    only_a = [{k: v[:1] for k, v in t.items()} for t in targets]
    full, partial = seeded_losses(model, images, targets), seeded_losses(model, images, only_a)
    assert full["loss_box_reg"] != partial["loss_box_reg"]  # B boxes count in the box loss


def test_has_mask_on_an_unseen_class_is_refused():
    model = tiny_model()
    images, targets = scene("zeros")
    targets[0]["has_mask"] = torch.tensor([True, True])
    with pytest.raises(ValueError, match=r"not in mask_classes"):
        seeded_losses(model, images, targets)


def test_mask_classes_must_be_known_labels():
    with pytest.raises(ValueError, match="mask_classes"):
        rcnn.to_mask_x(models.mask_rcnn_tiny(4, representation_size=32), {1, 9})
    with pytest.raises(ValueError, match="empty"):
        wt.check_mask_classes(set(), 5)
    with pytest.raises(TypeError):
        wt.check_mask_classes("12", 5)


def test_class_agnostic_baseline_needs_a_class_agnostic_model():
    with pytest.raises(ValueError, match="class_agnostic_mask=True"):
        rcnn.to_mask_x(models.mask_rcnn_tiny(4, representation_size=32), SEEN, transfer=None)


def test_mask_x_model_predicts_masks_for_unseen_classes():
    model = tiny_model(class_agnostic_mlp=True).eval()
    images, _ = scene()
    with torch.no_grad():
        out = model(images)
    assert out[0]["masks"].shape[1:] == (1, 64, 64)
    logits = model.roi_heads.mask_predictor(torch.randn(2, 8, 14, 14))
    assert logits.shape == (2, 5, 28, 28) and logits[:, list(UNSEEN)].abs().sum() > 0


def test_deepcopy_keeps_the_transfer_reading_the_copied_box_predictor():
    model = tiny_model()
    clone = copy.deepcopy(model)
    assert clone.roi_heads.mask_predictor.box_predictor is clone.roi_heads.box_predictor
    assert model.roi_heads.mask_predictor.box_predictor is model.roi_heads.box_predictor
    images, targets = scene()
    assert torch.isfinite(seeded_losses(clone, images, targets)["loss_mask"])  # the hook came along


def test_to_mask_x_returns_a_mask_x_rcnn_with_mask_rcnn_state_keys():
    torch.manual_seed(0)
    mask_rcnn = models.mask_rcnn_tiny(4, representation_size=32, mask_layers=(8,), mask_dim_reduced=8)
    model = rcnn.to_mask_x(mask_rcnn, SEEN, transfer="cls+box")
    assert isinstance(model, rcnn.MaskXRCNN) and isinstance(model, rcnn.MaskRCNN)
    assert model.mask_classes == frozenset(SEEN) and f"mask_classes={sorted(SEEN)}" in repr(model)
    assert model.roi_heads is mask_rcnn.roi_heads  # parts move, not copied
    assert set(model.state_dict()) == set(mask_rcnn.state_dict())
    assert not model._forward_pre_hooks  # partial supervision lives in forward, not in a hook


def test_mask_x_rcnn_in_eval_mode_ignores_has_mask():
    model = tiny_model().eval()
    images, targets = scene("zeros")
    targets[0]["has_mask"] = torch.tensor([True, True])  # would be refused in training
    with torch.no_grad():
        assert len(model(images)) == 2


def test_mask_x_rcnn_names_a_target_without_labels():
    model = tiny_model()
    images, targets = scene("zeros")
    del targets[1]["labels"]
    with pytest.raises(ValueError, match=r"targets\[1\].*'labels'"):
        seeded_losses(model, images, targets)
