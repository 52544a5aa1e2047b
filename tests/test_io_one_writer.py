"""Images and transforms are written by the project's one atomic writer (outputs.atomic_write),
without a staging folder inside another one."""
import os
import tempfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from miregister import outputs
from miregister.errors import OutputError
from miregister.image import Image
from miregister.grid import Grid
from miregister.io import write_image
from miregister.transforms import Affine, BSpline
from miregister.transforms.io import write_transform


def _image() -> Image:
    return Image(torch.arange(60, dtype=torch.float32).reshape(1, 3, 4, 5), Grid((5, 4, 3), (1.0, 2.0, 3.0)))


def _count_mkdtemp(monkeypatch) -> list:
    made = []
    original = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(k.get("prefix")) or original(*a, **k))
    return made


def test_image_inside_an_atomic_write_is_staged_once_with_its_data_file(tmp_path, monkeypatch):
    made = _count_mkdtemp(monkeypatch)
    target = tmp_path / "out" / "image.mhd"
    outputs.atomic_write(target, lambda staged: write_image(_image(), staged))
    assert len(made) == 1  # write_image wrote straight into the outer staging folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["image.mhd", "image.raw"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), _image().data[0].numpy())


def test_transforms_and_images_alone_are_staged_by_atomic_write(tmp_path, monkeypatch):
    made = _count_mkdtemp(monkeypatch)
    write_transform(Affine(3), tmp_path / "a.tfm")
    write_image(_image(), tmp_path / "b.nii.gz")
    assert made == [f"{outputs.STAGING_PREFIX}{os.getpid()}-"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfm", "b.nii.gz"]
    assert sitk.ReadTransform(str(tmp_path / "a.tfm")).GetDimension() == 3


def test_failed_transform_write_leaves_nothing_and_names_the_file(tmp_path, monkeypatch):
    grid = Grid((8, 8, 8), (2.0, 2.0, 2.0))
    original = sitk.WriteTransform

    def half_then_fail(transform, path):
        original(transform, path)  # a complete file in staging, then the "disk" fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sitk, "WriteTransform", half_then_fail)
    with pytest.raises(OutputError, match="cannot write output file .*t.h5.*no space left"):
        write_transform(BSpline(grid, 8.0), tmp_path / "t.h5", reference=grid)
    assert list(tmp_path.iterdir()) == []
