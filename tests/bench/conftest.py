"""A synthetic labelled image folder, made in the test: two classes, groups, tiny PNGs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image


def make_image_folder(
    root, n_per_class: int = 18, group_size: int = 2, size: int = 40, seed: int = 0
):
    """``root/{disc,square}/*.png`` plus manifest.csv; class 0 a bright disc, class 1 a square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for label in ("disc", "square"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            r = rng.integers(size // 6, size // 4)
            if label == "disc":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
            image = 40 + 160 * mask + rng.normal(0, 12, (size, size))
            path = f"{label}/{label}_{i:03d}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / path)
            rows.append((path, label, f"{label}-patient-{i // group_size}"))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("shapes") / "data")
