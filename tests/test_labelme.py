import json

import numpy as np
import pytest
from PIL import Image

from fpnbook.data import CocoDataset
from fpnbook.labelme import labelme_to_coco


def write_labelme(folder, name, shapes, size=(40, 60)):
    Image.new("RGB", (size[1], size[0]), "white").save(folder / f"{name}.png")
    record = {"imagePath": f"{name}.png", "imageHeight": size[0], "imageWidth": size[1], "shapes": shapes}
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_polygons_rectangles_and_circles_become_a_loadable_coco_file(tmp_path):
    write_labelme(tmp_path, "a", [
        {"label": "cat", "shape_type": "polygon", "points": [[10, 10], [30, 10], [30, 20], [10, 20]]},
        {"label": "dog", "shape_type": "rectangle", "points": [[50, 30], [40, 5]]},
    ])
    write_labelme(tmp_path, "b", [{"label": "cat", "shape_type": "circle", "points": [[20, 20], [28, 20]]}])
    write_labelme(tmp_path, "empty", [])
    out = labelme_to_coco(tmp_path, tmp_path / "coco.json")
    dataset = CocoDataset(tmp_path, out)
    assert dataset.class_names == ["background", "cat", "dog"]
    image, target = dataset[0]
    assert target["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(target["boxes"][0].tolist(), [10, 10, 30, 20], atol=1)
    np.testing.assert_allclose(target["boxes"][1].tolist(), [40, 5, 50, 30], atol=1)
    assert int(target["masks"][0].sum()) == pytest.approx(20 * 10, rel=0.15)
    _, circle = dataset[1]
    assert int(circle["masks"][0].sum()) == pytest.approx(np.pi * 8**2, rel=0.15)
    assert len(dataset[2][1]["labels"]) == 0


def test_refuses_overwrite_and_bad_input(tmp_path):
    write_labelme(tmp_path, "a", [{"label": "cat", "points": [[1, 1], [5, 1], [5, 5]]}])
    out = labelme_to_coco(tmp_path, tmp_path / "out" / "coco.json")
    with pytest.raises(FileExistsError, match="coco.json"):
        labelme_to_coco(tmp_path, out)
    with pytest.raises(ValueError, match=r"labels \['cat'\]"):
        labelme_to_coco(tmp_path, out, class_names=["dog"], overwrite=True)
    with pytest.raises(FileNotFoundError):
        labelme_to_coco(tmp_path / "nope", tmp_path / "x.json")
    write_labelme(tmp_path, "bad", [{"label": "cat", "shape_type": "linestrip", "points": [[1, 1], [2, 2]]}])
    with pytest.raises(ValueError, match="linestrip"):
        labelme_to_coco(tmp_path, out, overwrite=True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        labelme_to_coco(tmp_path, out, overwrite=True)
