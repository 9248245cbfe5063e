"""Architecture diagrams drawn from the modules themselves, so a picture cannot drift from the code.

Each function takes a real model (or module) and returns a ``matplotlib.figure.Figure``
made without pyplot, like :mod:`fpnbook.viz`: a notebook shows it when it is a cell's
value. Every channel count, stride, level name, anchor count ``A``, class count ``K``
and head size in a drawing is read from the module passed in by :func:`describe`,
which returns them as plain data (the tests compare the two):

- :func:`pipeline`: a two-stage detector end to end (Mask R-CNN paper, Fig. 1);
- :func:`fpn_block`: bottom-up maps, lateral 1x1 convs, top-down 2x upsampling, 3x3
  smoothing (FPN paper, Fig. 3);
- :func:`retinanet`: the pyramid and the class (K·A) and box (4A) subnets (focal loss
  paper, Fig. 3);
- :func:`mask_rcnn_heads`: the RPN, RoIAlign, box and mask heads and the five losses
  (Mask R-CNN paper, Fig. 4 right);
- :func:`mask_x`: ω_det -> T -> τ and the stop-gradient (Hu et al. 2018, Fig. 2).

Shapes are written as the papers write them: ``7×7×64`` is a 7 x 7 map of 64 channels
per RoI, ``W×H×KA`` a map of the level's size with ``K * A`` channels.
"""

from __future__ import annotations

import dataclasses

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path
from torch import nn

from .fpn import FPN, BackboneWithFPN, LastLevelMaxPool, LastLevelP6P7, level_of
from .weight_transfer import FusedMaskPredictor, TransferMaskPredictor

FONT = 9  # every text in a diagram is at least this many points (CONTRIBUTING.md, "Figures")
TITLE_FONT = 11
WIDTH = 9.5  # inches: the widest a figure may be
TITLE_BAND = 0.45  # inches above the drawing for the title
COLOURS = dict(
    backbone="#cfe0f3", fpn="#d3ecd1", rpn="#fde2c4", roi="#e4dcef", head="#e4dcef",
    mask="#f3d9e6", transfer="#fff0b3", loss="#fbe3e3", output="#ececec", unused="#f4f4f4",
)
INK, LOSS_EDGE, STOP = "#333333", "#c0392b", "#c0392b"


# ---------------------------------------------------------------- numbers read from the modules


def _conv(conv: nn.Module) -> dict | None:
    """in/out channels, kernel and stride of a conv (None for a dropped one, e.g. ``nn.Identity``)."""
    if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
        return None
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                kernel=conv.kernel_size[0], stride=conv.stride[0])


def _find_fpn(obj: nn.Module) -> tuple[FPN, nn.Module | None, list[str] | None]:
    """(the FPN, the body feeding it or None, the body's map names that enter it or None)."""
    if isinstance(obj, FPN):
        return obj, None, None
    if isinstance(obj, BackboneWithFPN):
        return obj.fpn, obj.backbone, list(obj.in_names)
    if isinstance(getattr(obj, "fpn", None), FPN):  # fpnbook.rcnn.RPNModel
        body = getattr(obj, "backbone", None)
        return obj.fpn, body, list(getattr(body, "names", [])) or None
    if isinstance(getattr(obj, "backbone", None), BackboneWithFPN):  # the detectors
        return _find_fpn(obj.backbone)
    raise TypeError(f"model_or_fpn must be an fpnbook FPN or a model holding one (.fpn, or .backbone.fpn), "
                    f"got {type(obj).__name__}")


def _fpn_numbers(obj: nn.Module) -> dict:
    """The FPN's inputs (name, channels, stride), its 1x1 laterals and 3x3 smoothing convs, outputs and extra levels.

    Names and strides come from the body's ``names``/``strides`` and the wrapper's
    ``in_names``; a bare FPN does not know its inputs' names, so its ``n`` inputs are
    taken to be C(6-n)..C5 (stride ``2**k``), the book's convention.
    """
    fpn, body, in_names = _find_fpn(obj)
    n = len(fpn.in_channels_list)
    if body is not None and hasattr(body, "strides"):
        strides = dict(zip(body.names, body.strides))
        channels = dict(zip(body.names, body.out_channels))
    else:
        in_names = [f"c{k}" for k in range(6 - n, 6)]
        strides = {name: 2 ** level_of(name) for name in in_names}
        channels = dict(zip(in_names, fpn.in_channels_list))
    inputs = [dict(name=name, channels=channels[name], stride=strides[name]) for name in in_names]
    unused = [dict(name=name, channels=channels[name], stride=strides[name]) for name in strides if name not in in_names]
    names = fpn.output_names(in_names)
    last = inputs[-1]["stride"]
    out_strides = [i["stride"] for i in inputs] + [last * 2 ** j for j in range(1, len(names) - n + 1)]
    extra = fpn.extra_blocks
    if isinstance(extra, LastLevelMaxPool):
        extra = dict(kind="maxpool", source=names[n - 1], stride=2)
    elif isinstance(extra, LastLevelP6P7):
        extra = dict(kind="p6p7", source=in_names[-1] if not extra.use_p5 else names[n - 1],
                     p6=_conv(extra.p6), p7=_conv(extra.p7))
    return dict(
        inputs=inputs, unused=unused, laterals=[_conv(c) for c in fpn.lateral], smooth=[_conv(c) for c in fpn.smooth],
        outputs=[dict(name=name, channels=fpn.out_channels, stride=s) for name, s in zip(names, out_strides)],
        channels=fpn.out_channels, top_down=fpn.top_down, lateral=fpn.use_lateral, upsample=2, extra=extra,
    )


def _mask_numbers(heads: nn.Module) -> dict | None:
    """The mask branch: RoIAlign size, head convs, deconv, logit channels, and weight transfer / MLP branch if any."""
    if getattr(heads, "mask_predictor", None) is None:
        return None
    predictor, mlp = heads.mask_predictor, None
    if isinstance(predictor, FusedMaskPredictor):
        predictor, mlp = predictor.predictor, predictor.mlp
    convs = [_conv(m) for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    deconv = _conv(predictor.conv5_mask)
    pool = heads.mask_roi_pool.output_size[0]
    logits = getattr(predictor, "num_logits", None)
    if isinstance(getattr(predictor, "mask_fcn_logits", None), nn.Conv2d):
        logits = predictor.mask_fcn_logits.out_channels
    numbers = dict(pool=pool, levels=list(heads.mask_roi_pool.featmap_names), convs=convs, deconv=deconv,
                   resolution=pool * deconv["stride"], logits=logits, class_agnostic=bool(heads.class_agnostic_mask),
                   transfer=None, mlp=None)
    if isinstance(predictor, TransferMaskPredictor):
        layers = [m for m in predictor.transfer.layers if isinstance(m, nn.Linear)]
        numbers["transfer"] = dict(inputs=predictor.transfer.inputs, kind=predictor.transfer.kind,
                                   sizes=[layers[0].in_features] + [m.out_features for m in layers],
                                   stop_gradient=predictor.stop_gradient, num_logits=predictor.num_logits)
    if mlp is not None:
        numbers["mlp"] = dict(in_channels=mlp.reduce.in_channels, reduced=mlp.reduce.out_channels,
                              pooled=mlp.pool.output_size, fc=(mlp.fc.in_features, mlp.fc.out_features),
                              resolution=mlp.resolution)
    return numbers


def _two_stage_numbers(model: nn.Module) -> dict:
    rpn, heads, backbone = model.rpn, model.roi_heads, model.backbone
    body = getattr(backbone, "backbone", None)
    A = sorted(set(rpn.anchor_generator.num_anchors_per_location()))
    predictor = heads.box_predictor
    return dict(
        kind=type(model).__name__,
        body=[dict(name=n, channels=c, stride=s) for n, c, s in zip(body.names, body.out_channels, body.strides)]
        if body is not None else [],
        levels=[dict(name=n, stride=s) for n, s in zip(backbone.names, backbone.strides)],
        channels=backbone.out_channels,
        fpn=_fpn_numbers(model) if isinstance(backbone, BackboneWithFPN) else None,
        anchors=dict(per_location=A[0] if len(A) == 1 else A, sizes=[list(s) for s in rpn.anchor_generator.sizes],
                     aspect_ratios=list(rpn.anchor_generator.aspect_ratios[0])),
        rpn=dict(conv=_conv(rpn.head.conv), objectness=rpn.head.objectness.out_channels,
                 deltas=rpn.head.deltas.out_channels, pre_nms=dict(rpn.pre_nms_top_n_counts),
                 post_nms=dict(rpn.post_nms_top_n_counts), nms=rpn.nms_thresh,
                 sampled=rpn.sampler.batch_size_per_image),
        rois_sampled=heads.sampler.batch_size_per_image,
        box_pool=dict(size=heads.box_roi_pool.output_size[0], levels=list(heads.box_roi_pool.featmap_names)),
        box_head=[(heads.box_head.fc6.in_features, heads.box_head.fc6.out_features),
                  (heads.box_head.fc7.in_features, heads.box_head.fc7.out_features)],
        num_classes=predictor.cls_score.out_features - 1, cls_logits=predictor.cls_score.out_features,
        box_deltas=predictor.bbox_pred.out_features, representation=predictor.cls_score.in_features,
        detections=dict(score=heads.score_thresh, nms=heads.nms_thresh, top=heads.detections_per_img),
        mask=_mask_numbers(heads),
        mask_classes=sorted(getattr(model, "mask_classes", None) or []) or None,
    )


def _retinanet_numbers(model: nn.Module) -> dict:
    head = model.head
    cls_convs = [_conv(m) for m in head.cls_subnet.modules() if isinstance(m, nn.Conv2d)]
    box_convs = [_conv(m) for m in head.box_subnet.modules() if isinstance(m, nn.Conv2d)]
    norm = any(isinstance(m, nn.GroupNorm) for m in head.cls_subnet.modules())
    generator = model.anchor_generator
    return dict(
        kind=type(model).__name__, fpn=_fpn_numbers(model), channels=model.backbone.out_channels,
        levels=[dict(name=n, stride=s) for n, s in zip(model.backbone.names, model.backbone.strides)],
        num_classes=head.num_classes, anchors_per_location=head.num_anchors,
        scales=len(generator.sizes[0]), aspect_ratios=list(generator.aspect_ratios[0]),
        anchor_sizes=[[round(s) for s in sizes] for sizes in generator.sizes],
        cls_convs=cls_convs, box_convs=box_convs, norm="GroupNorm" if norm else None,
        cls_out=head.cls_logits.out_channels, box_out=head.bbox_pred.out_channels,
        cls_logits=_conv(head.cls_logits), bbox_pred=_conv(head.bbox_pred),
    )


def _is_two_stage(model: object) -> bool:
    heads = getattr(model, "roi_heads", None)
    return all(hasattr(model, a) for a in ("rpn", "backbone")) and hasattr(heads, "box_predictor")


def _is_retinanet(model: object) -> bool:
    return hasattr(getattr(model, "head", None), "cls_subnet") and hasattr(model, "anchor_generator")


def describe(model: nn.Module) -> dict:
    """The numbers a diagram of ``model`` shows, read from its modules; plain data.

    - a two-stage detector (``rpn`` + ``roi_heads``, e.g. :class:`fpnbook.rcnn.MaskRCNN`):
      the body's ``names``/``out_channels``/``strides``, the pyramid's levels, the anchor
      generator's sizes and ``A``, the RPN head's conv and output channels and its
      pre/post-NMS counts, the poolers' ``output_size`` and levels, ``fc6``/``fc7``
      sizes, ``K`` from ``cls_score.out_features - 1``, and under ``"mask"`` the mask
      head's convs, the ``conv5_mask`` deconv, the logit channels and, for Mask^X
      R-CNN, the weight transfer (``inputs``, ``kind``, layer sizes, ``stop_gradient``)
      and the class-agnostic MLP branch;
    - a RetinaNet (``head.cls_subnet``): levels, ``A`` (``head.num_anchors``), ``K``,
      the subnets' convs, ``cls_logits``/``bbox_pred`` channels, anchor sizes;
    - an FPN, or a module holding one: see :func:`fpn_block`.
    """
    if _is_two_stage(model):
        return _two_stage_numbers(model)
    if _is_retinanet(model):
        return _retinanet_numbers(model)
    return _fpn_numbers(model)


def _check(model: object, name: str, test, wanted: str) -> None:
    if not test(model):
        raise TypeError(f"{name} must be {wanted}, got {type(model).__name__}")


# ---------------------------------------------------------------- drawing primitives (units: inches)


@dataclasses.dataclass(frozen=True)
class _Node:
    """A drawn box: centre and size in inches, with the midpoints of its four sides."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)


def _canvas(height: float, title: str):
    """A WIDTH x ``height`` in Figure with one frameless axes whose data units are inches, titled."""
    figure = Figure(figsize=(WIDTH, height))
    ax = figure.add_axes((0, 0, 1, (height - TITLE_BAND) / height))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height - TITLE_BAND)
    ax.set_axis_off()
    ax.set_title(title, fontsize=TITLE_FONT)
    return figure, ax


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str, edge: str = INK,
         dashed: bool = False) -> _Node:
    """A rounded box centred at (x, y) with centred text."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=colour, edgecolor=edge, linewidth=1.1, linestyle="--" if dashed else "-"))
    ax.text(x, y, text, ha="center", va="center", fontsize=FONT, linespacing=1.3)
    return _Node(x, y, w, h)


def _arrow(ax, *points: tuple[float, float], colour: str = INK, dashed: bool = False) -> None:
    """An arrow along the polyline ``points``, its head at the last point."""
    ax.add_patch(FancyArrowPatch(path=Path(points), arrowstyle="-|>", mutation_scale=12, color=colour,
                                 linewidth=1.2, linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0))


def _label(ax, x: float, y: float, text: str, ha: str = "center", va: str = "center", colour: str = INK,
           **kwargs) -> None:
    ax.text(x, y, text, ha=ha, va=va, fontsize=FONT, color=colour, linespacing=1.25, **kwargs)


def _link(ax, a: _Node, b: _Node, text: str | None = None, **kwargs) -> None:
    """A horizontal arrow from ``a``'s right side to ``b``'s left side, ``text`` above its middle."""
    start, end = a.right, (b.left[0], a.y)
    _arrow(ax, start, end, **kwargs)
    if text:
        _label(ax, (start[0] + end[0]) / 2, a.y + 0.07, text, va="bottom")


def _plus(ax, x: float, y: float, r: float = 0.13) -> _Node:
    """A circled '+' (an element-wise sum)."""
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=INK, linewidth=1.1))
    _label(ax, x, y, "+", fontweight="bold")
    return _Node(x, y, 2 * r, 2 * r)


def _kernel(conv: dict) -> str:
    return f"{conv['kernel']}×{conv['kernel']}"


def _class_list(labels: list[int]) -> str:
    """``[1, 2, 3, 4, 7]`` -> ``"1-4, 7"``; a count when even that is long."""
    runs: list[list[int]] = []
    for c in sorted(labels):
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)
    return text if len(text) <= 40 else f"{len(labels)} classes"


def _shape(*dims) -> str:
    return "×".join(str(d) for d in dims)


def _upper(name: str) -> str:
    return name.upper() if level_of(name) is not None else name


def _levels(entries: list[dict]) -> str:
    return f"{_upper(entries[0]['name'])}..{_upper(entries[-1]['name'])}"


# ---------------------------------------------------------------- the diagrams

PAPERS = dict(FasterRCNN="Ren et al. 2015, Fig. 2; Lin et al. 2017", MaskRCNN="He et al. 2017, Fig. 1",
              MaskXRCNN="He et al. 2017, Fig. 1; Hu et al. 2018")
NAMES = dict(FasterRCNN="Faster R-CNN with an FPN", MaskRCNN="Mask R-CNN", MaskXRCNN="Mask^X R-CNN")


def _mask_predictor_text(mask: dict) -> str:
    """How the mask branch turns 28x28 features into logits: its own 1x1 conv, or tau = T(omega)."""
    res, channels = mask["resolution"], mask["deconv"]["out_channels"]
    plural = "s" if mask["logits"] > 1 else ""
    lines = [f"deconv ×{mask['deconv']['stride']} → {_shape(res, res, channels)}",
             f"1×1 conv{', τ = T(ω)' if mask['transfer'] else ''} → {mask['logits']} mask{plural}"]
    if mask["mlp"] is not None:
        lines.append("+ a class-agnostic MLP mask")
    return "\n".join(lines)


def pipeline(model: nn.Module) -> Figure:
    """A two-stage detector at a glance: image -> backbone -> FPN -> RPN -> RoIAlign -> heads -> detections.

    ``model``: an :class:`fpnbook.rcnn.FasterRCNN`, ``MaskRCNN`` or ``MaskXRCNN`` (anything
    with ``backbone``, ``rpn`` and ``roi_heads.box_predictor``). Numbers from
    :func:`describe`: C2..C5 channels and strides from the body (``backbone.backbone``),
    the pyramid's level names, strides and channels from ``backbone``, ``A`` and the
    anchor sizes from ``rpn.anchor_generator``, proposal counts (test time) and NMS IoU
    from the RPN, pooling sizes and levels from the RoI poolers, fc sizes from the box
    head, ``K + 1`` and ``4(K + 1)`` from the box predictor, and the mask branch's
    convs, deconv and mask count. A Faster R-CNN has no mask row.
    """
    _check(model, "model", _is_two_stage, "a two-stage detector (fpnbook.rcnn.FasterRCNN, MaskRCNN or MaskXRCNN)")
    d = describe(model)
    C, mask, K = d["channels"], d["mask"], d["num_classes"]
    height = 5.3 if mask else 4.2
    kind = d["kind"] if d["kind"] in NAMES else "FasterRCNN"
    figure, ax = _canvas(height, f"{NAMES[kind]} end to end, with this model's numbers (cf. {PAPERS[kind]})")
    top = height - TITLE_BAND - 0.75
    image = _box(ax, 0.55, top, 0.9, 0.75, "image\n[3, H, W]", COLOURS["output"])
    body = "\n".join(f"{_upper(c['name'])}: {c['channels']} ch, stride {c['stride']}" for c in d["body"])
    backbone = _box(ax, 2.2, top, 1.9, 1.2, f"backbone (bottom-up)\n{body}", COLOURS["backbone"])
    levels = ", ".join(_upper(level["name"]) for level in d["levels"])
    strides = ", ".join(str(level["stride"]) for level in d["levels"])
    fpn = _box(ax, 4.45, top, 2.05, 1.2, f"FPN (top-down)\n{levels}\n{C} ch each\nstrides {strides}", COLOURS["fpn"])
    a, rpn = d["anchors"], d["rpn"]
    sizes = [s for level in a["sizes"] for s in level]
    rpn_box = _box(ax, 7.5, top, 3.2, 1.2, (
        f"RPN on every level: {_kernel(rpn['conv'])} conv, then per pixel\n"
        f"objectness A = {rpn['objectness']}, deltas 4A = {rpn['deltas']}\n"
        f"anchors {sizes[0]:g}..{sizes[-1]:g} px × {len(a['aspect_ratios'])} ratios\n"
        f"top {rpn['pre_nms']['testing']} per level, NMS {rpn['nms']:g}\n"
        f"→ {rpn['post_nms']['testing']} proposals per image (test)"), COLOURS["rpn"])
    for left, right in ((image, backbone), (backbone, fpn), (fpn, rpn_box)):
        _link(ax, left, right)
    rows = [top - 2.15, top - 3.45] if mask else [top - 2.3]
    span, mid = (rows[0] - rows[-1]) + 1.0, (rows[0] + rows[-1]) / 2
    pool = d["box_pool"]
    sizes_text = f"{_shape(pool['size'], pool['size'])} for boxes" + (
        f"\n{_shape(mask['pool'], mask['pool'])} for masks" if mask else "")
    roi = _box(ax, 1.1, mid, 1.8, span, f"RoIAlign\non {_levels([dict(name=n) for n in pool['levels']])}: each\n"
               f"RoI on the level\nof its size\n{sizes_text}", COLOURS["roi"])
    feature_y, proposal_y = top - 0.95, top - 1.35
    _arrow(ax, fpn.bottom, (fpn.x, feature_y), (0.75, feature_y), (0.75, roi.top[1]))
    _label(ax, 2.6, feature_y + 0.05, "features", va="bottom")
    _arrow(ax, rpn_box.bottom, (rpn_box.x, proposal_y), (1.45, proposal_y), (1.45, roi.top[1]))
    _label(ax, 5.6, proposal_y + 0.05, "proposals", va="bottom")
    (fc6_in, fc6), (_, fc7) = d["box_head"]
    head = _box(ax, 3.85, rows[0], 1.9, 0.85, f"box head\nfc {fc6_in} → {fc6}\nfc {fc6} → {fc7}", COLOURS["head"])
    out = _box(ax, 6.25, rows[0], 2.2, 0.85, f"class scores K+1 = {d['cls_logits']}\n"
               f"box deltas 4(K+1) = {d['box_deltas']}", COLOURS["head"])
    det = d["detections"]
    dets = _box(ax, 8.6, mid, 1.55, span, f"detections\n(K = {K} classes)\nscore > {det['score']:g}\n"
                f"NMS {det['nms']:g} per\nclass, best {det['top']}", COLOURS["output"])
    _arrow(ax, (roi.right[0], rows[0]), head.left)
    _link(ax, head, out)
    _arrow(ax, out.right, (dets.left[0], rows[0]))
    if mask:
        convs = mask["convs"]
        m_head = _box(ax, 3.85, rows[1], 1.9, 0.85, f"mask head\n{len(convs)} × conv {_kernel(convs[0])}, "
                      f"{convs[-1]['out_channels']} ch\non {_shape(mask['pool'], mask['pool'])}", COLOURS["mask"])
        m_out = _box(ax, 6.25, rows[1], 2.2, 0.85, _mask_predictor_text(mask), COLOURS["mask"])
        _arrow(ax, (roi.right[0], rows[1]), m_head.left)
        _link(ax, m_head, m_out)
        _arrow(ax, m_out.right, (dets.left[0], rows[1]))
    return figure


def _pyramid(ax, f: dict, xs: tuple[float, float, float], bottom: float, dy: float, compact: bool) -> dict:
    """Bottom-up maps, laterals, top-down sums and outputs, one row per level; returns the output nodes by name.

    ``xs``: the x of the C column, of the sums, and of the P column. ``compact`` drops
    the per-arrow labels (for :func:`retinanet`, where the pyramid is one part of many).
    """
    x_c, x_sum, x_p = xs
    inputs, outputs = f["unused"] + f["inputs"], f["outputs"]
    low = min(level_of(m["name"]) for m in inputs + outputs)
    row = {m["name"]: bottom + (level_of(m["name"]) - low) * dy for m in inputs + outputs}
    w_c, w_p = (1.3, 1.35) if compact else (1.75, 1.75)
    c_nodes, p_nodes, previous = {}, {}, None
    for i, m in enumerate(inputs):
        unused = m in f["unused"]
        text = f"{_upper(m['name'])}: {m['channels']} ch" + ("" if compact else f", stride {m['stride']}")
        node = _box(ax, x_c, row[m["name"]], w_c - 0.08 * i, 0.42, text + (", unused" if unused else ""),
                    COLOURS["unused" if unused else "backbone"], dashed=unused)
        if previous is not None:
            _arrow(ax, previous.top, node.bottom)
        c_nodes[m["name"]], previous = node, node
    for i, m in enumerate(outputs):
        text = f"{_upper(m['name'])}: {m['channels']} ch, stride {m['stride']}" if not compact else \
            f"{_upper(m['name'])}, stride {m['stride']}"
        p_nodes[m["name"]] = _box(ax, x_p, row[m["name"]], w_p - 0.08 * i, 0.42, text, COLOURS["fpn"])
    n = len(f["inputs"])
    for i in reversed(range(n)):
        c, p = c_nodes[f["inputs"][i]["name"]], p_nodes[outputs[i]["name"]]
        lateral, top_level = f["laterals"][i], i == n - 1
        summed = f["top_down"] and not top_level and lateral is not None
        node = _plus(ax, x_sum, c.y) if summed else _Node(x_sum, c.y, 0, 0)
        if lateral is not None:
            _arrow(ax, c.right, node.left)
            if not compact:
                _label(ax, (c.right[0] + x_sum) / 2, c.y + 0.07, f"{_kernel(lateral)} conv, {lateral['in_channels']}→"
                       f"{lateral['out_channels']}", va="bottom")
        _arrow(ax, node.right, p.left)
        smooth = f["smooth"][i]
        if not compact:
            _label(ax, (x_sum + p.left[0]) / 2, c.y + 0.07, f"{_kernel(smooth)} conv, {smooth['in_channels']}→"
                   f"{smooth['out_channels']}", va="bottom")
        if f["top_down"] and not top_level:
            above = row[f["inputs"][i + 1]["name"]]
            start = (x_sum, above - (0.13 if i + 1 < n - 1 and f["laterals"][i + 1] is not None else 0))
            _arrow(ax, start, node.top)
            if not compact or i == n - 2:
                _label(ax, x_sum + 0.1, (start[1] + node.top[1]) / 2, f"{f['upsample']}× up"
                       + ("" if compact else ", nearest"), ha="left")
    _extra_levels(ax, f, c_nodes, p_nodes, compact)
    return p_nodes


def _extra_levels(ax, f: dict, c_nodes: dict, p_nodes: dict, compact: bool) -> None:
    """P6 (and P7) above the pyramid: max-pooled from P5, or strided 3x3 convs from C5 or P5."""
    extra, outputs = f["extra"], f["outputs"]
    if extra is None:
        return
    n = len(f["inputs"])
    p6 = p_nodes[outputs[n]["name"]]
    if extra["kind"] == "maxpool":
        below = p_nodes[outputs[n - 1]["name"]]
        _arrow(ax, below.top, p6.bottom)
        _label(ax, p6.x - 0.1, (below.top[1] + p6.bottom[1]) / 2, "max-pool, stride 2", ha="right")
        return
    conv6, conv7 = extra["p6"], extra["p7"]
    source = c_nodes.get(extra["source"]) or p_nodes.get(extra["source"])
    if extra["source"] in c_nodes:
        _arrow(ax, source.top, (source.x, p6.y), p6.left)
        if not compact:
            _label(ax, (source.x + p6.left[0]) / 2, p6.y + 0.07,
                   f"{_kernel(conv6)} conv, stride {conv6['stride']}, {conv6['in_channels']}→{conv6['out_channels']}",
                   va="bottom")
    else:
        _arrow(ax, source.top, p6.bottom)
        _label(ax, p6.x - 0.1, (source.top[1] + p6.bottom[1]) / 2, f"{_kernel(conv6)} conv, stride {conv6['stride']}", ha="right")
    p7 = p_nodes[outputs[n + 1]["name"]]
    _arrow(ax, p6.top, p7.bottom)
    text = f"ReLU, {_kernel(conv7)} conv, stride {conv7['stride']}, {conv7['in_channels']}→{conv7['out_channels']}"
    _label(ax, p7.x - 0.1, (p6.top[1] + p7.bottom[1]) / 2, "ReLU, conv /2" if compact else text, ha="right")


def fpn_block(model_or_fpn: nn.Module) -> Figure:
    """The FPN as in its paper's Fig. 3: bottom-up C maps, lateral 1x1 convs, top-down 2x upsampling and
    sums, 3x3 smoothing convs, outputs P, and the extra levels (P6 by max-pooling, or RetinaNet's P6, P7).

    ``model_or_fpn``: an :class:`fpnbook.fpn.FPN`, a :class:`~fpnbook.fpn.BackboneWithFPN`,
    an :class:`fpnbook.rcnn.RPNModel`, or a detector whose ``backbone`` is a
    ``BackboneWithFPN``. Channels of each C map and of each conv are read from the convs
    themselves (``fpn.lateral[i]``, ``fpn.smooth[i]``, ``extra_blocks.p6/p7``), names and
    strides from the body's ``names``/``strides`` and the wrapper's ``in_names`` (a bare
    FPN's inputs are drawn as C(6-n)..C5). Maps of the body that the FPN does not read
    (RetinaNet's C2) are drawn dashed. The FPN's ablation switches (``top_down``,
    ``lateral``) drop the arrows they remove.
    """
    f = _fpn_numbers(model_or_fpn)  # raises TypeError naming model_or_fpn
    levels = {level_of(m["name"]) for m in f["unused"] + f["inputs"] + f["outputs"]}
    dy = 0.78
    height = TITLE_BAND + 0.75 + (max(levels) - min(levels)) * dy + 0.55
    ablation = "" if f["top_down"] and f["lateral"] else (
        " - without the top-down pathway" if not f["top_down"] else " - without lateral connections")
    figure, ax = _canvas(height, f"The FPN block with this model's channels (cf. Lin et al. 2017, FPN Fig. 3){ablation}")
    _pyramid(ax, f, (1.3, 5.0, 8.1), 0.4, dy, compact=False)
    top = height - TITLE_BAND - 0.3
    for x, text in ((1.3, "bottom-up pathway"), (5.0, "top-down pathway"), (8.1, "outputs, one per level")):
        _label(ax, x, top, text, fontweight="bold")
    return figure


def _subnet(ax, y: float, name: str, convs: list[dict], norm: str | None, out: dict, out_text: str) -> None:
    """One RetinaNet subnet as in the paper: W×H×C -> (×n convs) -> W×H×C -> W×H×out (``out``: the last conv)."""
    C = convs[0]["in_channels"] if convs else None
    _label(ax, 4.1, y + 0.5, name, ha="left", fontweight="bold")
    first = _box(ax, 4.55, y, 0.95, 0.5, f"W×H×{C}", COLOURS["fpn"])
    middle = _box(ax, 6.35, y, 0.95, 0.5, f"W×H×{convs[-1]['out_channels'] if convs else C}", COLOURS["head"])
    last = _box(ax, 8.55, y, 1.5, 0.66, f"W×H×{out_text}\n= {out['out_channels']} channels", COLOURS["head"])
    _link(ax, first, middle, f"×{len(convs)}")
    trunk = f"{_kernel(convs[0])} conv\n" if convs else ""
    _label(ax, 5.45, y - 0.08, trunk + ("+ GN " if norm == "GroupNorm" else "") + "+ ReLU", va="top")
    _link(ax, middle, last, f"{_kernel(out)} conv")


def retinanet(model: nn.Module) -> Figure:
    """RetinaNet as in the focal loss paper's Fig. 3: the pyramid P3..P7 and the class and box subnets.

    ``model``: an :class:`fpnbook.retinanet.RetinaNet`. Read from it: the body's C maps
    and the FPN's levels (as :func:`fpn_block`), the subnets' conv count and channels
    (``head.cls_subnet`` / ``head.box_subnet``) and norm, ``A`` (``head.num_anchors``),
    ``K`` (``head.num_classes``), the output channels of ``head.cls_logits`` (K·A) and
    ``head.bbox_pred`` (4A), and the anchor sizes per level (``anchor_generator``).
    """
    _check(model, "model", _is_retinanet, "a RetinaNet (fpnbook.retinanet.RetinaNet)")
    d = describe(model)
    f, K, A = d["fpn"], d["num_classes"], d["anchors_per_location"]
    levels = {level_of(m["name"]) for m in f["unused"] + f["inputs"] + f["outputs"]}
    dy = 0.62
    height = TITLE_BAND + 0.55 + (max(levels) - min(levels)) * dy + 1.2
    figure, ax = _canvas(height, "RetinaNet with this model's numbers (cf. Lin et al. 2017, focal loss Fig. 3)")
    p_nodes = _pyramid(ax, f, (0.75, 1.9, 2.95), 0.95, dy, compact=True)
    top = height - TITLE_BAND - 0.25
    for x, text in ((0.75, "(a) ResNet"), (2.95, "(b) FPN")):
        _label(ax, x, top, text, fontweight="bold")
    ys = [node.y for node in p_nodes.values()]
    bus = 3.8
    ax.plot([bus, bus], [min(ys), max(ys)], color=INK, linewidth=1.2)
    for node in p_nodes.values():
        ax.plot([node.right[0], bus], [node.y, node.y], color=INK, linewidth=1.2)
    upper, lower = max(ys) - 0.4, min(ys) + 0.3
    _subnet(ax, upper, "(c) class subnet", d["cls_convs"], d["norm"], d["cls_logits"], f"KA\n(K·A = {K}·{A})")
    _subnet(ax, lower, "(d) box subnet", d["box_convs"], d["norm"], d["bbox_pred"], f"4A\n(4A = 4·{A})")
    for y in (upper, lower):
        _arrow(ax, (bus, y), (4.075, y))
    sizes, names = d["anchor_sizes"], [_upper(m["name"]) for m in f["outputs"]]
    _label(ax, 0.1, 0.35, f"A = {A} anchors per location: {len(d['aspect_ratios'])} aspect ratios × {d['scales']} "
           f"scales ({sizes[0][0]}..{sizes[0][-1]} px on {names[0]}, up to {sizes[-1][0]}..{sizes[-1][-1]} px on "
           f"{names[-1]}).\nK = {K} classes, one sigmoid each (no background class); both subnets are shared by "
           f"every level.", ha="left")
    return figure


def _losses(ax, x: float, rows: list[tuple[float, str]]) -> list[_Node]:
    return [_box(ax, x, y, 1.8, 0.52, text, COLOURS["loss"], edge=LOSS_EDGE) for y, text in rows]


def mask_rcnn_heads(model: nn.Module) -> Figure:
    """Mask R-CNN's heads as in its paper's Fig. 4 (right), with the RPN in front and the five losses.

    ``model``: an :class:`fpnbook.rcnn.MaskRCNN` (or ``MaskXRCNN``). Read from it (via
    :func:`describe`): the pyramid levels and channels, the RPN head's conv, ``A`` and
    ``4A`` (``rpn.head.objectness`` / ``deltas``) and its sampled anchors, the RoIAlign
    sizes (``roi_heads.box_roi_pool`` / ``mask_roi_pool``), ``fc6``/``fc7`` sizes, ``K+1``
    and ``4(K+1)`` (``box_predictor``), the RoIs sampled per image, the mask head's
    convs, the ``conv5_mask`` deconv and the mask logit channels.
    """
    _check(model, "model", _is_two_stage, "a Mask R-CNN (fpnbook.rcnn.MaskRCNN)")
    d = describe(model)
    mask, C, rpn = d["mask"], d["channels"], d["rpn"]
    if mask is None:
        raise ValueError(f"model ({d['kind']}) has no mask branch; draw it with diagrams.pipeline(model)")
    figure, ax = _canvas(5.3, "Mask R-CNN's heads with this model's numbers, the RPN in front "
                               "(cf. He et al. 2017, Fig. 4 right)")
    ya, yb, yc = 4.2, 2.6, 1.05
    levels = _box(ax, 0.8, ya, 1.3, 0.6, f"{_levels(d['levels'])}\n{C} ch", COLOURS["fpn"])
    conv = rpn["conv"]
    head = _box(ax, 2.75, ya, 1.85, 0.6, f"RPN head\n{_kernel(conv)} conv {conv['in_channels']}→{conv['out_channels']}",
                COLOURS["rpn"])
    obj = _box(ax, 5.35, ya + 0.33, 1.75, 0.5, f"objectness: A = {rpn['objectness']}", COLOURS["rpn"])
    deltas = _box(ax, 5.35, ya - 0.33, 1.75, 0.5, f"deltas: 4A = {rpn['deltas']}", COLOURS["rpn"])
    _link(ax, levels, head)
    for node in (obj, deltas):
        _arrow(ax, head.right, (head.right[0] + 0.2, head.y), (head.right[0] + 0.2, node.y), node.left)
    k = d["num_classes"]
    l_obj, l_rbox, l_cls, l_box, l_mask = _losses(ax, 8.58, [
        (obj.y, f"L_obj: BCE over {rpn['sampled']}\nsampled anchors"),
        (deltas.y, "L_rpn_box: smooth L1\non positive anchors"),
        (yb + 0.33, f"L_cls: cross-entropy\nover {d['rois_sampled']} RoIs / image"),
        (yb - 0.33, "L_box: smooth L1 on\nthe true class's deltas"),
        (yc, "L_mask: sigmoid BCE on\nthe true class's mask"),
    ])
    for a, b in ((obj, l_obj), (deltas, l_rbox)):
        _arrow(ax, a.right, b.left, dashed=True, colour=LOSS_EDGE)
    box_pool, res, pool = d["box_pool"]["size"], mask["resolution"], mask["pool"]
    roi7 = _box(ax, 0.75, yb, 1.2, 0.6, f"RoIAlign\n{_shape(box_pool, box_pool, C)}", COLOURS["roi"])
    roi14 = _box(ax, 0.75, yc, 1.2, 0.6, f"RoIAlign\n{_shape(pool, pool, C)}", COLOURS["roi"])
    y_rois = (ya + yb) / 2 - 0.1
    _arrow(ax, deltas.bottom, (deltas.x, y_rois), (roi7.x, y_rois), roi7.top)
    _arrow(ax, (0.08, y_rois), (0.08, yc), roi14.left)
    ax.plot([0.08, roi7.x], [y_rois, y_rois], color=INK, linewidth=1.2)
    _label(ax, 3.2, y_rois + 0.05, f"proposals → RoIs, pooled from {_levels([dict(name=n) for n in d['box_pool']['levels']])}",
           va="bottom")
    (_, fc6), (_, fc7) = d["box_head"]
    n6 = _box(ax, 2.4, yb, 0.8, 0.6, f"fc6\n{fc6}", COLOURS["head"])
    n7 = _box(ax, 3.55, yb, 0.8, 0.6, f"fc7\n{fc7}", COLOURS["head"])
    cls = _box(ax, 5.35, yb + 0.33, 1.75, 0.5, f"class: K+1 = {d['cls_logits']}", COLOURS["head"])
    box = _box(ax, 5.35, yb - 0.33, 1.75, 0.5, f"box: 4(K+1) = {d['box_deltas']}", COLOURS["head"])
    _link(ax, roi7, n6)
    _link(ax, n6, n7)
    for node in (cls, box):
        _arrow(ax, n7.right, (n7.right[0] + 0.2, n7.y), (n7.right[0] + 0.2, node.y), node.left)
    for a, b in ((cls, l_cls), (box, l_box)):
        _arrow(ax, a.right, b.left, dashed=True, colour=LOSS_EDGE)
    convs, up = mask["convs"], mask["deconv"]["out_channels"]
    m1 = _box(ax, 2.6, yc, 1.1, 0.6, _shape(pool, pool, convs[-1]["out_channels"]), COLOURS["mask"])
    m2 = _box(ax, 4.5, yc, 1.1, 0.6, _shape(res, res, up), COLOURS["mask"])
    m3 = _box(ax, 6.45, yc, 1.3, 0.6, _shape(res, res, mask["logits"]) + ("\nτ = T(ω)" if mask["transfer"] else ""),
              COLOURS["mask"])
    _link(ax, roi14, m1, f"×{len(convs)}")
    _label(ax, (roi14.right[0] + m1.left[0]) / 2, yc - 0.08, f"{_kernel(convs[0])} conv", va="top")
    _link(ax, m1, m2, f"deconv ×{mask['deconv']['stride']}")
    _link(ax, m2, m3, "1×1 conv")
    _arrow(ax, m3.right, l_mask.left, dashed=True, colour=LOSS_EDGE)
    _label(ax, 0.1, 0.2, f"K = {k} classes. Solid arrows: the forward pass; dashed: what each loss reads "
           "(training only).",
           ha="left")
    return figure


OMEGA_ROWS = {"cls": "R", "box": "4R", "cls+box": "5R"}


def _stop_gradient(ax, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Two red bars across the middle of a horizontal arrow, and the words."""
    x, y = (start[0] + end[0]) / 2, start[1]
    for dx in (-0.04, 0.04):
        ax.plot([x + dx - 0.05, x + dx + 0.05], [y - 0.13, y + 0.13], color=STOP, linewidth=2)
    _label(ax, x, y + 0.17, "stop-gradient", va="bottom", colour=STOP)


def mask_x(model: nn.Module) -> Figure:
    """Mask^X R-CNN's weight transfer as in Hu et al. 2018, Fig. 2: ω_det -> T -> τ -> the mask's 1x1 conv.

    ``model``: an :class:`fpnbook.rcnn.MaskXRCNN` (a model whose mask predictor is a
    :class:`~fpnbook.weight_transfer.TransferMaskPredictor`, possibly inside a
    ``FusedMaskPredictor``). Read from it: the box head's sizes and ``K+1`` / ``4(K+1)``,
    which box weights T reads (``transfer.inputs``), T's kind and layer sizes
    (``transfer.layers``), ``stop_gradient`` (drawn on the ω_det -> T arrow when on),
    the mask head, deconv and mask count, the class-agnostic MLP branch's sizes when
    there is one, and ``model.mask_classes`` (the classes A with masks).
    """
    _check(model, "model", _is_two_stage, "a Mask^X R-CNN (fpnbook.rcnn.MaskXRCNN)")
    d = describe(model)
    mask = d["mask"]
    if mask is None or mask["transfer"] is None:
        raise ValueError(f"model ({d['kind']}) has no weight transfer in its mask branch; build it with "
                         "fpnbook.rcnn.to_mask_x or models.build(ModelConfig(kind='mask_x_rcnn', ...))")
    t, mlp, C, R = mask["transfer"], mask["mlp"], d["channels"], d["representation"]
    figure, ax = _canvas(5.6, "Mask^X R-CNN: mask weights predicted from box weights, with this model's numbers "
                              "(cf. Hu et al. 2018, Fig. 2)")
    y1, y2, y3, y4 = 4.45, 3.25, 1.95, 0.95
    box_pool, pool, res = d["box_pool"]["size"], mask["pool"], mask["resolution"]
    xs, ws = (0.75, 2.4, 4.35, 7.3), (1.2, 1.4, 1.9, 2.0)
    roi7 = _box(ax, xs[0], y1, ws[0], 0.6, f"RoIAlign\n{_shape(box_pool, box_pool, C)}", COLOURS["roi"])
    (_, fc6), (_, fc7) = d["box_head"]
    head = _box(ax, xs[1], y1, ws[1], 0.6, f"box head\nfc {fc6}, fc {fc7}", COLOURS["head"])
    predictor = _box(ax, xs[2], y1, ws[2], 0.6, f"box predictor, R = {R}\n→ K+1 = {d['cls_logits']} classes",
                     COLOURS["head"])
    boxes = _box(ax, xs[3], y1, ws[3], 0.6, f"class scores, {d['cls_logits']}\nbox deltas, {d['box_deltas']}",
                 COLOURS["output"])
    for a, b in ((roi7, head), (head, predictor), (predictor, boxes)):
        _link(ax, a, b)
    omega = _box(ax, xs[2], y2, ws[2], 0.6, f"ω_det: {t['inputs']} weights\n[K+1, {OMEGA_ROWS[t['inputs']]}] = "
                 f"[{t['num_logits']}, {t['sizes'][0]}]", COLOURS["transfer"])
    sizes = " → ".join(str(s) for s in t["sizes"])
    T = _box(ax, xs[3], y2, ws[3], 0.6, f"T: {'MLP, LeakyReLU' if t['kind'] == 'mlp' else 'linear'}\n{sizes}",
             COLOURS["transfer"])
    _arrow(ax, predictor.bottom, omega.top)
    _label(ax, omega.x + 0.1, (predictor.bottom[1] + omega.top[1]) / 2, "its weights", ha="left")
    _link(ax, omega, T)
    if t["stop_gradient"]:
        _stop_gradient(ax, omega.right, T.left)
    roi14 = _box(ax, xs[0], y3, ws[0], 0.6, f"RoIAlign\n{_shape(pool, pool, C)}", COLOURS["roi"])
    m_head = _box(ax, xs[1], y3, ws[1], 0.6, f"mask head\n{len(mask['convs'])} × conv {_kernel(mask['convs'][0])}", COLOURS["mask"])
    up = _box(ax, xs[2], y3, ws[2], 0.6, f"deconv ×{mask['deconv']['stride']}\n→ "
              f"{_shape(res, res, mask['deconv']['out_channels'])}", COLOURS["mask"])
    logits = _box(ax, xs[3], y3, ws[3], 0.6, f"1×1 conv, weights τ\n→ {_shape(res, res, t['num_logits'])}",
                  COLOURS["mask"])
    for a, b in ((roi14, m_head), (m_head, up), (up, logits)):
        _link(ax, a, b)
    _arrow(ax, T.bottom, logits.top)
    _label(ax, T.x + 0.1, (T.bottom[1] + logits.top[1]) / 2, f"τ: [K+1, {t['sizes'][-1]}]", ha="left")
    masks = _box(ax, 8.9, y4, 1.0, 0.6, f"masks\n{_shape(res, res, t['num_logits'])}", COLOURS["output"])
    if mlp is None:
        _arrow(ax, logits.bottom, (logits.x, y4), masks.left)
    else:
        plus = _plus(ax, logits.x, y4)
        _arrow(ax, logits.bottom, plus.top)
        _arrow(ax, plus.right, masks.left)
        fc_in, fc_out = mlp["fc"]
        branch = _box(ax, 4.35, y4, 3.0, 0.6, f"class-agnostic MLP: 1×1 conv {mlp['in_channels']}→"
                      f"{mlp['reduced']}, pool {mlp['pooled']}×{mlp['pooled']},\nfc {fc_in}→{fc_out} = "
                      f"{_shape(mlp['resolution'], mlp['resolution'])}, added to every class", COLOURS["mask"])
        _arrow(ax, m_head.bottom, (m_head.x, branch.y), branch.left)
        _arrow(ax, branch.right, plus.left)
    a_classes = _class_list(d["mask_classes"] or [])
    b_classes = _class_list([c for c in range(1, d["num_classes"] + 1) if c not in (d["mask_classes"] or [])])
    _label(ax, 0.1, 0.25, f"Classes with masks (A): {a_classes or 'all'}; box-only classes (B): {b_classes or 'none'}. "
           "L_mask trains T on A; B's masks use τ = T(ω_det) alone.", ha="left")
    return figure
