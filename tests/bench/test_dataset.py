"""Reading a labelled folder: manifest or class sub-folders, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlct.bench.dataset import DatasetError, load_dataset


def png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_manifest_gives_paths_labels_and_groups(image_folder):
    data = load_dataset(image_folder)
    assert data.classes == ("disc", "square")
    assert len(data) == 36
    assert data.class_counts() == {"disc": 18, "square": 18}
    assert data.groups[0] == data.groups[1] == "disc-patient-0"
    assert data.file(0).is_file()


def test_class_folders_without_manifest_make_one_group_per_file(tmp_path):
    png(tmp_path / "b" / "x.png")
    png(tmp_path / "a" / "deeper" / "y.png")
    png(tmp_path / "a" / "z.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.classes == ("a", "b")
    assert data.paths == ("a/deeper/y.png", "a/z.jpg", "b/x.png")
    assert data.labels.tolist() == [0, 0, 1]
    assert len(set(data.groups)) == 3


def test_dicom_files_count_as_images(tmp_path):
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "slice").write_bytes(Path(source).read_bytes())  # no suffix, DICM magic
    png(tmp_path / "other" / "p.png")
    assert load_dataset(tmp_path).paths == ("ct/slice", "other/p.png")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("path,label\n../escape.png,a\n", "inside"),
        ("path,label\nmissing.png,a\n", "does not exist"),
        ("path,label\na/x.png,\n", "empty"),
        ("file,class\na/x.png,a\n", "columns"),
    ],
)
def test_bad_manifest_rows_are_refused(tmp_path, rows, match):
    png(tmp_path / "a" / "x.png")
    (tmp_path / "manifest.csv").write_text(rows)
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path)


def test_one_class_or_no_images_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path)
    png(tmp_path / "only" / "x.png")
    with pytest.raises(DatasetError, match="two classes"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(tmp_path / "absent")
