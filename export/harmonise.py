"""Scanner harmonisation at the top of the backbone graph: a fixed blur, then per-image standardisation.

Scanners differ in noise (dose), sharpness (kernel, matrix) and display curve
(contrast, gamma of 8-bit exports). A frozen ImageNet backbone sees those
differences as strongly as the finding, and under label skew a head learns
them as a shortcut: a site that holds mostly one class teaches "this scanner's
look means that class". Two fixed steps, the same at every site, take most of
that away before the first convolution:

1. ``blur_sigma``: a Gaussian blur (reflected borders; a column pass, then a
   row pass) that every scanner's image goes through, so the noise of a
   low-dose scanner and the sharpness of a hard kernel count for less;
2. ``standardise``: each channel of each image is shifted and scaled to its own
   mean and standard deviation, mapped to ``0.5 + z / 4`` and clipped to
   [0, 1] (the grey range the backbone's input normalisation expects), so a
   display curve's contrast (and most of its gamma) no longer shows.

Both act on the normalised input ``(v - mean_c) / std_c`` the shared
preprocessing produces; a blur whose kernel sums to one commutes with that
affine map, and standardising removes it, so the result is the standardised
blurred channel, normalised again with the same mean and std. They are part of
``backbone.onnx`` (stock onnxruntime ops: Pad, Conv, ReduceMean, Sqrt, Clip),
so the agent runs them without any code of its own, and the backbone's hash,
which every head federation pins, changes with them. The manifest records
them under ``backbone.harmonisation``; the settings were chosen by the
scanner probe over the simulated scanners with label skew (README, "Models").
torch: export only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

STANDARDISED_SPREAD = 4.0  # z-scores of +-2 map to the ends of [0, 1]
MIN_STD = 1e-6


@dataclass(frozen=True)
class Harmonisation:
    blur_sigma: float = 1.0  # in input pixels; 0 = no blur
    standardise: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.blur_sigma) and 0.0 <= self.blur_sigma <= 8.0):
            raise ValueError(f"blur sigma must be in [0, 8] pixels, got {self.blur_sigma}")

    @property
    def active(self) -> bool:
        return self.blur_sigma > 0 or self.standardise

    def to_json(self) -> dict:
        return {
            "blur_sigma": self.blur_sigma,
            "standardise": self.standardise,
            "order": "blur, then standardise each channel of each image",
            "standardised_range": f"0.5 + z / {STANDARDISED_SPREAD:g}, clipped to [0, 1]",
        }

    @classmethod
    def from_json(cls, data: dict | None) -> Harmonisation:
        """A manifest's entry; no entry (a model directory built before) is no harmonisation."""
        if not data:
            return NO_HARMONISATION
        return cls(float(data.get("blur_sigma", 0.0)), bool(data.get("standardise", False)))


NO_HARMONISATION = Harmonisation(blur_sigma=0.0, standardise=False)
DEFAULT_HARMONISATION = Harmonisation()


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The 1-D kernel, radius ceil(3 sigma), summing to one."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).float()


class Harmoniser(nn.Module):
    """Normalised image ``[N, 3, S, S]`` -> the harmonised image, normalised the same way."""

    def __init__(self, settings: Harmonisation, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.settings = settings
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        if settings.blur_sigma > 0:
            # A Gaussian is separable: a column pass then a row pass is the square kernel's blur
            # (to float rounding) at 2K instead of K^2 multiplies a pixel, half the harmoniser's time.
            line = gaussian_kernel(settings.blur_sigma)
            size = len(line)
            self.radius = (size - 1) // 2
            self.register_buffer("columns", line.view(1, 1, size, 1).repeat(channels, 1, 1, 1))
            self.register_buffer("rows", line.view(1, 1, 1, size).repeat(channels, 1, 1, 1))
        else:
            self.radius = 0
            self.columns = self.rows = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.columns is not None:
            padded = nn.functional.pad(x, [self.radius] * 4, mode="reflect")
            x = nn.functional.conv2d(padded, self.columns, groups=x.shape[1])
            x = nn.functional.conv2d(x, self.rows, groups=x.shape[1])
        if self.settings.standardise:
            centred = x - x.mean(dim=(2, 3), keepdim=True)
            spread = torch.sqrt((centred * centred).mean(dim=(2, 3), keepdim=True))
            z = centred / torch.clamp(spread, min=MIN_STD)
            grey = torch.clamp(0.5 + z / STANDARDISED_SPREAD, 0.0, 1.0)
            x = (grey - self.mean) / self.std
        return x
