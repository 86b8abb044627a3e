"""Training-time augmentation hooks for the whole-network baselines (torch, batch in, batch out).

``acquisition_jitter`` gives each image a random acquisition change from the
same ranges the FTL sites jitter their embeddings with (``scanners.JITTER_RANGES``),
so both families get the same defence against scanner shortcuts. It works on
the normalised model input: it undoes the ImageNet normalisation, changes the
windowed channels (noise, blur, resolution, contrast, gamma), and normalises
again. For 8-bit images the channels are the grey image itself, so this is the
same change as ``ScannerProfile.apply``; for HU images it acts per window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ftlct.agent.training.local_training import Augment
from ftlct.bench.scanners import JITTER_RANGES


def flip_and_shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 1/16 of the image."""
    n, _, height, _ = batch.shape
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
    limit = max(1, height // 16)
    dy, dx = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def _draw(generator: torch.Generator, n: int, name: str) -> torch.Tensor:
    low, high = JITTER_RANGES[name]
    return low + (high - low) * torch.rand(n, generator=generator)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (separable; one grouped convolution for the whole batch)."""
    n, channels, height, width = images.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    safe = sigma.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(channels, dim=0)  # one kernel per (image, channel)
    x = nn.functional.pad(
        images.reshape(1, n * channels, height, width), (radius,) * 4, mode="reflect"
    )
    x = nn.functional.conv2d(x, kernel.view(n * channels, 1, 1, -1), groups=n * channels)
    x = nn.functional.conv2d(x, kernel.view(n * channels, 1, -1, 1), groups=n * channels)
    return x.view(n, channels, height, width)


def jitter_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random acquisition change per image of ``images`` (channels in [0, 1])."""
    n, _, size, _ = images.shape
    # One noise field for all channels: dose noise is in the signal, before windowing.
    noise = _draw(generator, n, "noise").view(-1, 1, 1, 1)
    images = images + noise * torch.randn((n, 1, size, size), generator=generator)
    images = _blur(images, _draw(generator, n, "blur"))
    # Resolutions in steps of 1/10, so images of one step resample together.
    lows = (torch.round(_draw(generator, n, "resolution") * 10) / 10 * size).round().int().clamp(8)
    images = images.clone()
    for low in sorted(set(lows.tolist())):
        if low >= size:
            continue
        index = torch.nonzero(lows == low).flatten()
        small = nn.functional.interpolate(
            images[index], size=(low, low), mode="bilinear", antialias=True
        )
        images[index] = nn.functional.interpolate(small, size=(size, size), mode="bilinear")
    contrast = _draw(generator, n, "contrast").view(-1, 1, 1, 1)
    gamma = torch.exp(_draw(generator, n, "log_gamma")).view(-1, 1, 1, 1)
    return torch.clamp(0.5 + contrast * (images - 0.5), 0.0, 1.0) ** gamma


def acquisition_jitter(
    mean: Sequence[float], std: Sequence[float], then: Augment | None = None
) -> Augment:
    """A hook applying a random acquisition change to each image (then ``then``, if given)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        channels = batch * std_t + mean_t
        out = (jitter_batch(channels, generator) - mean_t) / std_t
        return then(out, generator) if then else out

    return augment
