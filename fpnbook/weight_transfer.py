"""Weight transfer (Hu et al. 2018, *Learning to Segment Every Thing*): mask weights predicted from box weights.

**Partial supervision.** The classes are ``C = A ∪ B``: every class has boxes, only
``A`` has masks. In Mask R-CNN the last layer of the mask branch is a 1x1 conv whose row
``w_c`` [D] turns an RoI's upsampled features [D, 28, 28] into class ``c``'s mask logits.
Rows of ``B`` classes never see a mask loss, so they never train.

**Weight transfer** predicts each row from the box branch instead, with one function
shared by all classes::

    tau_c = T(omega_c; theta)        omega_c [det_dim] -> tau_c [mask_dim]

where ``omega_c`` is the box predictor's weights for class ``c`` (``inputs``):

- ``"cls"``: the classifier row ``cls_score.weight[c]``, [R];
- ``"box"``: the four regression rows ``bbox_pred.weight[4c:4c+4]`` concatenated, [4R];
- ``"cls+box"``: both, [5R];

with ``R`` the box head's ``representation_size``. ``T`` is linear or a 2-layer MLP with
LeakyReLU (``kind``). It trains on the ``A`` classes, whose masks are known, and is then
applied unchanged to ``omega_B``: box weights, learnt from boxes alone, carry enough
about a class for ``T`` to say how to segment it.

**Stop-gradient.** Only ``A`` classes have a mask loss, so its gradient would reach
``omega_A`` and not ``omega_B``: the ``A`` box weights would drift towards what helps
masks while the ``B`` ones stay put, and ``T``, fitted to the drifted ``omega_A``, would
meet ``omega_B`` from a different distribution. :class:`TransferMaskPredictor` therefore
reads ``omega.detach()`` by default: the mask loss trains ``theta`` only, the box
losses alone train ``omega``.

**The fused head** adds a class-agnostic fully connected branch (:class:`MLPMaskBranch`)
whose one 28x28 mask is added to every class's transferred logits: an fc layer sees the
whole RoI at once and captures an object's overall shape, where the 3x3 convs see
neighbourhoods.

:class:`fpnbook.rcnn.MaskXRCNN` is a Mask R-CNN with a ``mask_classes`` set, and
:func:`fpnbook.rcnn.to_mask_x` builds one from a Mask R-CNN's parts: the mask loss covers only RoIs
matched to objects of those classes (``has_mask``, see :mod:`fpnbook.roi_heads`), the box
losses cover every class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


INPUTS = ("cls", "box", "cls+box")
KINDS = ("linear", "mlp")
# Rows of omega per representation_size: the classifier has 1, the box regressor 4.
INPUT_ROWS = {"cls": 1, "box": 4, "cls+box": 5}
# The authors' code uses LeakyReLU(0.1) between the two layers of T.
LEAKY_SLOPE = 0.1


def check_inputs(inputs: str) -> str:
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS} (which box weights T reads), got {inputs!r}")
    return inputs


def transfer_input_dim(representation_size: int, inputs: str = "cls+box") -> int:
    """``det_dim`` for a box head of ``representation_size`` R: R ("cls"), 4R ("box") or 5R ("cls+box")."""
    if not isinstance(representation_size, int) or representation_size < 1:
        raise ValueError(f"representation_size must be a positive int, got {representation_size!r}")
    return INPUT_ROWS[check_inputs(inputs)] * representation_size


def detection_weights(box_predictor: nn.Module, inputs: str = "cls+box") -> Tensor:
    """``omega_det``: each class's box-predictor weights, Tensor[num_logits, det_dim] (K + 1 rows).

    ``box_predictor`` has ``cls_score`` (Linear R -> C) and ``bbox_pred`` (Linear R -> 4C,
    rows ``4c..4c+3`` for class ``c``), as :class:`fpnbook.roi_heads.BoxPredictor`. Row
    ``c`` is ``cls_score.weight[c]`` [R], ``bbox_pred.weight[4c:4c+4].flatten()`` [4R], or
    the two concatenated [5R]. Row 0 is the background's. The result shares storage and
    autograd history with the weights: detach it to stop gradients.
    """
    check_inputs(inputs)
    for name in ("cls_score", "bbox_pred"):
        if not isinstance(getattr(box_predictor, name, None), nn.Linear):
            raise TypeError(f"box_predictor must have an nn.Linear {name!r} (see fpnbook.roi_heads.BoxPredictor)")
    cls_weight, box_weight = box_predictor.cls_score.weight, box_predictor.bbox_pred.weight
    num_logits, size = cls_weight.shape
    if box_weight.shape != (4 * num_logits, size):
        raise ValueError(f"box_predictor.bbox_pred.weight must be [4 * {num_logits}, {size}] "
                         f"(four deltas per class), got {list(box_weight.shape)}")
    box_weight = box_weight.reshape(num_logits, 4 * size)
    return {"cls": cls_weight, "box": box_weight, "cls+box": torch.cat([cls_weight, box_weight], dim=1)}[inputs]


class WeightTransfer(nn.Module):
    """T: box weights -> mask weights. Tensor[num_logits, det_dim] -> Tensor[num_logits, mask_dim].

    ``det_dim`` must match ``inputs`` for the box head (:func:`transfer_input_dim`);
    ``mask_dim`` is the mask predictor's ``dim_reduced`` (the channels its 1x1 conv
    reads). ``kind="linear"``: one fc layer. ``kind="mlp"``: fc -> LeakyReLU(0.1) -> fc
    with ``hidden`` units (default ``mask_dim``, as the authors). Every row is mapped by
    the same ``theta``: T knows nothing of which class a row belongs to. MSRA (He) init,
    zero biases; the last layer's bias is a component shared by every class' mask weights.
    """

    def __init__(
        self, det_dim: int, mask_dim: int, hidden: int | None = None, inputs: str = "cls+box", kind: str = "mlp"
    ) -> None:
        super().__init__()
        for name, value in (("det_dim", det_dim), ("mask_dim", mask_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.inputs = check_inputs(inputs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "linear" and hidden is not None:
            raise ValueError("hidden is for kind='mlp'; a linear T has no hidden layer")
        hidden = mask_dim if hidden is None else hidden
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        self.det_dim, self.mask_dim, self.kind = det_dim, mask_dim, kind
        if kind == "linear":
            self.layers = nn.Sequential(nn.Linear(det_dim, mask_dim))
        else:
            self.layers = nn.Sequential(nn.Linear(det_dim, hidden), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(hidden, mask_dim))
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(layer.bias)

    def forward(self, omega: Tensor) -> Tensor:
        if not isinstance(omega, Tensor) or omega.ndim != 2 or omega.shape[1] != self.det_dim:
            got = list(omega.shape) if isinstance(omega, Tensor) else type(omega).__name__
            raise ValueError(f"omega must be Tensor[num_logits, {self.det_dim}] (the box head's {self.inputs!r} "
                             f"weights), got {got}")
        return self.layers(omega)

    def extra_repr(self) -> str:
        return f"inputs={self.inputs!r}, kind={self.kind!r}"


class TransferMaskPredictor(nn.Module):
    """Mask predictor whose per-class 1x1 conv weights are ``T(omega_det)``. [K, C_in, S, S] -> [K, num_logits, 2S, 2S].

    Keeps :mod:`fpnbook.roi_heads`' mask predictor contract: ``upsample(x)`` (2x2
    stride-2 deconv + ReLU) gives [K, dim_reduced, 2S, 2S]; ``class_weights()`` gives
    ``(tau [num_logits, dim_reduced], bias [num_logits])``; the logits are their 1x1
    conv. The bias is zero (not a parameter), as in the paper: every class-specific
    weight comes from ``T``.

    ``box_predictor`` is held by reference, not registered as a submodule: its
    parameters belong to the RoI heads, so they appear once in the model's
    ``state_dict`` and an optimiser over this predictor's parameters never moves
    ``omega``. With ``stop_gradient`` (default) ``omega`` is detached, so the mask loss
    trains ``T`` only. ``transfer.inputs`` picks the box weights; its ``det_dim`` must
    match them and its ``mask_dim`` must equal ``dim_reduced``, or ValueError.
    """

    def __init__(
        self,
        box_predictor: nn.Module,
        transfer: WeightTransfer,
        in_channels: int,
        dim_reduced: int,
        stop_gradient: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(transfer, WeightTransfer):
            raise TypeError(f"transfer must be a WeightTransfer, got {type(transfer).__name__}")
        omega = detection_weights(box_predictor, transfer.inputs)
        if omega.shape[1] != transfer.det_dim:
            size = box_predictor.cls_score.in_features
            raise ValueError(
                f"transfer expects det_dim={transfer.det_dim}, but the box predictor's {transfer.inputs!r} weights "
                f"have {omega.shape[1]} (representation_size {size}; use "
                f"transfer_input_dim({size}, {transfer.inputs!r}) = {transfer_input_dim(size, transfer.inputs)})"
            )
        if transfer.mask_dim != dim_reduced:
            raise ValueError(f"transfer.mask_dim ({transfer.mask_dim}) must equal dim_reduced ({dim_reduced}): "
                             "T predicts the weights of a 1x1 conv over dim_reduced channels")
        self.num_logits = omega.shape[0]
        self.stop_gradient = bool(stop_gradient)
        self.transfer = transfer
        # Held in a tuple on purpose: the RoI heads own the box predictor, this only reads its
        # weights. As a registered submodule its weights would appear a second time in the
        # state dict (mask_predictor.box_predictor.*), and a Mask^X R-CNN's state dict would
        # stop being a Mask R-CNN's. deepcopy keeps the pairing (the tuple is copied with the
        # model's memo), which tests/test_weight_transfer.py checks.
        self._box_predictor = (box_predictor,)
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv5_mask.bias)

    @property
    def box_predictor(self) -> nn.Module:
        return self._box_predictor[0]

    def detection_weights(self) -> Tensor:
        """``omega_det`` Tensor[num_logits, det_dim], detached when ``stop_gradient``."""
        omega = detection_weights(self.box_predictor, self.transfer.inputs)
        return omega.detach() if self.stop_gradient else omega

    def upsample(self, x: Tensor) -> Tensor:
        """Tensor[K, in_channels, S, S] -> Tensor[K, dim_reduced, 2S, 2S]."""
        return F.relu(self.conv5_mask(x))

    def class_weights(self) -> tuple[Tensor, Tensor]:
        """``(tau Tensor[num_logits, dim_reduced], zero bias Tensor[num_logits])``."""
        tau = self.transfer(self.detection_weights())
        return tau, tau.new_zeros(tau.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.class_weights()
        return F.conv2d(self.upsample(x), weight[:, :, None, None], bias)

    def extra_repr(self) -> str:
        return f"num_logits={self.num_logits}, stop_gradient={self.stop_gradient}"


class MLPMaskBranch(nn.Module):
    """Class-agnostic fully connected mask branch. Tensor[K, in_channels, S, S] -> Tensor[K, 1, resolution, resolution].

    The paper's branch is one fc layer from the 28x28x256 upsampled features to a 28x28
    mask (157M weights). Scaled to our heads: a 1x1 conv to ``reduced_channels`` + ReLU,
    average pooling to ``pooled_size`` x ``pooled_size``, then one fc layer to
    ``resolution**2`` logits. As in the authors' code the fc starts at normal(std 0.001)
    with zero bias, so the branch starts silent and the fused head starts as the FCN alone.
    """

    def __init__(self, in_channels: int, resolution: int = 28, reduced_channels: int = 8, pooled_size: int = 7) -> None:
        super().__init__()
        self.resolution = resolution
        self.reduce = nn.Conv2d(in_channels, reduced_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(pooled_size)
        self.fc = nn.Linear(reduced_channels * pooled_size**2, resolution**2)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.reduce(x))).flatten(1)
        return self.fc(x).reshape(-1, 1, self.resolution, self.resolution)


class FusedMaskPredictor(nn.Module):
    """A mask predictor plus the class-agnostic :class:`MLPMaskBranch`: ``predictor(x) + mlp(x)``.

    [K, C_in, S, S] -> [K, num_channels, 2S, 2S]: the MLP's one mask is added to every
    channel (every class, or the single class-agnostic one). ``upsample`` and
    ``class_weights`` are the wrapped predictor's, so the contract still holds for the
    FCN part.
    """

    def __init__(self, predictor: nn.Module, in_channels: int, resolution: int = 28) -> None:
        super().__init__()
        self.predictor = predictor
        self.mlp = MLPMaskBranch(in_channels, resolution)

    def upsample(self, x: Tensor) -> Tensor:
        return self.predictor.upsample(x)

    def class_weights(self) -> tuple[Tensor, Tensor]:
        return self.predictor.class_weights()

    def forward(self, x: Tensor) -> Tensor:
        fcn = self.predictor(x)
        mlp = self.mlp(x)
        if fcn.shape[-2:] != mlp.shape[-2:]:
            raise ValueError(f"the MLP branch gives {list(mlp.shape[-2:])} masks but the predictor {list(fcn.shape[-2:])}; "
                             "set resolution to twice the pooled mask size")
        return fcn + mlp


# ---------------------------------------------------------------- partial supervision


def check_mask_classes(mask_classes: Iterable[int], num_classes: int) -> frozenset[int]:
    """``mask_classes`` as a frozenset of labels, each in ``1..num_classes`` (K, the object classes)."""
    if isinstance(mask_classes, (str, bytes)) or not isinstance(mask_classes, Iterable):
        raise TypeError(f"mask_classes must be a set of int labels, got {type(mask_classes).__name__}")
    labels = list(mask_classes)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in labels):
        raise TypeError(f"mask_classes must hold int labels, got {labels}")
    unknown = sorted(c for c in labels if not 1 <= c <= num_classes)
    if unknown:
        raise ValueError(f"mask_classes must be labels in 1..{num_classes}, got unknown {unknown}")
    if not labels:
        raise ValueError("mask_classes is empty: no class would ever train the mask branch")
    return frozenset(labels)


def partial_mask_targets(targets: Sequence[Mapping[str, Tensor]], mask_classes: Iterable[int]) -> list[dict]:
    """Targets whose ``has_mask`` [G] respects ``mask_classes``: derived from the labels when absent.

    A given ``has_mask`` may be False for an object of a mask class (a missing mask),
    but True for a label outside ``mask_classes`` raises ValueError: that mask would
    train the mask branch on a class that is supposed to have none. Returns shallow
    copies; the input dicts are not modified.
    """
    mask_classes = frozenset(mask_classes)
    out = []
    for i, target in enumerate(targets):
        labels = target.get("labels") if isinstance(target, Mapping) else None
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise ValueError(f"targets[{i}] must be a dict with 'labels', an int64 Tensor[G]")
        allowed = torch.zeros_like(labels, dtype=torch.bool)
        for c in mask_classes:
            allowed |= labels == c
        has_mask = target.get("has_mask")
        if has_mask is None:
            has_mask = allowed
        elif isinstance(has_mask, Tensor) and has_mask.dtype == torch.bool and has_mask.shape == labels.shape:
            leaked = labels[has_mask & ~allowed]
            if leaked.numel():
                raise ValueError(f"targets[{i}]['has_mask'] marks masks on labels {sorted(set(leaked.tolist()))}, "
                                 f"which are not in mask_classes {sorted(mask_classes)}")
        else:
            raise ValueError(f"targets[{i}]['has_mask'] must be a bool Tensor[{labels.shape[0]}] (one per box)")
        out.append({**target, "has_mask": has_mask})
    return out
