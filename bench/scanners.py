"""Simulated scanners: a deterministic acquisition profile per site.

Real federations see different scanners: vendors, reconstruction kernels,
doses, matrix sizes, display curves. The public CT sets come from few sources,
so the benchmark simulates that heterogeneity: each site's images pass
through its scanner profile before they reach the site's agent. A profile is

- ``noise``: additive Gaussian noise (std, in grey levels of [0, 1]; x1000 HU
  for HU slices) — a lower dose;
- ``blur``: Gaussian blur (sigma in input pixels) — a softer reconstruction
  kernel; it comes after the noise, so it smooths the noise as a soft kernel does;
- ``resolution``: fraction of the input grid the scanner resolves
  (down-sampled, then back up) — a coarser matrix or thicker slices;
- ``contrast`` and ``gamma``: the display curve of 8-bit exports
  (``u -> (0.5 + contrast * (u - 0.5)) ** gamma``). HU slices get the contrast
  about 40 HU and no gamma: HU are calibrated, a display curve is not.

Profiles act on the slice after it is resampled to the model's input grid
(bilinear, as the shared preprocessing does), so a parameter means the same
for a 150 px crop as for a 1500 px one; windowing and normalisation then run
unchanged. Noise is seeded from (profile, image), so one image through one
scanner always looks the same. The first six profiles are fixed; sites beyond
six get profiles drawn from a generator seeded by the site number. Two sets:
``realistic`` (the default, magnitudes argued below) and ``harsh`` (a stress test).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ftlct.export.preprocessing import Slice

HU_NOISE_SCALE = 1000.0
HU_CONTRAST_CENTER = 40.0


@dataclass(frozen=True)
class ScannerProfile:
    name: str
    noise: float = 0.0
    blur: float = 0.0
    resolution: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.noise < 0 or self.blur < 0:
            raise ValueError(f"profile {self.name}: noise and blur must be >= 0")
        if not 0.05 <= self.resolution <= 1.0:
            raise ValueError(f"profile {self.name}: resolution must be in [0.05, 1]")
        if self.contrast <= 0 or self.gamma <= 0:
            raise ValueError(f"profile {self.name}: contrast and gamma must be > 0")

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = []
        if self.noise:
            parts.append(f"noise {self.noise:g}")
        if self.blur:
            parts.append(f"blur σ {self.blur:g} px")
        if self.resolution < 1:
            parts.append(f"resolution x{self.resolution:g}")
        if self.contrast != 1:
            parts.append(f"contrast x{self.contrast:g}")
        if self.gamma != 1:
            parts.append(f"gamma {self.gamma:g}")
        return ", ".join(parts) or "reference (unchanged)"

    def apply(self, slice_: Slice, size: int, key: str) -> Slice:
        """The slice as this scanner would deliver it, on the ``size`` x ``size`` input grid."""
        values = resample(slice_.values, size)
        scale = HU_NOISE_SCALE if slice_.is_hu else 1.0
        if self.noise:
            rng = np.random.default_rng(_seed(self.name, key))
            values = values + rng.normal(0.0, self.noise * scale, values.shape).astype(np.float32)
        if self.blur:
            values = gaussian_blur(values, self.blur)
        if self.resolution < 1:
            low = max(8, round(size * self.resolution))
            values = resample(resample(values, low), size)
        if slice_.is_hu:
            if self.contrast != 1:
                values = HU_CONTRAST_CENTER + self.contrast * (values - HU_CONTRAST_CENTER)
        else:
            if self.contrast != 1:
                values = 0.5 + self.contrast * (values - 0.5)
            values = np.clip(values, 0.0, 1.0)
            if self.gamma != 1:
                values = values**self.gamma
        return Slice(values.astype(np.float32), slice_.is_hu)


# Six scanners a federation of hospitals could plausibly have; site i gets profile i.
# Magnitudes, on the 224 px input grid of a lung-window export: CT noise of 15-45 HU
# is 0.01-0.03 of a 1500 HU lung window; a soft kernel blurs by about one input
# pixel; a 256 matrix resampled to 224 loses little, so "coarse" is 0.6 of the grid;
# display curves of exported images differ by gamma 0.8-1.25.
FIXED_REALISTIC = (
    ScannerProfile("A-reference"),
    ScannerProfile("B-soft-kernel", noise=0.01, blur=1.0),
    ScannerProfile("C-low-dose", noise=0.03),
    ScannerProfile("D-coarse-matrix", noise=0.01, blur=0.3, resolution=0.6),
    ScannerProfile("E-dark-display", noise=0.01, contrast=1.1, gamma=1.25),
    ScannerProfile("F-flat-soft", noise=0.015, blur=0.6, contrast=0.85, gamma=0.8),
)
# A stress test beyond real scanners: very low dose, ~100 px effective resolution,
# strong display curves (the benchmark's first, harsher profile set).
FIXED_HARSH = (
    ScannerProfile("A-reference"),
    ScannerProfile("B-soft-kernel", noise=0.01, blur=1.2),
    ScannerProfile("C-low-dose", noise=0.05),
    ScannerProfile("D-low-resolution", noise=0.01, resolution=0.45),
    ScannerProfile("E-dark-display", noise=0.015, contrast=1.15, gamma=1.5),
    ScannerProfile("F-flat-soft", noise=0.02, blur=0.7, contrast=0.8, gamma=0.7),
)
SCANNER_SETS = ("realistic", "harsh", "none")


def site_profiles(n_sites: int, scanner_set: str = "realistic") -> tuple[ScannerProfile, ...]:
    """The scanner of each site: a fixed set first, then seeded random ones in the same ranges.

    ``none`` gives every site the reference scanner (the no-heterogeneity ablation).
    """
    if scanner_set not in SCANNER_SETS:
        raise ValueError(f"scanner set must be one of {', '.join(SCANNER_SETS)}")
    if scanner_set == "none":
        return tuple(ScannerProfile(f"site{i}-reference") for i in range(n_sites))
    harsh = scanner_set == "harsh"
    fixed = FIXED_HARSH if harsh else FIXED_REALISTIC
    profiles = list(fixed[:n_sites])
    for site in range(len(profiles), n_sites):
        rng = np.random.default_rng([7919, site])
        profiles.append(
            ScannerProfile(
                f"S{site}-generated",
                noise=round(float(rng.uniform(0.0, 0.05 if harsh else 0.03)), 4),
                blur=round(float(rng.uniform(0.0, 1.5 if harsh else 1.0)), 3),
                resolution=round(float(rng.uniform(0.45 if harsh else 0.6, 1.0)), 3),
                contrast=round(
                    float(rng.uniform(0.8, 1.2) if harsh else rng.uniform(0.85, 1.15)), 3
                ),
                gamma=round(
                    float(np.exp(rng.uniform(-0.4, 0.4) if harsh else rng.uniform(-0.22, 0.22))), 3
                ),
            )
        )
    return tuple(profiles)


# Acquisition augmentation: the ranges a site may jitter its own images over while
# training, so that a model cannot tell a site (and its label mix) by its scanner.
# They span plausible CT acquisitions, which include the simulated scanners above:
# a model trained this way has seen scanner-like changes, not those scanners' images.
JITTER_RANGES = {
    "noise": (0.0, 0.05),
    "blur": (0.0, 1.5),
    "resolution": (0.4, 1.0),
    "contrast": (0.75, 1.25),
    "log_gamma": (-0.45, 0.45),
}


def jitter_profile(rng: np.random.Generator, name: str = "jitter") -> ScannerProfile:
    """One random acquisition change drawn from ``JITTER_RANGES``."""
    r = JITTER_RANGES
    return ScannerProfile(
        name,
        noise=float(rng.uniform(*r["noise"])),
        blur=float(rng.uniform(*r["blur"])),
        resolution=float(rng.uniform(*r["resolution"])),
        contrast=float(rng.uniform(*r["contrast"])),
        gamma=float(np.exp(rng.uniform(*r["log_gamma"]))),
    )


@dataclass(frozen=True)
class AugmentedScanner:
    """A site's scanner followed by a random acquisition change drawn per (image, draw)."""

    base: ScannerProfile
    draw: int

    @property
    def name(self) -> str:
        return f"{self.base.name}+jitter{self.draw}"

    def to_json(self) -> dict:
        return {"base": self.base.to_json(), "draw": self.draw, "jitter": JITTER_RANGES}

    def describe(self) -> str:
        return f"{self.base.describe()} + random jitter #{self.draw}"

    def apply(self, slice_: Slice, size: int, key: str) -> Slice:
        seen = self.base.apply(slice_, size, key)
        rng = np.random.default_rng(_seed(self.name, key))
        return jitter_profile(rng, f"{self.name}/noise").apply(seen, size, key)


def _seed(profile: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{profile}\0{key}".encode()).digest()[:8], "big")


def resample(values: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize to ``size`` x ``size``, as the shared preprocessing does."""
    if values.shape == (size, size):
        return values.astype(np.float32, copy=False)
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (numpy only)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(values, dtype=np.float32)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], "reflect")
        length = out.shape[axis]
        out = sum(
            w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(kernel)
        ).astype(np.float32)
    return out
