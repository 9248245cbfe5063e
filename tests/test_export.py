"""ONNX export (`fpnbook.export`, `python -m fpnbook export`): onnxruntime gives the model's detections.

Each detector is exported once per module at 256 x 256 and run in onnxruntime on two
validation images. The tracer is given a black image, on which every shipped detector
finds nothing, so the match on real images also shows that the graph does not depend on
what the tracer saw.

Tolerances, measured on all 48 validation images with the four models (onnxruntime 1.32,
CPU): boxes differ by at most 7e-4 px, scores by 1.1e-5, mask probabilities by 7e-5, and
no label, count or order differs. A mask pixel whose probability is that close to 0.5 may
land on the other side of it (one pixel of a 62-pixel mask did there), so the mask IoU is
taken over the pixels whose probability is at least MASK_ATOL away from 0.5.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")

from fpnbook import export  # noqa: E402
from fpnbook.backbone import resnet_tiny  # noqa: E402
from fpnbook.checkpoint import load_model  # noqa: E402
from fpnbook.cli import main  # noqa: E402
from fpnbook.data import CocoDataset, val_paths  # noqa: E402
from fpnbook.files import atomic_save  # noqa: E402
from fpnbook.models import KINDS as MODEL_KINDS  # noqa: E402
from fpnbook.models import ModelConfig, build  # noqa: E402
from fpnbook.rcnn import RPNModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (256, 256)
BOX_ATOL = 1e-3  # pixels
SCORE_ATOL = 1e-4
MASK_ATOL = 1e-3  # probability
MASK_IOU = 0.99
KINDS = ("retinanet", "faster_rcnn", "mask_rcnn", "mask_x_rcnn")


@pytest.fixture(scope="module")
def models():
    loaded = {kind: load_model(ROOT / "checkpoints" / f"{kind}.pt")[0] for kind in ("retinanet", "mask_rcnn", "mask_x_rcnn")}
    # A Faster R-CNN with trained weights: the Mask R-CNN's, less its mask branch.
    faster = build(ModelConfig(kind="faster_rcnn"))
    missing, unexpected = faster.load_state_dict(loaded["mask_rcnn"].state_dict(), strict=False)
    assert not missing and all(".mask_" in key for key in unexpected)
    loaded["faster_rcnn"] = faster.eval()
    return loaded


@pytest.fixture(scope="module")
def images():
    dataset = CocoDataset(*val_paths())
    return [dataset[i][0].as_subclass(torch.Tensor) for i in range(2)]


@pytest.fixture(scope="module")
def sessions(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    black = torch.zeros(3, *SIZE)
    result = {}
    for kind, model in models.items():
        path = export.export_onnx(model, folder / f"{kind}.onnx", SIZE, example=black)
        result[kind] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return result


def run(session, image: torch.Tensor) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": image.numpy()})))


def decided_iou(reference: np.ndarray, other: np.ndarray) -> float:
    """IoU of two probability masks at 0.5, over the pixels ``reference`` decides by more than MASK_ATOL."""
    decided = np.abs(reference - 0.5) > MASK_ATOL
    a, b = (reference > 0.5) & decided, (other > 0.5) & decided
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_the_tracer_sees_no_detections(models):
    with torch.no_grad():
        for kind, model in models.items():
            assert len(model([torch.zeros(3, *SIZE)])[0]["boxes"]) == 0, kind


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_matches_pytorch(kind, models, sessions, images):
    session = sessions[kind]
    masks = kind in ("mask_rcnn", "mask_x_rcnn")
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [("image", [3, *SIZE], "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"] + ["masks"] * masks
    for image in images:
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in models[kind]([image])[0].items()}
        got = run(session, image)
        assert len(expected["labels"]) > 0
        np.testing.assert_array_equal(got["labels"], expected["labels"])
        np.testing.assert_allclose(got["boxes"], expected["boxes"], rtol=0, atol=BOX_ATOL)
        np.testing.assert_allclose(got["scores"], expected["scores"], rtol=0, atol=SCORE_ATOL)
        if masks:
            assert got["masks"].shape == expected["masks"].shape == (len(expected["labels"]), 1, *SIZE)
            np.testing.assert_allclose(got["masks"], expected["masks"], rtol=0, atol=MASK_ATOL)
            assert min(decided_iou(e, g) for e, g in zip(expected["masks"], got["masks"])) >= MASK_IOU


@pytest.mark.parametrize("kind", KINDS)
def test_no_detections_is_an_empty_answer(kind, sessions):
    got = run(sessions[kind], torch.zeros(3, *SIZE))
    assert got["boxes"].shape == (0, 4) and got["labels"].shape == (0,) and got["scores"].shape == (0,)
    assert got["labels"].dtype == np.int64
    if "masks" in got:
        assert got["masks"].shape == (0, 1, *SIZE)


def test_cli_exports_and_refuses_to_overwrite(tmp_path, capsys, models, images):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    argv = ["export", "--checkpoint", str(ROOT / "checkpoints" / "retinanet.pt"), "--onnx", str(out),
            "--image-size", "128", "96"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1 and out.read_bytes() == b"mine"
    assert main([*argv, "--overwrite"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left
    # Not square and not a multiple of 32: the graph pads as the model does.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 128, 96]
    crop = images[0][:, 64:192, 80:176].contiguous()
    with torch.no_grad():
        expected = models["retinanet"]([crop])[0]
    got = run(session, crop)
    assert len(expected["labels"]) > 0
    np.testing.assert_array_equal(got["labels"], expected["labels"].numpy())
    np.testing.assert_allclose(got["boxes"], expected["boxes"].numpy(), rtol=0, atol=BOX_ATOL)


def test_library_refuses_to_overwrite(tmp_path, models):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_onnx(models["retinanet"], out, SIZE)
    assert out.read_bytes() == b"mine"


def test_an_interrupted_export_keeps_the_old_file(tmp_path, models, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")

    def interrupted(*args, **kwargs):
        Path(args[2]).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_onnx(models["retinanet"], out, SIZE, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and out.read_bytes() == b"mine"
    assert not models["retinanet"].training


BAD_CLI = {
    "a side under 32": (["--image-size", "16", "256"], "--image-size"),
    "a side over the maximum": (["--image-size", "5000", "256"], "--image-size"),
    "one side": (["--image-size", "256"], "--image-size"),
    "not a number": (["--image-size", "a", "256"], "--image-size"),
}


@pytest.mark.parametrize("case", BAD_CLI)
def test_cli_bad_image_size_is_one_line(case, tmp_path, capsys):
    extra, match = BAD_CLI[case]
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ROOT / "checkpoints" / "retinanet.pt"), "--onnx", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_names_a_checkpoint_it_cannot_export(tmp_path, capsys):
    pretrainer = tmp_path / "pretrain.pt"
    atomic_save({"format": "fpnbook-checkpoint-1", "model": {}, "model_config": {"kind": "semantic_pretrainer"}}, pretrainer)
    for checkpoint, match in ((pretrainer, "'semantic_pretrainer' model"), (ROOT / "checkpoints" / "backbone.pt",
                                                                          "not an fpnbook checkpoint")):
        assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(tmp_path / "m.onnx")]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.onnx").exists()


def test_library_names_what_it_cannot_export(tmp_path, models):
    with pytest.raises(TypeError, match="cannot export a RPNModel"):
        export.export_onnx(RPNModel(resnet_tiny()), tmp_path / "rpn.onnx")
    for bad in ((16, 256), (256,), (256.0, 256), "256"):
        with pytest.raises(ValueError, match="image_size"):
            export.export_onnx(models["retinanet"], tmp_path / "m.onnx", bad)
    with pytest.raises(ValueError, match="example"):
        export.export_onnx(models["retinanet"], tmp_path / "m.onnx", SIZE, example=torch.zeros(3, 128, 128))
    assert not list(tmp_path.iterdir())


def test_every_model_kind_exports():
    assert export.EXPORT_KINDS == KINDS == MODEL_KINDS
