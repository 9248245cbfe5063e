"""Fixtures that more than one test module uses."""

import pytest

from fpnbook import shapes


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """Twelve 64 px generated images, written once per test module: (image_dir, ann_file)."""
    out = tmp_path_factory.mktemp("shapes")
    ann_file = shapes.generate_split(out, "val", 12, 64, seed=3, progress=False)
    return out / "val", ann_file
