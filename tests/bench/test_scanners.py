"""Simulated scanners: deterministic, per-image noise, the reference leaves images alone."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.bench.scanners import (
    FIXED_REALISTIC,
    AugmentedScanner,
    ScannerProfile,
    gaussian_blur,
    site_profiles,
)
from ftlct.export.preprocessing import Slice


def grey(size=64, seed=0):
    return Slice(np.random.default_rng(seed).random((size, size)).astype(np.float32), is_hu=False)


def test_reference_scanner_only_resamples():
    image = grey(32)
    out = ScannerProfile("ref").apply(image, 32, "k")
    np.testing.assert_array_equal(out.values, image.values)


def test_same_image_same_scanner_same_pixels_other_image_other_noise():
    profile = ScannerProfile("noisy", noise=0.05)
    image = grey()
    a = profile.apply(image, 64, "img-1").values
    b = profile.apply(image, 64, "img-1").values
    c = profile.apply(image, 64, "img-2").values
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_each_effect_changes_the_image_the_way_it_says():
    flat = Slice(np.full((64, 64), 0.5, np.float32), is_hu=False)
    assert ScannerProfile("n", noise=0.05).apply(flat, 64, "k").values.std() == pytest.approx(
        0.05, rel=0.2
    )
    edge = Slice(np.tile((np.arange(64) >= 32).astype(np.float32), (64, 1)), is_hu=False)
    blurred = ScannerProfile("b", blur=2.0).apply(edge, 64, "k").values
    assert 0.05 < blurred[10, 31] < 0.5 < blurred[10, 32] < 0.95
    coarse = ScannerProfile("r", resolution=0.25).apply(grey(), 64, "k").values
    assert coarse.std() < grey().values.std() * 0.6
    dark = ScannerProfile("g", gamma=2.0).apply(flat, 64, "k").values
    assert dark.mean() == pytest.approx(0.25, abs=1e-6)


def test_hu_slices_get_noise_in_hu_and_no_gamma():
    hu = Slice(np.full((32, 32), 40.0, np.float32), is_hu=True)
    out = ScannerProfile("hu", noise=0.02, gamma=3.0).apply(hu, 32, "k")
    assert out.is_hu
    assert out.values.mean() == pytest.approx(40.0, abs=3.0)
    assert out.values.std() == pytest.approx(20.0, rel=0.2)


def test_site_profiles_are_fixed_then_generated_deterministically():
    six = site_profiles(6)
    assert six == FIXED_REALISTIC
    eight = site_profiles(8)
    assert eight[:6] == six and eight == site_profiles(8)
    assert eight[6] != eight[7]
    assert all(p.name == f"site{i}-reference" for i, p in enumerate(site_profiles(3, "none")))
    with pytest.raises(ValueError, match="scanner set"):
        site_profiles(3, "bogus")


def test_jittered_views_differ_per_draw_and_repeat_per_image():
    base = site_profiles(2)[1]
    image = grey()
    first = AugmentedScanner(base, 0).apply(image, 64, "k").values
    again = AugmentedScanner(base, 0).apply(image, 64, "k").values
    other = AugmentedScanner(base, 1).apply(image, 64, "k").values
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_blur_keeps_the_mean_and_bad_profiles_are_refused():
    image = grey().values
    assert gaussian_blur(image, 1.5).mean() == pytest.approx(image.mean(), abs=1e-3)
    for bad in ({"noise": -1}, {"resolution": 0.0}, {"gamma": 0}):
        with pytest.raises(ValueError):
            ScannerProfile("bad", **bad)
