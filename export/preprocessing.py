"""Image preprocessing, implemented once for the agent, training and the benchmarks.

A CT slice reaches the model as ``float32 [3, S, S]``:

* DICOM with Hounsfield units (CT and the like): pixel data -> modality rescale
  (slope/intercept, per frame for Enhanced CT) -> HU. Each configured window
  maps HU to [0, 1] and becomes one input channel, so three windows give the
  ImageNet backbone three different views of the same tissue.
* 8-bit pictures (Secondary Capture, PNG, JPG): no HU exist, so the step is
  skipped; the grey levels in [0, 1] go through ``grey_windows`` instead
  (identity by default: the same grey image in all three channels).
* Resize to ``input_size`` squared (bilinear with antialiasing), then the
  ImageNet mean/std normalisation the backbone was trained with.

Only numpy, Pillow and pydicom (imagecodecs' libjpeg-turbo for lossless JPEG where it is
installed, ``jpeg_lossless``): the edge agent runs this without torch.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class PreprocessingError(ValueError):
    """The input cannot be turned into a model input (no pixels, unsupported layout...)."""


@dataclass(frozen=True)
class Window:
    """A display window: ``center`` and ``width`` in the units of the input (HU or grey 0..1)."""

    name: str
    center: float
    width: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        low = self.center - self.width / 2.0
        return np.clip((values - low) / self.width, 0.0, 1.0).astype(np.float32)

    def to_json(self) -> dict:
        return {"name": self.name, "center": self.center, "width": self.width}

    @classmethod
    def from_json(cls, data: dict) -> Window:
        width = float(data["width"])
        if width <= 0:
            raise PreprocessingError(f"window {data.get('name')!r}: width must be > 0")
        return cls(str(data.get("name", "")), float(data["center"]), width)


# Three general-purpose CT windows (soft tissue, lung, bone): one per channel.
DEFAULT_WINDOWS = (
    Window("soft_tissue", 40.0, 400.0),
    Window("lung", -600.0, 1500.0),
    Window("bone", 400.0, 1800.0),
)
IDENTITY_GREY_WINDOWS = (Window("grey", 0.5, 1.0),) * 3


@dataclass(frozen=True)
class PreprocessingSpec:
    """Everything needed to turn a slice into a model input; stored in the manifest."""

    input_size: int = 224
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    grey_windows: tuple[Window, ...] = IDENTITY_GREY_WINDOWS
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise PreprocessingError(f"input_size must be >= 32, got {self.input_size}")
        for name, windows in (("windows", self.windows), ("grey_windows", self.grey_windows)):
            if len(windows) not in (1, 3):
                raise PreprocessingError(f"{name}: need 1 or 3 windows, got {len(windows)}")

    def to_json(self) -> dict:
        return {
            "input_size": self.input_size,
            "windows": [w.to_json() for w in self.windows],
            "grey_windows": [w.to_json() for w in self.grey_windows],
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": "one channel per window; 8-bit inputs use grey_windows",
            "resize": "bilinear, antialiased, to input_size x input_size",
        }

    @classmethod
    def from_json(cls, data: dict) -> PreprocessingSpec:
        try:
            return cls(
                input_size=int(data["input_size"]),
                windows=tuple(Window.from_json(w) for w in data["windows"]),
                grey_windows=tuple(Window.from_json(w) for w in data.get("grey_windows", []))
                or IDENTITY_GREY_WINDOWS,
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
            )
        except (KeyError, TypeError) as exc:
            raise PreprocessingError(f"preprocessing spec incomplete: {exc}") from exc


def parse_windows(text: str) -> tuple[Window, ...]:
    """Parse ``name:center:width,...`` (the CLI form) into windows."""
    windows = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pieces = part.split(":")
        if len(pieces) != 3:
            raise PreprocessingError(f"window {part!r}: expected name:center:width")
        try:
            windows.append(
                Window.from_json({"name": pieces[0], "center": pieces[1], "width": pieces[2]})
            )
        except ValueError as exc:
            raise PreprocessingError(f"window {part!r}: {exc}") from exc
    return tuple(windows)


# --------------------------------------------------------------------------- slices


@dataclass
class Slice:
    """One 2-D image before windowing: HU (``is_hu``) or grey levels in [0, 1]."""

    values: np.ndarray
    is_hu: bool


def _frame_rescale(ds, frame: int) -> tuple[float, float] | None:
    """(slope, intercept) for one frame, looking where Enhanced CT keeps them."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        item = seq[frame] if groups.startswith("PerFrame") and frame < len(seq) else seq[0]
        transform = item.get("PixelValueTransformationSequence")
        if transform:
            t = transform[0]
            return float(t.get("RescaleSlope", 1.0)), float(t.get("RescaleIntercept", 0.0))
    return None


def _is_eight_bit_picture(ds) -> bool:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    return bits <= 8 or photometric.startswith(("RGB", "YBR", "PALETTE"))


def _to_grey(frame: np.ndarray, photometric: str) -> np.ndarray:
    if frame.ndim == 3:  # colour: luminance
        rgb = frame[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    values = frame.astype(np.float32)
    if photometric == "MONOCHROME1":
        values = values.max() - values
    return values


@functools.cache
def _install_decoders() -> bool:
    """Lossless JPEG through libjpeg-turbo first (``jpeg_lossless``), once per process."""
    from ftlct.export.jpeg_lossless import install

    return install()


def dicom_slices(ds) -> list[Slice]:
    """Decode a pydicom dataset into slices (one per frame), HU where it applies."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PreprocessingError("dataset has no pixel data")
    _install_decoders()
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the caller needs one
        raise PreprocessingError(f"cannot decode pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        pixels = pixels[np.newaxis]
    if pixels.ndim != (4 if samples > 1 else 3):
        raise PreprocessingError(f"unsupported pixel array shape {pixels.shape}")

    eight_bit = _is_eight_bit_picture(ds)
    slices = []
    for index, frame in enumerate(pixels):
        rescale = None if eight_bit or frame.ndim == 3 else _frame_rescale(ds, index)
        if rescale is not None:
            # HU are absolute: MONOCHROME1 only changes how they are displayed.
            slope, intercept = rescale
            slices.append(Slice(frame.astype(np.float32) * slope + intercept, is_hu=True))
            continue
        grey = _to_grey(frame, photometric)
        if eight_bit:
            slices.append(Slice(grey / 255.0, is_hu=False))
        else:
            # Monochrome without rescale (e.g. some MR/US): stretch to [0, 1].
            span = float(grey.max() - grey.min()) or 1.0
            slices.append(Slice((grey - grey.min()) / span, is_hu=False))
    return slices


def picture_slice(image: Image.Image) -> Slice:
    """A PNG/JPG picture as one grey slice in [0, 1] (alpha dropped, colour -> luminance)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        span = float(values.max() - values.min()) or 1.0
        return Slice((values - values.min()) / span, is_hu=False)
    return Slice(np.asarray(image.convert("L"), dtype=np.float32) / 255.0, is_hu=False)


def is_dicom_file(path: str | os.PathLike) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_slices(path: str | os.PathLike) -> list[Slice]:
    """Slices from a DICOM file (Part 10) or a picture file."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessingError(f"{path}: no such file")
    if is_dicom_file(path) or path.suffix.lower() == ".dcm":
        import pydicom

        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise PreprocessingError(f"{path.name}: not readable as DICOM: {exc}") from exc
        return dicom_slices(ds)
    try:
        with Image.open(path) as image:
            image.load()
            return [picture_slice(image)]
    except (OSError, Image.DecompressionBombError) as exc:
        raise PreprocessingError(f"{path.name}: not a DICOM file nor a readable image") from exc


def read_slices_from_bytes(data: bytes) -> list[Slice]:
    """Slices from an encoded DICOM dataset held in memory."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise PreprocessingError(f"not readable as DICOM: {exc}") from exc
    return dicom_slices(ds)


# --------------------------------------------------------------------------- to tensor


def _resize(values: np.ndarray, size: int) -> np.ndarray:
    if values.shape == (size, size):
        return values.astype(np.float32, copy=False)
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def channels(slice_: Slice, spec: PreprocessingSpec) -> np.ndarray:
    """Windowed channels ``[3, S, S]`` in [0, 1], before normalisation."""
    resized = _resize(slice_.values, spec.input_size)
    windows = spec.windows if slice_.is_hu else spec.grey_windows
    stack = [w.apply(resized) for w in windows]
    if len(stack) == 1:
        stack = stack * 3
    return np.stack(stack)


def normalise(chw: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return ((chw - mean) / std).astype(np.float32)


def to_model_input(slices: Iterable[Slice], spec: PreprocessingSpec) -> np.ndarray:
    """Stack slices into the backbone's input ``float32 [N, 3, S, S]``."""
    arrays = [normalise(channels(s, spec), spec) for s in slices]
    if not arrays:
        return np.zeros((0, 3, spec.input_size, spec.input_size), dtype=np.float32)
    return np.stack(arrays)


def preprocess_file(path: str | os.PathLike, spec: PreprocessingSpec) -> np.ndarray:
    """File (DICOM, PNG, JPG) -> ``float32 [frames, 3, S, S]``."""
    return to_model_input(read_slices(path), spec)


def preprocess_files(paths: Sequence[str | os.PathLike], spec: PreprocessingSpec) -> np.ndarray:
    return (
        np.concatenate([preprocess_file(p, spec) for p in paths])
        if paths
        else to_model_input([], spec)
    )
